"""The aggregator against the real database: readings and pending rows in, consumption,
reading flags, meter events out; late readings recompute only what they touch."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import asyncpg
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from config.settings import ProcessingSettings
from ingest import quality as q
from ingest.registry import queue_item_recompute
from processing import queries as sql
from processing.aggregator import Aggregator
from processing.itemtable import ItemTable
from processing.periods import DAY, MONTH, QUARTER, YEAR
from processing.pipeline import compute
from processing.segments import Readings
from runtime.dberrors import DatabaseHealth
from runtime.runner import RunnerEvents, StageRunner
from tests.strategies import CALENDAR, ELEC, ENTERPRISE, GAS, Series, at, item, series, table

pytestmark = pytest.mark.services

Key = tuple[str, str, int, int]  # enterprise, code, stat_type, period_start us
_US = "(extract(epoch FROM {}) * 1000000)::int8"
_TS = "(timestamptz 'epoch' + {} * interval '1 microsecond')"


async def add_items(conn: asyncpg.Connection, records: Iterable[dict[str, Any]]) -> None:
    await conn.executemany(
        "INSERT INTO items (enterprise, code, energy, unit, kind, multiplier, rollover, min, max,"
        " scope, coefficient, source) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,'test')",
        [(r["enterprise"], r["code"], r["energy"], r["unit"], r["kind"], r["multiplier"],
          r["rollover"], r["min"], r["max"], r["scope"], r["coefficient"]) for r in records])


async def store(conn: asyncpg.Connection, data: Sequence[Sequence[Any]],
                enterprise: str = ENTERPRISE) -> None:
    """What the store does: readings upserted, and in the same
    transaction one pending row per item with the batch's first and last time."""
    if not data:
        return
    async with conn.transaction():
        await conn.execute(
            f"INSERT INTO readings AS r (enterprise, code, ts, value, quality, received_at)"
            f" SELECT $1, u.c, {_TS.format('u.t')}, u.v, u.q, now()"
            f" FROM unnest($2::text[], $3::int8[], $4::float8[], $5::int2[]) AS u(c, t, v, q)"
            f" ON CONFLICT (enterprise, code, ts) DO UPDATE SET value = EXCLUDED.value,"
            f" quality = EXCLUDED.quality",
            enterprise, [d[0] for d in data], [int(d[1]) for d in data],
            [float(d[2]) for d in data], [int(d[3]) if len(d) > 3 else 0 for d in data])
        await conn.execute(
            f"INSERT INTO pending_recompute (enterprise, code, from_ts, to_ts)"
            f" SELECT $1, u.c, {_TS.format('min(u.t)')}, {_TS.format('max(u.t)')}"
            f" FROM unnest($2::text[], $3::int8[]) AS u(c, t) GROUP BY u.c",
            enterprise, [d[0] for d in data], [int(d[1]) for d in data])


async def drain(agg: Aggregator) -> int:
    total = 0
    while n := await agg.run_once():
        total += n
    return total


async def consumption(conn: asyncpg.Connection) -> dict[Key, asyncpg.Record]:
    rows = await conn.fetch(
        f"SELECT enterprise, code, stat_type, {_US.format('period_start')} AS start, value, kgce,"
        f" coverage, valid, flags, revision FROM consumption")
    return {(r["enterprise"], r["code"], r["stat_type"], r["start"]): r for r in rows}


def aggregator(pool: asyncpg.Pool, registry: CollectorRegistry | None = None,
               **kw: Any) -> Aggregator:
    opts: dict[str, Any] = {"timezone": "Asia/Shanghai", "max_gap_s": 1800.0,
                            "stuck_after_s": 6 * 3600.0}
    opts.update(kw)
    return Aggregator(ProcessingSettings(**opts), pool=pool,
                      registry=registry if registry is not None else CollectorRegistry())


@contextlib.asynccontextmanager
async def connected(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    # A pool per test, made in the test's own event loop.
    p = await asyncpg.create_pool(dsn, min_size=1, max_size=3)
    try:
        yield p
    finally:
        await p.close()


def t(hour: int, minute: int = 0) -> int:
    return at(2024, 3, 1, hour, minute)


async def test_readings_go_through_the_database_into_consumption(db: str) -> None:
    async with connected(db) as pool:
        async with pool.acquire() as conn:
            await add_items(conn, [item(ELEC, multiplier=2.0),
                                   item(GAS, energy="1500", unit="m3", rollover=1000.0)])
            await store(conn, [(ELEC, t(0, 10), 100.0), (ELEC, t(0, 20), 130.0), (ELEC, t(0, 40), 140.0),
                               (GAS, t(0, 0), 995.0), (GAS, t(0, 15), 3.0)])
            agg = aggregator(pool)
            assert await agg.run_once() == 2
            assert await agg.run_once() == 0
            rows = await consumption(conn)
        e = ENTERPRISE
        # Electricity: 60 kWh over (00:10, 00:20), half each side of 00:15; 20 over (00:20, 00:40).
        assert rows[(e, ELEC, QUARTER, t(0))]["value"] == pytest.approx(30.0)
        assert rows[(e, ELEC, QUARTER, t(0, 15))]["value"] == pytest.approx(30.0 + 10.0)
        assert rows[(e, ELEC, QUARTER, t(0, 30))]["value"] == pytest.approx(10.0)
        assert rows[(e, ELEC, DAY, at(2024, 3, 1))]["value"] == pytest.approx(80.0)
        assert rows[(e, ELEC, MONTH, at(2024, 3, 1))]["kgce"] == pytest.approx(80 * 0.1229)
        # Gas rolled over at 1000: 8 m3.
        assert rows[(e, GAS, QUARTER, t(0))]["value"] == pytest.approx(8.0)
        total = rows[(e, "0000", QUARTER, t(0))]
        assert total["value"] == pytest.approx(30 * 0.1229 + 8 * 1.2143)
        assert total["coverage"] == pytest.approx(5 / 15)  # the electricity meter's
        assert rows[(e, "0000", YEAR, at(2024))]["value"] == pytest.approx(80 * 0.1229 + 8 * 1.2143)
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM pending_recompute") == 0
            flag = await conn.fetchval(
                f"SELECT quality FROM readings WHERE code = $1 AND ts = {_TS.format('$2::int8')}",
                GAS, t(0, 15))
            assert flag == q.ROLLOVER
            events = await conn.fetch("SELECT code, kind, value_before, value_after FROM meter_events")
            assert [tuple(r) for r in events] == [(GAS, "rollover", 995.0, 3.0)]


async def test_a_late_reading_recomputes_only_the_periods_it_touches(db: str) -> None:
    async with connected(db) as pool:
        async with pool.acquire() as conn:
            await add_items(conn, [item()])
            await store(conn, [(ELEC, t(0, 0) + i * 600_000_000, float(i)) for i in range(13)])
            agg = aggregator(pool)
            await drain(agg)
            before = await consumption(conn)
            # A correction at 01:00 (was 6) touches (00:50, 01:10): 00:45, 01:00 and the
            # coarse periods; everything else stays as it was, revision included.
            await store(conn, [(ELEC, t(1, 0), 6.5)])
            assert await drain(agg) == 1
            after = await consumption(conn)
        changed = {k for k in after if after[k]["revision"] != before[k]["revision"]}
        e = ENTERPRISE
        assert changed == {(e, c, QUARTER, t(0, 45)) for c in (ELEC, "0000")} | {
            (e, c, QUARTER, t(1, 0)) for c in (ELEC, "0000")}
        assert after[(e, ELEC, QUARTER, t(0, 45))]["value"] == pytest.approx(0.5 + 1.5)
        assert after[(e, ELEC, DAY, at(2024, 3, 1))]["value"] == pytest.approx(12.0)


async def test_rerunning_changes_nothing(db: str) -> None:
    async with connected(db) as pool:
        data = [(ELEC, t(0, 0) + i * 420_000_000, 3.0 * i) for i in range(20)]
        async with pool.acquire() as conn:
            await add_items(conn, [item()])
            await store(conn, data)
            agg = aggregator(pool)
            await drain(agg)
            first = await consumption(conn)
            await store(conn, data)  # a redelivery
            await queue_item_recompute(conn, ENTERPRISE, ELEC)
            assert await drain(agg) == 2
            assert await consumption(conn) == first


async def test_a_reset_is_recorded_and_a_correction_undoes_it(db: str) -> None:
    async with connected(db) as pool:
        async with pool.acquire() as conn:
            await add_items(conn, [item()])
            await store(conn, [(ELEC, t(0, 0), 500.0), (ELEC, t(0, 5), 510.0), (ELEC, t(0, 10), 20.0),
                               (ELEC, t(0, 15), 530.0)])
            registry = CollectorRegistry()
            agg = aggregator(pool, registry)
            await drain(agg)
            events = await conn.fetch("SELECT kind, value_before, value_after FROM meter_events")
            assert [tuple(r) for r in events] == [("reset", 510.0, 20.0)]
            row = (await consumption(conn))[(ENTERPRISE, ELEC, QUARTER, t(0))]
            # 10 before the reset and 510 after it, none across it.
            assert (row["value"], row["valid"], row["flags"]) == (520.0, False, q.RESET)
            assert row["coverage"] == pytest.approx(10 / 15)
            # The gateway corrects the reading: 520, not 20.
            await store(conn, [(ELEC, t(0, 10), 520.0)])
            await drain(agg)
            assert await conn.fetchval("SELECT count(*) FROM meter_events") == 0
            assert await conn.fetchval("SELECT max(quality) FROM readings") == 0
            row = (await consumption(conn))[(ENTERPRISE, ELEC, QUARTER, t(0))]
            assert (row["value"], row["valid"], row["coverage"]) == (30.0, True, 1.0)
        assert registry.get_sample_value("nhjc_meter_events_total", {"kind": "reset"}) == 1


async def test_gaps_across_midnight_reach_the_month_and_late_data_fills_them(
        db: str) -> None:
    async with connected(db) as pool:
        e = ENTERPRISE
        async with pool.acquire() as conn:
            await add_items(conn, [item()])
            await store(conn, [(ELEC, at(2024, 3, 9, 23, 30), 0.0), (ELEC, at(2024, 3, 9, 23, 50), 10.0),
                               (ELEC, at(2024, 3, 10, 0, 50), 70.0), (ELEC, at(2024, 3, 10, 1, 0), 80.0)])
            agg = aggregator(pool)
            await drain(agg)
            rows = await consumption(conn)
            assert rows[(e, ELEC, DAY, at(2024, 3, 9))]["value"] == pytest.approx(10.0)
            assert rows[(e, ELEC, DAY, at(2024, 3, 10))]["value"] == pytest.approx(10.0)
            month = rows[(e, ELEC, MONTH, at(2024, 3))]
            assert month["value"] == pytest.approx(80.0)
            assert month["coverage"] == pytest.approx(90 / (31 * 1440))
            assert await conn.fetchval("SELECT count(*) FROM gap_segments") == 1
            # The missing readings arrive: the gap becomes measured segments.
            await store(conn, [(ELEC, at(2024, 3, 10, 0, 0), 30.0), (ELEC, at(2024, 3, 10, 0, 25), 50.0)])
            await drain(agg)
            rows = await consumption(conn)
            assert await conn.fetchval("SELECT count(*) FROM gap_segments") == 0
            assert rows[(e, ELEC, DAY, at(2024, 3, 9))]["value"] == pytest.approx(30.0)
            assert rows[(e, ELEC, DAY, at(2024, 3, 10))]["value"] == pytest.approx(50.0)
            assert rows[(e, ELEC, MONTH, at(2024, 3))]["value"] == pytest.approx(80.0)
            assert rows[(e, ELEC, DAY, at(2024, 3, 10))]["coverage"] == pytest.approx(60 / 1440)


async def test_a_reading_days_after_the_previous_one_joins_its_series(db: str) -> None:
    """The look-up of an item's previous reading first goes back a limited while (two
    days, so that older chunks of readings are left out); an item silent for longer
    is looked up again without that bound, and its new reading still ends a gap
    segment from the old one rather than beginning a new series."""
    async with connected(db) as pool:
        e = ENTERPRISE
        async with pool.acquire() as conn:
            await add_items(conn, [item()])
            await store(conn, [(ELEC, at(2024, 3, 1, 0, 0), 0.0), (ELEC, at(2024, 3, 1, 0, 5), 5.0)])
            agg = aggregator(pool)
            await drain(agg)
            await store(conn, [(ELEC, at(2024, 3, 6, 0, 0), 125.0)])
            await drain(agg)
            await store(conn, [(ELEC, at(2024, 3, 6, 0, 10), 135.0)])
            await drain(agg)
            rows = await consumption(conn)
            assert rows[(e, ELEC, MONTH, at(2024, 3))]["value"] == pytest.approx(135.0)
            assert rows[(e, ELEC, QUARTER, at(2024, 3, 6, 0, 0))]["value"] == pytest.approx(10.0)
            assert await conn.fetchval("SELECT count(*) FROM gap_segments") == 1
            # Recomputing the old end again (a correction) still finds what follows it.
            await store(conn, [(ELEC, at(2024, 3, 1, 0, 5), 6.0)])
            await drain(agg)
            rows = await consumption(conn)
            assert rows[(e, ELEC, MONTH, at(2024, 3))]["value"] == pytest.approx(135.0)
            assert rows[(e, ELEC, QUARTER, at(2024, 3, 1, 0, 0))]["value"] == pytest.approx(6.0)


async def test_an_unchanged_register_looks_back_past_the_first_bound(db: str) -> None:
    """Since when a register has shown its value: the reading just before t -
    stuck_after counts even when it lies days before (found by the look-up again
    without its first bound)."""
    async with connected(db) as pool:
        async with pool.acquire() as conn:
            await add_items(conn, [item()])
            t1 = at(2024, 3, 6, 0, 0)
            await store(conn, [(ELEC, at(2024, 3, 1, 0, 0), 5.0), (ELEC, t1, 5.0),
                               (ELEC, t1 + 600_000_000, 5.0)])
            items = ItemTable.from_records(dict(r) for r in await conn.fetch(sql.ITEMS, [ENTERPRISE]))
            agg = aggregator(pool)
            r = Readings(np.zeros(2, np.int64), np.array([t1, t1 + 600_000_000], np.int64),
                         np.array([5.0, 5.0]), np.zeros(2, np.int32), np.array([False, True]))
            async with conn.transaction():
                since, _ = await agg._run_since(conn, items, r)
        assert since[0] == t1 - 6 * 3600 * 1_000_000  # not "since t1": it showed 5 before


async def test_a_stuck_register_is_flagged_in_the_database(db: str) -> None:
    async with connected(db) as pool:
        other = "01-00-0000-023300-09"
        quarter = 15 * 60_000_000
        async with pool.acquire() as conn:
            await add_items(conn, [item(), item(other)])
            registry = CollectorRegistry()
            agg = aggregator(pool, registry)
            # Hour by hour, as a gateway would send them.
            for h in range(8):
                times = [t(h) + i * quarter for i in range(4)]
                await store(conn, [(other, x, float(4 * h + i)) for i, x in enumerate(times)])
                await store(conn, [(ELEC, x, 42.0) for x in times])
                await drain(agg)
            stuck = await conn.fetch(
                f"SELECT {_US.format('ts')} AS t FROM readings WHERE quality & $1 > 0 ORDER BY ts",
                q.STUCK)
            assert [r["t"] for r in stuck] == [t(6) + i * quarter for i in range(8)]
            rows = await consumption(conn)
            assert not rows[(ENTERPRISE, ELEC, QUARTER, t(6))]["valid"]
            assert rows[(ENTERPRISE, ELEC, QUARTER, t(5, 30))]["valid"]
        assert registry.get_sample_value("nhjc_readings_flagged_total", {"flag": "stuck"}) == 8


async def test_the_runner_keeps_it_going_and_stops_it_when_told(db: str) -> None:
    async with connected(db) as pool, pool.acquire() as conn:
        await add_items(conn, [item()])
        registry = CollectorRegistry()
        agg = aggregator(pool, registry)
        runner = StageRunner(agg, interval_s=0.02, pause_min_s=0.01, pause_max_s=0.05,
                             health=DatabaseHealth(), events=RunnerEvents(registry))
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        await store(conn, [(ELEC, t(0, 0), 0.0), (ELEC, t(0, 15), 5.0)])
        for _ in range(200):
            if await conn.fetchval("SELECT count(*) FROM consumption") > 0:
                break
            await asyncio.sleep(0.02)
        assert await conn.fetchval("SELECT count(*) FROM pending_recompute") == 0
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_a_step_says_whether_work_remains_and_counts_its_failures(db: str) -> None:
    registry = CollectorRegistry()
    async with connected(db) as pool:
        async with pool.acquire() as conn:
            await add_items(conn, [item()])
            await store(conn, [(ELEC, t(0, 0), 0.0), (ELEC, t(0, 15), 5.0)])
        agg = aggregator(pool, registry, chunk=1)
        assert await agg.step() is True
        assert await agg.step() is False
    # The pool is closed now: the step fails, counted here and raised for the runner.
    with pytest.raises(asyncpg.InterfaceError):
        await agg.step()
    assert registry.get_sample_value("nhjc_aggregator_errors_total") == 1


# -- late arrival, property-based ---------------------------------------------------------

def _batches(s: Series, seed: int, k: int) -> list[list[tuple[str, int, float, int]]]:
    rng = np.random.default_rng(seed)
    data = [(s.items.code[i], int(ts), float(v), int(qq))
            for i, ts, v, qq in zip(s.item, s.ts, s.value, s.quality, strict=True)]
    order = rng.permutation(len(data))
    cuts = np.sort(rng.integers(0, len(data) + 1, k - 1))
    return [[data[j] for j in part] for part in np.split(order, cuts)]


def _opt(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def _withdrawn(value: float, kgce: float, coverage: float, valid: bool, flags: int) -> bool:
    """How a withdrawn row looks (a total of 0 with a silent item looks alike)."""
    return (value, kgce, coverage, valid, flags) == (0, 0, 0, False, 0)


async def _incremental(dsn: str, s: Series, batches: list[list[tuple[str, int, float, int]]],
                       ) -> tuple[dict[Key, asyncpg.Record], dict[tuple[str, int], int]]:
    conn = await asyncpg.connect(dsn)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        await conn.execute("TRUNCATE items, readings, consumption, pending_recompute, meter_events,"
                           " gap_segments")
        n = len(s.items) - len(s.items.enterprises)
        await add_items(conn, [
            {"enterprise": s.items.enterprise[i], "code": s.items.code[i], "energy": "3300",
             "unit": "kWh", "kind": ["cumulative", "interval", "instant"][s.items.kind[i]],
             "multiplier": float(s.items.multiplier[i]),
             "rollover": _opt(s.items.rollover[i]),
             "min": _opt(s.items.min[i]), "max": _opt(s.items.max[i]),
             "scope": int(s.items.scope[i]), "coefficient": None}
            for i in range(n)])
        agg = aggregator(pool, stuck_after_s=1e9)  # stuck depends on arrival order; not here
        for batch in batches:
            await store(conn, batch)
            await drain(agg)
        quality = {(r["code"], r["t"]): r["quality"] for r in await conn.fetch(
            f"SELECT code, {_US.format('ts')} AS t, quality FROM readings")}
        # A withdrawn row (a period that measured something in an earlier run and
        # nothing now) stands for no row: the pure result has none.
        stored = {k: r for k, r in (await consumption(conn)).items()
                  if not _withdrawn(r["value"], r["kgce"], r["coverage"], r["valid"], r["flags"])}
        return stored, quality

    finally:
        await pool.close()
        await conn.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(series(max_items=3, max_readings=40), st.integers(0, 2**32 - 1), st.integers(1, 5))
def test_late_readings_end_where_timely_ones_do(db: str, s: Series, seed: int, k: int) -> None:
    stored, quality = asyncio.run(_incremental(db, s, _batches(s, seed, k)))
    ref = compute(s.as_readings(), s.items, CALENDAR, stuck_after_s=1e9)
    c = ref.consumption
    expected = {(s.items.enterprise[i], s.items.code[i], int(tier), int(start)):
                (value, kgce, cov, bool(ok), int(fl))
                for i, tier, start, value, kgce, cov, ok, fl in zip(
                    c.item, c.tier, c.start, c.value, c.kgce, c.coverage, c.valid, c.flags, strict=True)
                if not _withdrawn(value, kgce, cov, bool(ok), int(fl))}
    assert set(stored) == set(expected)
    for key, (value, kgce, cov, ok, fl) in expected.items():
        row = stored[key]
        assert row["value"] == pytest.approx(value, rel=1e-9, abs=1e-9), key
        assert row["kgce"] == pytest.approx(kgce, rel=1e-9, abs=1e-9), key
        assert row["coverage"] == pytest.approx(cov, abs=1e-12), key
        assert (row["valid"], row["flags"]) == (ok, fl), key
    r = ref.readings
    want = {(s.items.code[i], int(ts)): int(qq) for i, ts, qq in zip(r.item, r.ts, ref.quality, strict=True)}
    assert quality == want


async def test_two_aggregators_share_the_work_and_agree_with_the_pure_result(db: str) -> None:
    rng = np.random.default_rng(7)
    ents = [f"91340100MA2N{e:06d}" for e in range(6)]
    codes = [f"0{i}-00-0000-023300-01" for i in range(4)]
    recs = [item(c, enterprise=e, scope=1 if i < 2 else 2) for e in ents for i, c in enumerate(codes)]
    items = table(*recs)
    data: dict[str, list[tuple[str, int, float]]] = {e: [] for e in ents}
    for e in ents:
        for c in codes:
            steps = rng.integers(60, 2400, 150) * 1_000_000
            ts = at(2024, 2, 28, 20) + np.cumsum(steps)
            values = np.cumsum(rng.exponential(1.0, 150))
            data[e] += [(c, int(x), float(v)) for x, v in zip(ts, values, strict=True)]
    async with connected(db) as pool:
        async with pool.acquire() as conn:
            await add_items(conn, recs)
            for e in ents:  # each enterprise's readings in shuffled batches
                rows = [data[e][j] for j in rng.permutation(len(data[e]))]
                for part in np.array_split(np.arange(len(rows)), 8):
                    await store(conn, [rows[j] for j in part], enterprise=e)
        a, b = aggregator(pool, chunk=3), aggregator(pool, chunk=3)
        done = await asyncio.gather(drain(a), drain(b))
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM pending_recompute") == 0
            stored = await consumption(conn)
    assert done[0] > 0 and done[1] > 0 and sum(done) == 6 * 8 * 4
    all_rows = [(e, c, t, v) for e in ents for c, t, v in data[e]]
    idx = items.lookup([r[0] for r in all_rows], [r[1] for r in all_rows])
    ref = compute(Readings.from_unsorted(idx, np.array([r[2] for r in all_rows]),
                                         np.array([r[3] for r in all_rows])), items, CALENDAR)
    c = ref.consumption
    assert len(stored) == len(c)
    for i in range(len(c)):
        row = stored[(items.enterprise[c.item[i]], items.code[c.item[i]], int(c.tier[i]),
                      int(c.start[i]))]
        assert row["value"] == pytest.approx(float(c.value[i]), rel=1e-9, abs=1e-9)
        assert row["coverage"] == pytest.approx(float(c.coverage[i]), abs=1e-12)
        assert row["valid"] == bool(c.valid[i])
