"""What the workloads of benchmarks/run.py share: the readings they publish, a publisher
that queues a backlog at a broker, a bare paho drain of it, resident memory sampled from
/proc, and the database limits (binary COPY, staged binary COPY + upsert) for the same
rows, built with numpy and written without any of nhjc's code.
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg
import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from tools.gateway import enterprise_code

__all__ = ["Backlog", "RssSampler", "bare_drain", "copy_limit", "item_codes", "make_session",
           "publish", "upsert_limit"]

READINGS_FILTER = "nhjc/v1/+/+/readings"


def item_codes(n: int) -> list[str]:
    return [f"01-00-0000-0233{i // 100:02d}-{i % 100:02d}" for i in range(n)]


@dataclass(frozen=True)
class Backlog:
    """``frames`` frames of ``per_frame`` readings from ``enterprises`` enterprises of
    ``items`` items each; frame f is enterprise f % enterprises, and consecutive frames
    of one enterprise walk through its items, then on to the next minute."""

    frames: int
    per_frame: int
    enterprises: int
    items: int

    @property
    def readings(self) -> int:
        return self.frames * self.per_frame

    @property
    def t0(self) -> int:
        """Start of the series: recent enough that no reading is flagged late."""
        per_minute = self.enterprises * (self.items // self.per_frame)
        minutes = -(-self.frames // per_minute)
        return (int(time.time()) // 60 - minutes - 2) * 60

    def columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(enterprise index, item index, ts in s, value) of every reading, in publishing order."""
        f = np.repeat(np.arange(self.frames, dtype=np.int64), self.per_frame)
        k = np.tile(np.arange(self.per_frame, dtype=np.int64), self.frames)
        ent = f % self.enterprises
        per_ent = f // self.enterprises  # the enterprise's own frame number
        groups = self.items // self.per_frame
        item = (per_ent % groups) * self.per_frame + k
        minute = per_ent // groups
        return ent, item, self.t0 + minute * 60, 1000.0 + minute + k

    def payloads(self) -> list[tuple[str, bytes]]:
        codes = item_codes(self.items)
        ents = [enterprise_code(e) for e in range(self.enterprises)]
        ent, item, ts, value = self.columns()
        out = []
        for f in range(self.frames):
            s = slice(f * self.per_frame, (f + 1) * self.per_frame)
            readings = ",".join(f'{{"code":"{codes[i]}","ts":{t},"value":{v}}}'
                                for i, t, v in zip(item[s].tolist(), ts[s].tolist(), value[s].tolist(),
                                                   strict=True))
            out.append((f"nhjc/v1/{ents[int(ent[s][0])]}/gw-1/readings",
                        f'{{"v":1,"readings":[{readings}]}}'.encode()))
        return out

    def copy_batches(self, rows: int) -> list[bytes]:
        """Binary COPY data of ``readings``' columns, ``rows`` readings a batch."""
        codes = np.array([c.encode() for c in item_codes(self.items)], "S20")
        ents = np.array([enterprise_code(e).encode() for e in range(self.enterprises)], "S18")
        ent, item, ts, value = self.columns()
        dtype = np.dtype([("n", ">i2"), ("le", ">i4"), ("e", "S18"), ("lc", ">i4"), ("c", "S20"),
                          ("lt", ">i4"), ("t", ">i8"), ("lv", ">i4"), ("v", ">f8"), ("lq", ">i4"),
                          ("q", ">i2"), ("lr", ">i4"), ("r", ">i8")])
        out = np.empty(len(ent), dtype)
        out["n"], out["le"], out["lc"], out["lt"], out["lv"], out["lq"], out["lr"] = 6, 18, 20, 8, 8, 2, 8
        out["e"], out["c"] = ents[ent], codes[item]
        out["t"] = (ts - 946_684_800) * 1_000_000  # PostgreSQL's epoch is 2000-01-01
        out["v"], out["q"], out["r"] = value, 0, (int(time.time()) - 946_684_800) * 1_000_000
        head = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
        return [head + out[i:i + rows].tobytes() + b"\xff\xff" for i in range(0, len(out), rows)]


def _client(port: int, client_id: str, **kw: object) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, **kw)  # type: ignore[arg-type]
    c.max_inflight_messages_set(2000)
    c.max_queued_messages_set(0)
    return c


def _session_props() -> Properties:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    return props


def make_session(port: int, client_id: str) -> None:
    """A persistent session subscribed to readings at QoS 1, so a backlog queues for it."""
    c = _client(port, client_id)
    done = threading.Event()
    c.on_subscribe = lambda *a: done.set()
    c.connect("127.0.0.1", port, clean_start=False, properties=_session_props())
    c.loop_start()
    c.subscribe([(READINGS_FILTER, SubscribeOptions(qos=1))])
    if not done.wait(10):
        raise RuntimeError("no SUBACK")
    c.disconnect()
    c.loop_stop()


def publish(port: int, payloads: Iterable[tuple[str, bytes]]) -> float:
    """Publishes at QoS 1 with a wide in-flight window, waiting for the broker every 20,000
    messages so the publisher's own memory stays small (``payloads`` may be a generator);
    seconds taken."""
    c = _client(port, f"bench-pub-{uuid.uuid4().hex[:6]}")
    c.connect("127.0.0.1", port)
    c.loop_start()
    t = time.perf_counter()
    try:
        infos = []
        for topic, payload in payloads:
            infos.append(c.publish(topic, payload, qos=1))
            if len(infos) >= 20_000:
                for info in infos:
                    info.wait_for_publish(120)
                infos = []
        for info in infos:
            info.wait_for_publish(120)
    finally:
        c.disconnect()
        c.loop_stop()
    return time.perf_counter() - t


def bare_drain(port: int, client_id: str, messages: int, timeout: float = 600) -> float:
    """Seconds for a plain paho client (its own network loop, acknowledging each message
    as it comes) to receive the ``messages`` queued for its session."""
    c = _client(port, client_id)
    got = [0]
    done = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        got[0] += 1
        if got[0] >= messages:
            done.set()

    c.on_message = on_message
    t = time.perf_counter()
    c.connect("127.0.0.1", port, clean_start=False, properties=_session_props())
    c.loop_start()
    ok = done.wait(timeout)
    secs = time.perf_counter() - t
    c.disconnect()
    c.loop_stop()
    if not ok:
        raise RuntimeError(f"bare drain got {got[0]} of {messages} messages")
    return secs


_STAGING = """CREATE TEMP TABLE IF NOT EXISTS s (enterprise text, code text, ts timestamptz,
  value float8, quality int2, received_at timestamptz) ON COMMIT DELETE ROWS"""
_UPSERT = """INSERT INTO readings AS r SELECT * FROM s
  ON CONFLICT (enterprise, code, ts) DO UPDATE SET value = EXCLUDED.value, quality = EXCLUDED.quality,
  received_at = EXCLUDED.received_at WHERE r.value IS DISTINCT FROM EXCLUDED.value"""


async def _write(dsn: str, batches: list[bytes], staged: bool, rows: int) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        t = time.perf_counter()
        for data in batches:
            async with conn.transaction():
                if staged:
                    await conn.execute(_STAGING)
                    await conn.copy_to_table("s", source=io.BytesIO(data), format="binary")
                    await conn.execute(_UPSERT)
                else:
                    await conn.copy_to_table("readings", source=io.BytesIO(data), format="binary")
        secs = time.perf_counter() - t
        if await conn.fetchval("SELECT count(*) FROM readings") != rows:
            raise RuntimeError("limit: not every row stored")
        return secs
    finally:
        await conn.close()


def upsert_limit(dsn: str, batches: list[bytes], rows: int) -> float:
    """Seconds to write the batches as nhjc's store did: binary COPY into a temporary
    table, INSERT ... ON CONFLICT DO UPDATE into ``readings``, one transaction each."""
    return asyncio.run(_write(dsn, batches, True, rows))


def copy_limit(dsn: str, batches: list[bytes], rows: int) -> float:
    """Seconds to binary COPY the batches straight into ``readings``."""
    return asyncio.run(_write(dsn, batches, False, rows))


class RssSampler(threading.Thread):
    """Peak resident memory of a process (sampled, and the kernel's high-water mark) and
    its CPU seconds."""

    def __init__(self, pid: int, every_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.peak_kib = 0
        self.cpu_s = 0.0
        self._halt = threading.Event()

    def _sample(self) -> None:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    self.peak_kib = max(self.peak_kib, int(line.split()[1]))
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        self.cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self._sample()
            except (FileNotFoundError, ProcessLookupError, IndexError):
                return
            time.sleep(self.every_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    @property
    def peak_mb(self) -> float:
        return self.peak_kib / 1024
