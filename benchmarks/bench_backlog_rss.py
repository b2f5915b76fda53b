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
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg

from benchmarks.backlog import publish
from tools.gateway import enterprise_code, item
from tools.guest import PrivateBroker, drop_database, migrated_database
from tools.process import PROJECT_ROOT, ServiceProcess

PER_FRAME = 50
ENTERPRISES = 20
CLIENT_ID = "nhjc-bench-rss"


async def count_readings(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM readings"))
    finally:
        await conn.close()


def item_codes() -> list[str]:
    return [f"01-00-0000-0233{i // 100:02d}-{i % 100:02d}" for i in range(PER_FRAME)]


def publish_backlog(port: int, frames: int) -> None:
    """Frames of 50 readings, one minute of 50 items of one enterprise each, at QoS 1
    with a wide in-flight window."""
    codes = item_codes()
    ents = [enterprise_code(e) for e in range(ENTERPRISES)]
    minutes = -(-frames // ENTERPRISES)
    t0 = (int(time.time()) // 60 - minutes - 1) * 60  # the last few days: none flagged late

    def frames_of_50() -> Iterator[tuple[str, bytes]]:
        for f in range(frames):
            e, minute = f % ENTERPRISES, f // ENTERPRISES
            ts = t0 + minute * 60
            readings = ",".join(f'{{"code":"{code}","ts":{ts},"value":{1000.0 + minute + k}}}'
                                for k, code in enumerate(codes))
            yield f"nhjc/v1/{ents[e]}/gw-1/readings", f'{{"v":1,"readings":[{readings}]}}'.encode()

    publish(port, frames_of_50())


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
        # Mosquitto takes the last value of an option given twice: this overrides the
        # shipped max_inflight_messages.
        broker = PrivateBroker(work / "broker", extra="max_inflight_messages 0").start()
        dsn = asyncio.run(migrated_database())
        svc: ServiceProcess | None = None
        try:
            def service() -> ServiceProcess:
                return ServiceProcess(broker.url, dsn, client_id=CLIENT_ID, quick=False, log_level="WARNING")

            items = [{"enterprise": enterprise_code(e), **item(code)}
                     for e in range(ENTERPRISES) for code in item_codes()]
            (work / "items.json").write_text(json.dumps(items))
            subprocess.run([sys.executable, "-m", "nhjc", "items", "load", str(work / "items.json")],
                           env=service().env, cwd=PROJECT_ROOT, check=True, stdout=subprocess.DEVNULL)
            # One short run creates the persistent session; the backlog then queues for it.
            svc = service().start(timeout=60)
            svc.stop(timeout=30)
            t = time.perf_counter()
            publish_backlog(broker.port, frames)
            print(f"published:   {n:,} readings in {frames:,} frames of {PER_FRAME} "
                  f"({time.perf_counter() - t:.1f} s)", flush=True)

            t = time.perf_counter()
            svc = service().start(wait_ready=False)
            assert svc.proc is not None
            sampler = RssSampler(svc.proc.pid)
            sampler.start()
            svc.wait_ready(60)
            peak_window = 0.0
            while (accepted := svc.metric("nhjc_readings_accepted_total")) < n:
                peak_window = max(peak_window, svc.metric("nhjc_unacked_messages_peak"))
                time.sleep(0.5)
            secs = time.perf_counter() - t
            peak_window = max(peak_window, svc.metric("nhjc_unacked_messages_peak"))
            sampler.stop()
            svc.stop(timeout=30)
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
            if svc is not None and svc.proc is not None and svc.proc.poll() is None:
                svc.kill()
            broker.stop()
            asyncio.run(drop_database(dsn))

if __name__ == "__main__":
    main()
