"""The aggregator through a scratch database with the shipped processing settings: a
backlog (30 readings per item at once), then the real-time worst case (one new reading
per item per run, ten times).  Prints one JSON line (benchmarks/run.py reads it).

``--history-days N`` first stores one reading per item a day for the N days before,
as a service that has run for a while holds them: that many chunks of readings, which
every look-up of a reading might have to pass.  ``--unchanged``: every new reading
shows the value of the one before (registers that did not move: the stuck-register
check then looks back in the database).

    .venv/bin/python -m benchmarks.aggregate [--enterprises 20] [--rounds 10] [--history-days 0] [--unchanged]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import asyncpg
from prometheus_client import CollectorRegistry

from config.settings import ProcessingSettings
from processing.aggregator import Aggregator
from tools.guest import drop_database, migrated_database

_ITEMS = """
INSERT INTO items (enterprise, code, energy, unit, kind, scope, source)
SELECT '91BENCH' || lpad(e::text, 11, '0'), lpad(i::text, 2, '0') || '-00-0000-023300-01', '3300',
       'kWh', 'cumulative', CASE WHEN i < 3 THEN 1 ELSE 2 END, 'bench'
FROM generate_series(0, $1 - 1) e, generate_series(0, 49) i
"""

# What the store does: readings and one pending row per item, in one transaction.
_READINGS = """
WITH n AS (
  INSERT INTO readings (enterprise, code, ts, value, quality, received_at)
  SELECT i.enterprise, i.code, $1::text::timestamptz + k * interval '1 minute', k * 1.5, 0, now()
  FROM items i, generate_series($2::int, $3::int) k
  RETURNING enterprise, code, ts
)
INSERT INTO pending_recompute (enterprise, code, from_ts, to_ts)
SELECT enterprise, code, min(ts), max(ts) FROM n GROUP BY enterprise, code
"""
_START = "2025-11-28 00:00:00+08"
_HISTORY = """
INSERT INTO readings (enterprise, code, ts, value, quality, received_at)
SELECT enterprise, code, $1::text::timestamptz - d * interval '1 day', -d, 0, now()
FROM items, generate_series(1, $2::int) d
"""


async def measure(enterprises: int, rounds: int, history_days: int = 0,
                  unchanged: bool = False) -> dict[str, float]:
    dsn = await migrated_database()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await conn.execute(_ITEMS, enterprises)
            if history_days:
                await conn.execute(_HISTORY, _START, history_days)
        n_items = enterprises * 50
        agg = Aggregator(ProcessingSettings(), pool=pool, registry=CollectorRegistry())

        async def timed(lo: int, hi: int) -> tuple[float, int]:
            async with pool.acquire() as conn:
                await conn.execute(_READINGS.replace("k * 1.5", "0.0") if unchanged else _READINGS,
                                   _START, lo, hi)
            runs = 0
            t0 = time.perf_counter()
            while await agg.run_once():
                runs += 1
            return time.perf_counter() - t0, runs

        backlog, _ = await timed(0, 29)
        realtime, runs = 0.0, 0
        for k in range(30, 30 + rounds):
            secs, r = await timed(k, k)
            realtime += secs
            runs += r
        return {"items": n_items, "backlog": n_items * 30 / backlog, "realtime": n_items * rounds / realtime,
                "run_ms": realtime / runs * 1000}
    finally:
        await pool.close()
        await drop_database(dsn)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--enterprises", type=int, default=20, help="of 50 items each")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--history-days", type=int, default=0,
                    help="days of older readings (one per item a day) stored first")
    ap.add_argument("--unchanged", action="store_true", help="registers that do not move")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(measure(args.enterprises, args.rounds, args.history_days,
                                         args.unchanged))))


if __name__ == "__main__":
    main()
