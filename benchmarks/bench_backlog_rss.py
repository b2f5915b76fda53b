"""Memory while draining a large backlog: a private Mosquitto with the shipped settings
and ``max_inflight_messages 0`` (a broker that sends a session's queue far past the
Receive Maximum nhjc announces), a fresh database, a backlog of frames of 50 readings
queued for nhjc's persistent session, then ``nhjc run`` drains it while its resident
memory is sampled from /proc.  Prints readings, seconds, readings/s and the peak RSS.

    .venv/bin/python -m benchmarks.bench_backlog_rss [--readings 5000000]

Needs what the tests need: ``mosquitto`` on the PATH and the local PostgreSQL with
TimescaleDB, reachable as the ``postgres`` admin role (NHJC_TEST_ADMIN_DSN to change).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import asyncpg
import paho.mqtt.client as mqtt

from ingest.credit_code import check_character

ROOT = Path(__file__).resolve().parent.parent
ADMIN_DSN = os.environ.get("NHJC_TEST_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
PER_FRAME = 50
ENTERPRISES = 20
CLIENT_ID = "nhjc-bench-rss"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    shipped = (ROOT / "config" / "mosquitto" / "nhjc.conf").read_text()
    conf = workdir / "mosquitto.conf"
    # Mosquitto takes the last value of an option given twice: this overrides the
    # shipped max_inflight_messages.
    conf.write_text(f"{shipped}\nmax_inflight_messages 0\nlistener {port} 127.0.0.1\nallow_anonymous true\n"
                    f"persistence_location {workdir}/\nlog_dest file {workdir}/broker.log\nuser root\n")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("mosquitto did not start") from None
            time.sleep(0.05)


async def create_database() -> str:
    name = f"nhjc_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" OWNER nhjc')
    finally:
        await admin.close()
    db = await asyncpg.connect(ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}")
    try:
        await db.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    finally:
        await db.close()
    return f"postgresql://nhjc@127.0.0.1:5432/{name}"


async def drop_database(dsn: str) -> None:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{dsn.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await admin.close()


async def count_readings(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM readings"))
    finally:
        await conn.close()


def enterprise(n: int) -> str:
    first17 = f"91340100MA{n:07d}"[:17]
    return first17 + check_character(first17)


def item_codes() -> list[str]:
    return [f"01-00-0000-0233{i // 100:02d}-{i % 100:02d}" for i in range(PER_FRAME)]


def nhjc(args: list[str], env: dict[str, str], **kw) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "nhjc", "--log-level", "WARNING", *args],
                            env=env, cwd=ROOT, **kw)


def metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nhjc run exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("nhjc run did not become ready")


def publish_backlog(port: int, frames: int) -> None:
    """Frames of 50 readings, one minute of 50 items of one enterprise each, at QoS 1
    with a wide in-flight window."""
    codes = item_codes()
    ents = [enterprise(e) for e in range(ENTERPRISES)]
    minutes = -(-frames // ENTERPRISES)
    t0 = (int(time.time()) // 60 - minutes - 1) * 60  # the last few days: none flagged late
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex[:6]}",
                    protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(2000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        infos = []
        for f in range(frames):
            e, minute = f % ENTERPRISES, f // ENTERPRISES
            ts = t0 + minute * 60
            readings = ",".join(f'{{"code":"{code}","ts":{ts},"value":{1000.0 + minute + k}}}'
                                for k, code in enumerate(codes))
            infos.append(c.publish(f"nhjc/v1/{ents[e]}/gw-1/readings", f'{{"v":1,"readings":[{readings}]}}', qos=1))
            if len(infos) >= 20_000:  # keep the publisher's own memory small
                for info in infos:
                    info.wait_for_publish(120)
                infos = []
        for info in infos:
            info.wait_for_publish(120)
    finally:
        c.disconnect()
        c.loop_stop()


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.peak_kib = 0
        self.hwm_kib = 0
        self._halt = threading.Event()

    def _status(self) -> dict[str, int]:
        out = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])
        return out

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                s = self._status()
            except (FileNotFoundError, ProcessLookupError):
                return
            self.peak_kib = max(self.peak_kib, s.get("VmRSS", 0))
            self.hwm_kib = max(self.hwm_kib, s.get("VmHWM", 0))  # the kernel's own peak
            time.sleep(self.every_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readings", type=int, default=5_000_000, help="backlog size (frames of 50 readings)")
    args = ap.parse_args()
    frames = -(-args.readings // PER_FRAME)
    n = frames * PER_FRAME

    with tempfile.TemporaryDirectory(prefix="nhjc-bench-rss-") as tmp:
        work = Path(tmp)
        broker, mqtt_port = start_broker(work)
        dsn = asyncio.run(create_database())
        svc: subprocess.Popen[bytes] | None = None
        try:
            http_port = free_port()
            env = {**os.environ, "NHJC_DATABASE__URL": dsn, "NHJC_MQTT__URL": f"mqtt://127.0.0.1:{mqtt_port}",
                   "NHJC_MQTT__CLIENT_ID": CLIENT_ID, "NHJC_METRICS__PORT": str(http_port)}
            subprocess.run([sys.executable, "-m", "nhjc", "migrate"], env=env, cwd=ROOT, check=True,
                           stdout=subprocess.DEVNULL)
            items = [{"enterprise": enterprise(e), "code": code, "name": f"item {code}", "energy": code[13:17],
                      "unit": "kWh", "kind": "cumulative"} for e in range(ENTERPRISES) for code in item_codes()]
            (work / "items.json").write_text(json.dumps(items))
            subprocess.run([sys.executable, "-m", "nhjc", "items", "load", str(work / "items.json")], env=env,
                           cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            # One short run creates the persistent session; the backlog then queues for it.
            svc = nhjc(["run"], env)
            wait_ready(http_port, svc)
            svc.send_signal(signal.SIGTERM)
            svc.wait(30)
            t = time.perf_counter()
            publish_backlog(mqtt_port, frames)
            print(f"published:   {n:,} readings in {frames:,} frames of {PER_FRAME} "
                  f"({time.perf_counter() - t:.1f} s)", flush=True)

            t = time.perf_counter()
            svc = nhjc(["run"], env)
            sampler = RssSampler(svc.pid)
            sampler.start()
            wait_ready(http_port, svc)
            peak_window = 0.0
            while (accepted := metric(http_port, "nhjc_readings_accepted_total") or 0) < n:
                if svc.poll() is not None:
                    raise RuntimeError(f"nhjc run exited with {svc.returncode}")
                peak_window = max(peak_window, metric(http_port, "nhjc_unacked_messages_peak") or 0)
                time.sleep(0.5)
            secs = time.perf_counter() - t
            peak_window = max(peak_window, metric(http_port, "nhjc_unacked_messages_peak") or 0)
            sampler.stop()
            svc.send_signal(signal.SIGTERM)
            svc.wait(30)
            svc = None
            stored = asyncio.run(count_readings(dsn))
            print(f"readings:    {stored:,} stored ({int(accepted):,} accepted)")
            print(f"seconds:     {secs:.1f} (start-up included)")
            print(f"readings/s:  {n / secs:,.0f}")
            print(f"peak RSS:    {max(sampler.peak_kib, sampler.hwm_kib) / 1024:.0f} MB "
                  f"(sampled every 50 ms: {sampler.peak_kib / 1024:.0f} MB; kernel high-water mark: "
                  f"{sampler.hwm_kib / 1024:.0f} MB)")
            print(f"most unacknowledged messages held at once: {peak_window:.0f} (receive_maximum 2000)")
            if stored != n:
                raise SystemExit(f"stored {stored:,} readings, expected {n:,}")
        finally:
            if svc is not None and svc.poll() is None:
                svc.kill()
                svc.wait(10)
            broker.terminate()
            broker.wait(30)
            asyncio.run(drop_database(dsn))


if __name__ == "__main__":
    main()
