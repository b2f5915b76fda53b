"""How fast a gone instance's MQTT session is drained by its peer (nhjc/adoption.py).

Two ``nhjc run`` on one shared group, a private Mosquitto with the shipped settings, a
fresh database.  One is SIGKILLed; then a burst of frames of 50 readings is published
while the survivor's ownership heartbeat is long (``--notice-s``), so the killed
instance's turn of the burst queues in its session.  The survivor then adopts the
session and drains it.  Prints the backlog, the time from the adoption's start to its
end (``mqtt.adopt_settle_s`` included) and the drain rate, and from the SIGKILL to every
reading stored.

    .venv/bin/python -m benchmarks.bench_adoption [--readings 500000] [--notice-s 20]

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
import time
from pathlib import Path

from benchmarks.bench_backlog_rss import (
    ENTERPRISES,
    PER_FRAME,
    count_readings,
    item_codes,
    publish_backlog,
)
from tools.gateway import enterprise_code, item
from tools.guest import PrivateBroker, drop_database, migrated_database
from tools.process import PROJECT_ROOT, ServiceProcess, wait_for


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readings", type=int, default=500_000, help="the burst published after the kill")
    ap.add_argument("--notice-s", type=float, default=20.0,
                    help="the survivor's ownership heartbeat: how long the burst queues before the adoption")
    args = ap.parse_args()
    frames = -(-args.readings // PER_FRAME)
    n = frames * PER_FRAME
    settle_s = 2.0

    with tempfile.TemporaryDirectory(prefix="nhjc-bench-adopt-") as tmp:
        work = Path(tmp)
        broker = PrivateBroker(work / "broker").start()
        dsn = asyncio.run(migrated_database())
        members: list[ServiceProcess] = []
        try:
            def service(name: str, heartbeat_s: float) -> ServiceProcess:
                env = {"NHJC_MQTT__SHARED_GROUP": "bench", "NHJC_MQTT__ADOPT_SETTLE_S": str(settle_s),
                       "NHJC_OWNERSHIP__HEARTBEAT_S": str(heartbeat_s),
                       "NHJC_OWNERSHIP__RELEASE_AFTER_S": str(int(heartbeat_s * 2 + 10))}
                return ServiceProcess(broker.url, dsn, client_id=f"nhjc-bench-{name}", env=env, quick=False,
                                      log_level="INFO", log=work / f"{name}.log")

            items = [{"enterprise": enterprise_code(e), **item(code)}
                     for e in range(ENTERPRISES) for code in item_codes()]
            (work / "items.json").write_text(json.dumps(items))
            subprocess.run([sys.executable, "-m", "nhjc", "items", "load", str(work / "items.json")],
                           env=service("x", 2).env, cwd=PROJECT_ROOT, check=True, stdout=subprocess.DEVNULL)
            victim = service("a", 2).start(timeout=60)
            survivor = service("b", args.notice_s).start(timeout=60)
            members = [victim, survivor]
            victim.kill()
            killed = time.perf_counter()
            publish_backlog(broker.port, frames)
            published = time.perf_counter()
            print(f"published:   {n:,} readings in {frames:,} frames of {PER_FRAME} after the SIGKILL "
                  f"({published - killed:.1f} s)", flush=True)
            wait_for(lambda: survivor.metric("nhjc_session_adopting") == 1, args.notice_s * 3, "the adoption")
            began = time.perf_counter()
            wait_for(lambda: survivor.metric("nhjc_sessions_adopted_total", 'outcome="drained"') == 1, 600,
                     "the adoption's end")
            ended = time.perf_counter()
            wait_for(lambda: survivor.metric("nhjc_readings_accepted_total") >= n, 600, "every reading")
            stored_at = time.perf_counter()
            drained = survivor.metric("nhjc_sessions_drained_messages_total")
            stored = asyncio.run(count_readings(dsn))
            drain_s = ended - began - settle_s
            print(f"backlog:     {drained:,.0f} frames ({drained * PER_FRAME:,.0f} readings) in the killed "
                  f"instance's session")
            print(f"adoption:    began {began - killed:.1f} s after the SIGKILL; drained in {drain_s:.1f} s "
                  f"(+ {settle_s:g} s settle): {drained * PER_FRAME / max(drain_s, 1e-3):,.0f} readings/s")
            said = [line for line in (work / "b.log").read_text(errors="replace").splitlines()
                    if "adoption of the MQTT session" in line]
            print(f"its log:     {said[-1].split('adoption', 1)[-1] if said else '(no line)'}")
            print(f"all stored:  {stored_at - killed:.1f} s after the SIGKILL ({stored:,} readings)")
            if stored != n:
                raise SystemExit(f"stored {stored:,} readings, expected {n:,}")
        finally:
            for m in members:
                if m.proc is not None and m.proc.poll() is None:
                    m.kill()
            broker.stop()
            asyncio.run(drop_database(dsn))


if __name__ == "__main__":
    main()
