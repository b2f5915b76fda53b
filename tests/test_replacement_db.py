"""Recorded meter replacements through the real database: recorded before or after the
readings, across a 15-minute boundary, contradicted by the readings; the periods, their
revisions, the reading flags, the meter events and the instrument registry follow."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from ingest import quality as q
from ingest.replacements import Replacement, record_replacement
from processing.periods import DAY, MONTH, QUARTER, YEAR
from processing.pipeline import compute
from tests.strategies import CALENDAR, ELEC, ENTERPRISE, Replaced, at, item, replaced_meters
from tests.test_processing_aggregator import (
    _TS,
    Key,
    _batches,
    _withdrawn,
    add_items,
    aggregator,
    connected,
    consumption,
    drain,
    store,
)

pytestmark = pytest.mark.services
E = ENTERPRISE


def t(hour: int, minute: int = 0) -> int:
    return at(2024, 3, 1, hour, minute)


def when(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1e6, UTC)


def replacement(us: int, old_final: float, new_initial: float, **kw: str) -> Replacement:
    return Replacement(E, ELEC, when(us), old_final, new_initial, **kw)


async def events(conn: asyncpg.Connection) -> list[tuple[str, float, float, str]]:
    rows = await conn.fetch("SELECT kind, value_before, value_after, reason FROM meter_events"
                            " ORDER BY ts")
    return [tuple(r) for r in rows]


async def quality_at(conn: asyncpg.Connection, us: int) -> int:
    return int(await conn.fetchval(
        f"SELECT quality FROM readings WHERE code = $1 AND ts = {_TS.format('$2::int8')}", ELEC, us))


async def test_a_replacement_recorded_first_is_counted_when_the_readings_come(db: str) -> None:
    async with connected(db) as pool, pool.acquire() as conn:
        await add_items(conn, [item(multiplier=2.0)])
        assert await record_replacement(conn, replacement(t(0, 7), 114.0, 5.0), "test")
        assert await conn.fetchval("SELECT count(*) FROM pending_recompute") == 0  # no readings yet
        await store(conn, [(ELEC, t(0, 0), 100.0), (ELEC, t(0, 5), 110.0), (ELEC, t(0, 10), 9.0),
                           (ELEC, t(0, 14), 15.0)])
        await drain(aggregator(pool))
        row = (await consumption(conn))[(E, ELEC, QUARTER, t(0))]
        # 10 + (114 - 110) + (9 - 5) + 6 = 24 on the meters, times 2.
        assert (row["value"], row["valid"], row["flags"]) == (pytest.approx(48.0), True, 0)
        assert await events(conn) == [("replacement", 110.0, 9.0, "")]
        assert await quality_at(conn, t(0, 10)) == 0


async def test_a_late_record_across_a_boundary_recomputes_the_periods(db: str) -> None:
    async with connected(db) as pool, pool.acquire() as conn:
        await add_items(conn, [item()])
        await conn.execute(
            "INSERT INTO meters (enterprise, ser_no, meter_name, meter_level, data_codes, align_state,"
            " source) VALUES ($1, 'OLD-1', 'main meter', 1, $2, 'verified', 'test')", E, [ELEC])
        await store(conn, [(ELEC, t(0, 0), 100.0), (ELEC, t(0, 10), 110.0), (ELEC, t(0, 25), 3.0),
                           (ELEC, t(0, 30), 8.0)])
        registry = CollectorRegistry()
        agg = aggregator(pool, registry)
        await drain(agg)
        before = await consumption(conn)
        # No record yet: the jump 110 -> 3 is an unknown reset.
        q0, q15 = before[(E, ELEC, QUARTER, t(0))], before[(E, ELEC, QUARTER, t(0, 15))]
        assert (q0["value"], q0["valid"], q0["flags"]) == (10.0, False, q.RESET)
        assert (q15["value"], q15["valid"]) == (5.0, False)
        assert await events(conn) == [("reset", 110.0, 3.0, "")]

        # Replaced at 00:17: old 116 - 110 = 6 over 00:10-00:17, new 3 - 0 = 3 over 00:17-00:25.
        r = replacement(t(0, 17), 116.0, 0.0, old_ser_no="OLD-1", new_ser_no="NEW-1")
        assert await record_replacement(conn, r, "test")
        assert not await record_replacement(conn, r, "test")  # the same again changes nothing
        pending = await conn.fetch(f"SELECT {_us('from_ts')}, {_us('to_ts')} FROM pending_recompute")
        assert [tuple(p) for p in pending] == [(t(0, 10), t(0, 25))]  # just the segment
        assert await drain(agg) == 1
        after = await consumption(conn)
        q0, q15 = after[(E, ELEC, QUARTER, t(0))], after[(E, ELEC, QUARTER, t(0, 15))]
        assert q0["value"] == pytest.approx(10 + 6 * 5 / 7)
        assert q15["value"] == pytest.approx(6 * 2 / 7 + 3 + 5)
        assert (q0["valid"], q0["flags"], q0["coverage"]) == (True, 0, 1.0)
        assert (q15["valid"], q15["flags"], q15["coverage"]) == (True, 0, 1.0)
        for tier, start in ((DAY, at(2024, 3, 1)), (MONTH, at(2024, 3, 1)), (YEAR, at(2024))):
            assert after[(E, ELEC, tier, start)]["value"] == pytest.approx(24.0)
            assert after[(E, "0000", tier, start)]["kgce"] == pytest.approx(24.0 * 0.1229)
        changed = {k for k in after if after[k]["revision"] != before[k]["revision"]}
        assert changed == {(E, c, tier, start) for c in (ELEC, "0000") for tier, start in (
            (QUARTER, t(0)), (QUARTER, t(0, 15)), (DAY, at(2024, 3, 1)), (MONTH, at(2024, 3, 1)),
            (YEAR, at(2024)))}
        assert await events(conn) == [("replacement", 110.0, 3.0, "")]
        assert registry.get_sample_value("nhjc_meter_events_total", {"kind": "replacement"}) == 1
        assert await quality_at(conn, t(0, 25)) == 0
        # The old meter is retired at the replacement time, the change in its history.
        assert await conn.fetchval("SELECT retired_at FROM meters WHERE ser_no = 'OLD-1'") == when(t(0, 17))
        assert await conn.fetchval("SELECT count(*) FROM meters_history WHERE ser_no = 'OLD-1'") == 1


def _us(column: str) -> str:
    return f"(extract(epoch FROM {column}) * 1000000)::int8"


async def test_a_record_the_readings_contradict_leaves_the_reset(db: str) -> None:
    async with connected(db) as pool, pool.acquire() as conn:
        await add_items(conn, [item()])
        await store(conn, [(ELEC, t(0, 0), 100.0), (ELEC, t(0, 5), 110.0), (ELEC, t(0, 10), 9.0)])
        agg = aggregator(pool)
        await drain(agg)
        before = await consumption(conn)
        # The old meter's final value below its last reading (110): refused.
        await record_replacement(conn, replacement(t(0, 7), 101.0, 5.0), "test")
        await drain(agg)
        assert await events(conn) == [("replacement_refused", 110.0, 9.0, "old_below")]
        assert await quality_at(conn, t(0, 10)) == q.RESET
        after = await consumption(conn)
        assert {k: tuple(r) for k, r in after.items()} == {k: tuple(r) for k, r in before.items()}
        # Corrected: counted.
        await record_replacement(conn, replacement(t(0, 7), 111.0, 5.0), "test")
        await drain(agg)
        row = (await consumption(conn))[(E, ELEC, QUARTER, t(0))]
        assert (row["value"], row["valid"]) == (pytest.approx(10 + 1 + 4), True)
        assert await events(conn) == [("replacement", 110.0, 9.0, "")]


async def _through_db(dsn: str, r: Replaced, seed: int, k: int, record_after: list[int],
                      ) -> dict[Key, asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        await conn.execute("TRUNCATE items, readings, consumption, pending_recompute, meter_events,"
                           " gap_segments, meter_replacements")
        await add_items(conn, [item(multiplier=float(r.series.items.multiplier[0]),
                                    rollover=None if np.isnan(r.series.items.rollover[0])
                                    else float(r.series.items.rollover[0]))])
        agg = aggregator(pool, stuck_after_s=1e9)
        batches = _batches(r.series, seed, k)
        for j in range(k + 1):
            # Each replacement recorded before the readings, between batches, or after all.
            for (us, old_final, new_initial), after in zip(r.records, record_after, strict=True):
                if after == j:
                    await record_replacement(conn, replacement(us, old_final, new_initial), "test")
            if j < k:
                await store(conn, batches[j])
            await drain(agg)
        return {key: row for key, row in (await consumption(conn)).items()
                if not _withdrawn(row["value"], row["kgce"], row["coverage"], row["valid"],
                                  row["flags"])}
    finally:
        await pool.close()
        await conn.close()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(replaced_meters(max_readings=20), st.integers(0, 2**32 - 1), st.integers(1, 4), st.data())
def test_recorded_late_or_early_a_replacement_keeps_the_energy(
        db: str, r: Replaced, seed: int, k: int, data: st.DataObject) -> None:
    record_after = [data.draw(st.integers(0, k)) for _ in r.records]
    stored = asyncio.run(_through_db(db, r, seed, k, record_after))
    years = [row["value"] for (_, code, tier, _), row in stored.items() if code == ELEC and tier == YEAR]
    assert sum(years) == pytest.approx(r.energy, rel=1e-9, abs=1e-9)
    # And every period as the pure computation gives it.
    ref = compute(r.series.as_readings(), r.series.items, CALENDAR, stuck_after_s=1e9,
                  replacements=r.replacements).consumption
    expected = {(E, r.series.items.code[i], int(tier), int(start)): (value, bool(ok), int(fl))
                for i, tier, start, value, ok, fl in zip(ref.item, ref.tier, ref.start, ref.value,
                                                         ref.valid, ref.flags, strict=True)}
    assert set(stored) == set(expected)
    for key, (value, ok, fl) in expected.items():
        assert stored[key]["value"] == pytest.approx(value, rel=1e-9, abs=1e-9), key
        assert (stored[key]["valid"], stored[key]["flags"]) == (ok, fl), key
