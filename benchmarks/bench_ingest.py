"""Ingest throughput: a backlog of frames of 50 readings, waiting at a real PrivateBroker,
drained by `nhjc run` into a real TimescaleDB.  Prints readings/s for the whole path,
and for decoding and storing alone, measured in the same run.

    .venv/bin/python -m benchmarks.bench_ingest [--frames 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import asyncpg

from ingest.frames import decode_readings
from ingest.store import Store
from ingest.topics import parse_topic
from tools.gateway import Gateway, enterprise_code, item
from tools.guest import PrivateBroker, drop_database, migrated_database
from tools.process import ServiceProcess, count

PER_FRAME = 50
ITEMS = 50


def make_frames(n: int, ent_count: int) -> list[tuple[str, list[dict]]]:
    codes = [f"01-00-{i // 100:04d}-023300-{i % 100:02d}" for i in range(ITEMS)]
    out = []
    for f in range(n):
        ent = f % ent_count
        minute = f // ent_count
        ts = 1764303300 + minute * 60
        out.append((enterprise_code(100 + ent), [{"code": c, "ts": ts, "value": 1000.0 + minute + k}
                                                 for k, c in enumerate(codes)]))
    return out


def bench_decode(frames: list[tuple[str, list[dict]]], codes: frozenset[str]) -> tuple[float, list]:
    payloads = [(f"nhjc/v1/{e}/gw/readings", json.dumps({"v": 1, "readings": rs}).encode()) for e, rs in frames]
    t = time.perf_counter()
    batches = [decode_readings(tp, parse_topic(tp), p, time.time_ns() // 1000, known_codes=codes)
               for tp, p in payloads]
    return time.perf_counter() - t, batches


async def bench_store(dsn: str, batches: list) -> float:
    from ingest.batch import ReadingBatch
    pool = await asyncpg.create_pool(dsn)
    store = Store(pool)
    chunks = [ReadingBatch.concat(batches[i:i + 200]) for i in range(0, len(batches), 200)]  # 10,000 rows
    t = time.perf_counter()
    for c in chunks:
        await store.write(c)
    elapsed = time.perf_counter() - t
    await pool.close()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=4000)
    ap.add_argument("--enterprises", type=int, default=20)
    args = ap.parse_args()
    frames = make_frames(args.frames, args.enterprises)
    n = args.frames * PER_FRAME
    codes = frozenset(r["code"] for r in frames[0][1])

    secs, batches = bench_decode(frames, codes)
    print(f"decode alone:        {n / secs:>10,.0f} readings/s")
    dsn = asyncio.run(migrated_database())
    try:
        secs = asyncio.run(bench_store(dsn, batches))
        print(f"store alone:         {n / secs:>10,.0f} readings/s  (binary COPY + upsert, 10,000-row batches)")
    finally:
        asyncio.run(drop_database(dsn))

    dsn = asyncio.run(migrated_database())
    with tempfile.TemporaryDirectory() as tmp:
        broker = PrivateBroker(Path(tmp) / "broker").start()
        try:
            ents = sorted({e for e, _ in frames})
            gws = {e: Gateway(broker.url, e) for e in ents}
            for gw in gws.values():
                gw.items([item(c) for c in codes])
            svc = ServiceProcess(broker.url, dsn, client_id="nhjc-bench").start()
            svc.stop()  # the session exists; the backlog now queues at the broker
            for e, rs in frames:
                gws[e].client.publish(gws[e].topic("readings"), json.dumps({"v": 1, "readings": rs}), qos=1)
            for gw in gws.values():
                gw.client.publish(gw.topic("status"), b"sync", qos=1).wait_for_publish(60)
            t = time.perf_counter()
            svc = ServiceProcess(broker.url, dsn, client_id="nhjc-bench").start(wait_ready=False)
            while count(dsn, "SELECT count(*) FROM readings") < n:
                time.sleep(0.1)
            secs = time.perf_counter() - t
            svc.stop()
            print(f"end to end backlog:  {n / secs:>10,.0f} readings/s  ({args.frames} frames of {PER_FRAME}, "
                  f"{secs:.1f} s incl. start-up)")
            for gw in gws.values():
                gw.close()
        finally:
            broker.stop()
            asyncio.run(drop_database(dsn))


if __name__ == "__main__":
    main()
