"""Uplink throughput: a backlog of periods in a real TimescaleDB delivered to a local
mock platform over HTTP, for each flavour.  Prints records/s from the first enqueue to
the last acknowledgement (the mock runs in the same process, so this is a floor).

Then a backfill: periods already delivered to two targets are revised ``--revisions``
times while a backlog drains (a batch of late readings every 10 s of the uplink's
clock, each revising every period), and each target is waited for until it holds the
final values.  Prints, per target, records received / distinct periods, with the
quiet before a re-send (``resend_quiet_s``, default) and without it (0, every change
sent as soon as seen).

    .venv/bin/python -m benchmarks.bench_uplink [--enterprises 100] [--items 50] [--periods 8]
        [--only throughput|backfill] [--revisions 6]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import timedelta

import asyncpg
from prometheus_client import CollectorRegistry

from config.settings import TargetSettings, UplinkSettings
from ingest.credit_code import check_character
from runtime.dberrors import DatabaseHealth
from runtime.runner import RunnerEvents
from tools.clock import FakeClock
from tools.guest import drop_database, migrated_database
from tools.platform.mock import MockPlatform
from tools.platform.targets import TZ, local, target
from uplink.stage import Uplink

START = local(2026, 11, 28, 8, 0)


def enterprise(i: int) -> str:
    first = f"91340100{i:09d}"
    return first + check_character(first)


async def seed(dsn: str, n_ent: int, n_items: int, n_periods: int) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        rows = [(enterprise(e), f"01-00-{i // 100:04d}-023300-{i % 100:02d}", 0,
                 START + timedelta(minutes=15 * p), float(e + i + p))
                for e in range(n_ent) for i in range(n_items) for p in range(n_periods)]
        await conn.copy_records_to_table(
            "consumption", records=[(*r, r[4], True, 1.0) for r in rows],
            columns=["enterprise", "code", "stat_type", "period_start", "value", "kgce", "valid", "coverage"])
        return len(rows)
    finally:
        await conn.close()


async def deliver(dsn: str, flavour: str, expected: int, n_periods: int, concurrency: int) -> float:
    clock = FakeClock(START + timedelta(minutes=15 * n_periods + 2))
    async with MockPlatform(name=flavour, flavour=flavour) as platform:
        pool = await asyncpg.create_pool(dsn, min_size=2, max_size=6)
        try:
            settings = target(platform.url, flavour=flavour, batch_size=200, concurrency=concurrency,
                              backfill_days=1)
            registry = CollectorRegistry()
            uplink = Uplink(pool, UplinkSettings(targets={flavour: settings}, interval_ms=10), zone=TZ,
                            clock=clock, registry=registry, health=DatabaseHealth(registry),
                            events=RunnerEvents(registry))
            stop = asyncio.Event()
            t = time.perf_counter()
            task = asyncio.create_task(uplink.run(stop))
            while platform.stats()["records"] < expected:
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - t
            stop.set()
            await task
        finally:
            await pool.close()
    return elapsed


async def settled(pool: asyncpg.Pool, name: str, n: int) -> bool:
    """Every period of the target acknowledged at its latest revision."""
    row = await pool.fetchrow(
        "SELECT count(*) AS rows, count(*) FILTER (WHERE state = 'acked' AND acked_revision = revision) AS done"
        " FROM uplink_outbox WHERE target = $1", name)
    return bool(row["rows"] == n and row["done"] == n)


async def backfill(dsn: str, n: int, n_periods: int, revisions: int, quiet_s: float) -> dict[str, float]:
    """Deliver ``n`` periods to two targets, revise every period ``revisions`` times as a
    drain would, and wait until both hold the final values; records received per
    distinct period, per target."""
    clock = FakeClock(START + timedelta(minutes=15 * n_periods + 2))
    async with MockPlatform(name="provincial") as prov, MockPlatform(name="national", flavour="yunnan") as nat:
        pool = await asyncpg.create_pool(dsn, min_size=2, max_size=6)
        try:
            targets = {name: target(p.url, flavour=p.flavour, batch_size=200, concurrency=4, backfill_days=1,
                                    resend_quiet_s=quiet_s)
                       for name, p in (("provincial", prov), ("national", nat))}
            registry = CollectorRegistry()
            uplink = Uplink(pool, UplinkSettings(targets=targets, interval_ms=10, settle_s=0.2), zone=TZ,
                            clock=clock, registry=registry, health=DatabaseHealth(registry),
                            events=RunnerEvents(registry))
            stop = asyncio.Event()
            task = asyncio.create_task(uplink.run(stop))
            while not all([await settled(pool, name, n) for name in targets]):
                await asyncio.sleep(0.05)
            for _ in range(revisions):
                # A batch of late readings revises every period; the uplink has real time
                # to see and send it before the next batch.
                await pool.execute("UPDATE consumption SET value = value + 1, kgce = kgce + 1,"
                                   " revision = nextval('consumption_revision')")
                await asyncio.sleep(0.5)
                clock.advance(seconds=10)
            while not all([await settled(pool, name, n) for name in targets]):
                clock.advance(seconds=10)
                await asyncio.sleep(0.05)
            stop.set()
            await task
        finally:
            await pool.close()
        return {name: p.stats()["received"] / p.stats()["records"] for name, p in (("provincial", prov),
                                                                                   ("national", nat))}


async def main(args: argparse.Namespace) -> None:
    if args.only != "backfill":
        await throughput(args)
    if args.only != "throughput":
        for quiet_s in (TargetSettings.model_fields["resend_quiet_s"].default, 0.0):
            dsn = await migrated_database()
            try:
                n = await seed(dsn, args.enterprises // 5, args.items // 5, args.periods)
                per = await backfill(dsn, n, args.periods, args.revisions, quiet_s)
                print(f"backfill  {n:7d} periods revised {args.revisions} times while draining,"
                      f" resend_quiet_s {quiet_s:5.0f}: records sent per distinct period "
                      + ", ".join(f"{name} {v:.2f}" for name, v in per.items()))
            finally:
                await drop_database(dsn)


async def throughput(args: argparse.Namespace) -> None:
    # Shandong sends one record per call, hence the higher concurrency.
    for flavour, concurrency in (("gbt37947", 4), ("yunnan", 4), ("shandong", 16)):
        dsn = await migrated_database()
        try:
            n = await seed(dsn, args.enterprises, args.items, args.periods)
            elapsed = await deliver(dsn, flavour, n, args.periods, concurrency)
            print(f"{flavour:9s} {n:7d} records in {elapsed:6.2f} s: {n / elapsed:8.0f} records/s "
                  f"(concurrency {concurrency})")
        finally:
            await drop_database(dsn)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--enterprises", type=int, default=100)
    p.add_argument("--items", type=int, default=50)
    p.add_argument("--periods", type=int, default=8)
    p.add_argument("--only", choices=("throughput", "backfill"))
    p.add_argument("--revisions", type=int, default=6)
    asyncio.run(main(p.parse_args()))
