"""W1, a province in steady state for benchmarks/run.py ``--w1``: 2,000 enterprises of
100 items each, every item read once a minute, each enterprise's frame of 100 readings
published at its own second of the minute (3,333 readings/s), for ten minutes, into a
running ``nhjc run``.

Measured: publish-to-commit p50 and p99 (from the service's commit-lag histogram since
arrival, which on loopback is the publish time give or take a millisecond; the
histogram's bucket bounds, so an upper estimate), how long after its close each
15-minute period got its final value (p99, from ``consumption.computed_at``), the
service's CPU and its peak RSS.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.backlog import RssSampler, item_codes
from tools.gateway import enterprise_code, item
from tools.guest import PrivateBroker, drop_database, migrated_database
from tools.process import ServiceProcess, query

__all__ = ["steady_rows"]

ENTERPRISES, ITEMS = 2000, 100


def _publisher(port: int, stop: threading.Event) -> threading.Thread:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    codes = item_codes(ITEMS)
    ents = [enterprise_code(e) for e in range(ENTERPRISES)]

    def run() -> None:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-w1", protocol=mqtt.MQTTv5)
        c.max_inflight_messages_set(1000)
        c.max_queued_messages_set(0)
        c.connect("127.0.0.1", port)
        c.loop_start()
        step = 60 / ENTERPRISES
        t0 = time.time()
        n = 0
        while not stop.is_set():
            due = t0 + n * step
            if (wait := due - time.time()) > 0:
                time.sleep(wait)
            e = n % ENTERPRISES
            ts = int(due)
            readings = ",".join(f'{{"code":"{code}","ts":{ts},"value":{1000.0 + n // ENTERPRISES + k}}}'
                                for k, code in enumerate(codes))
            c.publish(f"nhjc/v1/{ents[e]}/gw-1/readings", f'{{"v":1,"readings":[{readings}]}}', qos=1)
            n += 1
        c.disconnect()
        c.loop_stop()

    return threading.Thread(target=run, daemon=True)


def _quantile(svc: ServiceProcess, q: float) -> float:
    """Upper bound of the bucket holding quantile q of the commit lag since arrival."""
    _, text = svc.http("/metrics")
    buckets = []
    for line in text.splitlines():
        if line.startswith("nhjc_commit_lag_seconds_bucket{") and 'since="receive"' in line:
            bound = line.split('le="')[1].split('"')[0]
            buckets.append((float(bound), float(line.split()[-1])))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    for le, n in buckets:
        if total and n >= q * total:
            return le
    return float("nan")


def steady_rows(roots: dict[str, Path], minutes: float = 10) -> list[tuple[str, str, str, str]]:
    rows = []
    for label, root in roots.items():
        with tempfile.TemporaryDirectory(prefix="nhjc-w1-") as tmp:
            work = Path(tmp)
            broker = PrivateBroker(work / "broker").start()
            dsn = asyncio.run(migrated_database())
            try:
                recs = [{"enterprise": enterprise_code(e), **item(code)}
                        for e in range(ENTERPRISES) for code in item_codes(ITEMS)]
                (work / "items.json").write_text(json.dumps(recs))
                svc = ServiceProcess(f"mqtt://127.0.0.1:{broker.port}", dsn, client_id=f"nhjc-w1-{label}",
                                     quick=False, log_level="WARNING", root=root)
                subprocess.run([sys.executable, "-m", "nhjc", "items", "load", str(work / "items.json")],
                               env=svc.env, cwd=root, check=True, stdout=subprocess.DEVNULL)
                svc.start(timeout=60)
                assert svc.proc is not None
                sampler = RssSampler(svc.proc.pid)
                sampler.start()
                stop = threading.Event()
                pub = _publisher(broker.port, stop)
                started = time.time()
                cpu0 = sampler.cpu_s
                pub.start()
                time.sleep(minutes * 60)
                stop.set()
                pub.join(30)
                cpu = (sampler.cpu_s - cpu0) / (time.time() - started)
                time.sleep(90)  # the last periods' next readings, and their computation
                p50, p99 = _quantile(svc, 0.5), _quantile(svc, 0.99)
                sampler.stop()
                svc.stop(timeout=60)
                late = np.array([r[0] for r in query(
                    dsn, "SELECT extract(epoch FROM computed_at - period_start) - 900 FROM consumption "
                    "WHERE stat_type = 0 AND code <> '0000' "
                    "AND period_start + interval '15 minutes' > to_timestamp(%s) "
                    "AND period_start + interval '15 minutes' <= to_timestamp(%s)",
                    started + 60, started + minutes * 60)], float)
                closed = f"p99 {np.percentile(late, 99):.0f} s, p50 {np.percentile(late, 50):.0f} s" \
                    if len(late) else "no period closed"
                rows += [
                    ("W1", f"publish to commit ({label})", f"p50 ≤ {p50} s, p99 ≤ {p99} s",
                     "bucket bounds of the commit-lag histogram"),
                    ("W1", f"15-minute period final after its close ({label})", closed,
                     f"{len(late):,} periods"),
                    ("W1", f"service ({label})", f"CPU {cpu * 100:.0f} % of a core",
                     f"peak RSS {sampler.peak_mb:.0f} MB"),
                ]
            finally:
                broker.stop()
                asyncio.run(drop_database(dsn))
    return rows
