"""Throughput of processing alone (no database): validation, segments, stuck registers,
15-minute/day/month/year periods and enterprise totals, on generated readings.

    .venv/bin/python benchmarks/bench_processing.py [--items 5000] [--per-item 60]

Prints readings per second for each scenario (best of ``--repeat`` runs).  Readings
arrive shuffled, as a batch from many gateways does; sorting them is part of the cost.

With ``--dsn`` it also times the aggregator through a real database (a scratch database
with the schema migrated; the benchmark's enterprises are deleted afterwards): a backlog
(30 readings per item at once), real time (one reading per item per run, the most
expensive case per reading) and catching up (ten such batches queued).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from config.settings import ProcessingSettings
from processing.itemtable import ItemTable
from processing.periods import Calendar
from processing.pipeline import compute
from processing.replacing import Replacements
from processing.segments import Readings, validate

START_US = 1_764_259_200_000_000  # 2025-11-28 00:00:00+08:00


def make_items(n_items: int, per_enterprise: int) -> ItemTable:
    rng = np.random.default_rng(1)
    kinds = rng.choice(["cumulative", "interval", "instant"], n_items, p=[0.7, 0.15, 0.15])
    recs = []
    for i in range(n_items):
        kind = str(kinds[i])
        recs.append({
            "enterprise": f"91340100MA{i // per_enterprise:08d}",
            "code": f"{i % per_enterprise:02d}-00-0000-023300-01",
            "energy": "3300", "kind": kind, "multiplier": 1.0 if i % 3 else 200.0,
            "rollover": 1e6 if kind == "cumulative" else None,
            "min": None, "max": 1000.0 if i % 2 else None,
            "scope": 1 if i % per_enterprise < 3 else 2, "coefficient": None,
        })
    return ItemTable.from_records(recs)


def make_readings(items: ItemTable, per_item: int, step_s: int, seed: int = 2,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(item, ts, value) columns, shuffled."""
    rng = np.random.default_rng(seed)
    n_items = len(items) - len(items.enterprises)
    item = np.repeat(np.arange(n_items, dtype=np.int64), per_item)
    k = np.tile(np.arange(per_item, dtype=np.int64), n_items)
    jitter = rng.integers(0, 5_000_000, len(item))  # gateways' clocks: a few seconds off
    ts = START_US + k * step_s * 1_000_000 + jitter
    increments = rng.exponential(1.0, len(item))
    value = np.cumsum(increments)  # monotone across items too: fine for a register
    value = np.where(items.kind[item] == 2, rng.normal(50, 5, len(item)), value)  # instant
    value = np.where(items.kind[item] == 1, increments, value)  # interval
    # A few faults: resets, a gap, NaN.
    value[rng.random(len(item)) < 0.001] = 0.0
    order = rng.permutation(len(item))
    return item[order], ts[order], value[order]


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


_BENCH_PREFIX = "91BENCH"

_DB_ITEMS = """
INSERT INTO items (enterprise, code, energy, unit, kind, scope, source)
SELECT $1 || lpad(e::text, 11, '0'), lpad(i::text, 2, '0') || '-00-0000-023300-01', '3300', 'kWh',
       'cumulative', CASE WHEN i < 3 THEN 1 ELSE 2 END, 'bench'
FROM generate_series(0, $2 - 1) e, generate_series(0, 49) i
"""

# What the store does: readings and one pending row per item, in one transaction.
_DB_READINGS = """
WITH n AS (
  INSERT INTO readings (enterprise, code, ts, value, quality, received_at)
  SELECT i.enterprise, i.code, $2::text::timestamptz + k * interval '1 minute', k * 1.5, 0, now()
  FROM items i, generate_series($3::int, $4::int) k WHERE i.enterprise LIKE $1 || '%'
  RETURNING enterprise, code, ts
)
INSERT INTO pending_recompute (enterprise, code, from_ts, to_ts)
SELECT enterprise, code, min(ts), max(ts) FROM n GROUP BY enterprise, code
"""


async def bench_database(dsn: str, enterprises: int) -> None:
    import asyncpg
    from prometheus_client import CollectorRegistry

    from processing.aggregator import Aggregator

    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    start = "2025-11-28 00:00:00+08"
    tables = ("readings", "consumption", "gap_segments", "meter_events", "pending_recompute",
              "items")
    try:
        async with pool.acquire() as conn:
            await conn.execute(_DB_ITEMS, _BENCH_PREFIX, enterprises)
        n_items = enterprises * 50
        settings = ProcessingSettings(timezone="Asia/Shanghai", max_gap_s=1800, stuck_after_s=6 * 3600)
        agg = Aggregator(settings, pool=pool, registry=CollectorRegistry())

        async def timed(lo: int, hi: int) -> float:
            async with pool.acquire() as conn:
                await conn.execute(_DB_READINGS, _BENCH_PREFIX, start, lo, hi)
            t0 = time.perf_counter()
            while await agg.run_once():
                pass
            return time.perf_counter() - t0

        seconds = await timed(0, 29)
        print(f"aggregator through the database, {n_items:,} items:")
        print(f"  backlog, 30 readings per item        {seconds * 1000:8.1f} ms  "
              f"{n_items * 30 / seconds:>12,.0f} readings/s")
        seconds = sum([await timed(k, k) for k in range(30, 40)])
        print(f"  real time, 1 reading per item x 10   {seconds * 1000:8.1f} ms  "
              f"{n_items * 10 / seconds:>12,.0f} readings/s")
        # Behind: ten batches of one reading per item queued before the aggregator runs.
        async with pool.acquire() as conn:
            for k in range(40, 49):
                await conn.execute(_DB_READINGS, _BENCH_PREFIX, start, k, k)
        seconds = await timed(49, 49)
        print(f"  behind by 10 batches of 1 per item   {seconds * 1000:8.1f} ms  "
              f"{n_items * 10 / seconds:>12,.0f} readings/s")
    finally:
        async with pool.acquire() as conn:
            for table in tables:
                await conn.execute(f"DELETE FROM {table} WHERE enterprise LIKE $1 || '%'",
                                   _BENCH_PREFIX)
        await pool.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=5000)
    ap.add_argument("--per-enterprise", type=int, default=50)
    ap.add_argument("--per-item", type=int, default=60, help="readings per item")
    ap.add_argument("--step-s", type=int, default=60, help="seconds between an item's readings")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dsn", help="also time the aggregator on this scratch database")
    ap.add_argument("--db-enterprises", type=int, default=20, help="of 50 items each")
    args = ap.parse_args()

    cal = Calendar(ZoneInfo("Asia/Shanghai"))
    items = make_items(args.items, args.per_enterprise)
    item, ts, value = make_readings(items, args.per_item, args.step_s)
    n = len(ts)

    def everything() -> object:
        return compute(Readings.from_unsorted(item, ts, value), items, cal)

    # 100 recorded meter replacements (cumulative items, mid-way through their readings):
    # what a Python loop per replacement row costs beside the vectorised rest.
    cum = np.flatnonzero(items.kind[: args.items] == 0)[:100]
    mid = START_US + (args.per_item // 2) * args.step_s * 1_000_000 + args.step_s * 500_000
    replaced = Replacements.of(cum, np.full(len(cum), mid), np.full(len(cum), 1e9),
                               np.zeros(len(cum)))

    def with_replacements() -> object:
        return compute(Readings.from_unsorted(item, ts, value), items, cal, replacements=replaced)

    def validation_only() -> object:
        return validate(Readings.from_unsorted(item, ts, value), items, max_gap_us=1_800_000_000)

    res = compute(Readings.from_unsorted(item, ts, value), items, cal)  # also warms caches
    print(f"{n:,} readings, {args.items:,} items of {len(items.enterprises):,} enterprises, "
          f"{args.per_item} per item every {args.step_s} s; "
          f"{len(res.consumption):,} consumption rows")
    for name, fn in (("sort + validation + segments", validation_only),
                     ("full: validation + 4 tiers + totals", everything),
                     (f"full, {len(cum)} meter replacements", with_replacements)):
        seconds = best(fn, args.repeat)
        print(f"  {name:<38} {seconds * 1000:8.1f} ms  {n / seconds:>12,.0f} readings/s")
    if args.dsn:
        asyncio.run(bench_database(args.dsn, args.db_enterprises))


if __name__ == "__main__":
    main()
