"""UNVERIFIED reaches the values: readings of an item whose instrument was out of
verification on their local date are flagged and the periods resting on them are not
valid (flag only with processing.unverified = "flag"); a later verification leaves them
so; items with no instrument are not judged.  Real TimescaleDB, hand-checked periods."""

from __future__ import annotations

import asyncpg
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from config.settings import ProcessingSettings
from ingest import quality as q
from ingest.meters import MeterSpec, upsert_meters
from processing.periods import DAY, QUARTER
from processing.verification import _bad, covered
from tests.strategies import at, item
from tests.test_processing_aggregator import (
    add_items,
    aggregator,
    connected,
    consumption,
    drain,
    store,
)
from tools.gateway import enterprise_code

ENT = enterprise_code(51)
ELEC = "01-00-0000-023300-01"
GAS = "00-00-0000-011500-01"
_TS = "(timestamptz 'epoch' + $2::int8 * interval '1 microsecond')"


def meter(ser: str, code: str, **extra: object) -> MeterSpec:
    fields: dict[str, object] = {"enterprise": ENT, "serNo": ser, "meterName": ser, "meterLevel": 1,
                                 "dataCode": code, "precisionLevel": "0.5S", "alignState": "verified",
                                 "lastAlignDate": "2024-01-01", "nextAlignDate": "2024-03-01"}
    fields.update(extra)
    return MeterSpec.model_validate({k: v for k, v in fields.items() if v is not None})


def quarters(start: int, end: int) -> list[int]:
    return list(range(start, end + 1, 15 * 60_000_000))


async def flags(conn: asyncpg.Connection, code: str) -> dict[int, int]:
    rows = await conn.fetch("SELECT (extract(epoch FROM ts) * 1000000)::int8 AS t, quality FROM readings"
                            " WHERE enterprise = $1 AND code = $2", ENT, code)
    return {r["t"]: r["quality"] for r in rows}


async def setup(conn: asyncpg.Connection, specs: list[MeterSpec], *stretches: list[int]) -> None:
    """Items, instruments, then each stretch of readings as a batch of its own (in time
    order: an old stretch stored after a newer one would be out of line)."""
    await add_items(conn, [item(ELEC, enterprise=ENT), item(GAS, enterprise=ENT, energy="1500", unit="m3")])
    await upsert_meters(conn, specs, "test")
    n = 0
    for times in stretches:
        await store(conn, [(c, t, 10.0 * (n + i)) for c in (ELEC, GAS) for i, t in enumerate(times)],
                    enterprise=ENT)
        n += len(times)


async def test_readings_past_next_align_date_are_unverified_and_not_valid(db: str) -> None:
    # Verified 2024-01-01 to 2024-03-01 (local dates, both inclusive); GAS has no instrument.
    before = quarters(at(2023, 12, 31, 23), at(2024, 1, 1, 0, 30))
    around = quarters(at(2024, 3, 1, 23), at(2024, 3, 2, 1))
    async with connected(db) as pool, pool.acquire() as conn:
        await setup(conn, [meter("E-1", ELEC)], before, around)
        registry = CollectorRegistry()
        await drain(aggregator(pool, registry))
        elec, gas = await flags(conn, ELEC), await flags(conn, GAS)
        rows = await consumption(conn)
    unverified = {t for t, f in elec.items() if f & q.UNVERIFIED}
    # Local 2024-03-02 on: past nextAlignDate.  Before 2024-01-01: before the first
    # recorded verification, not judged.
    assert unverified == {t for t in around if t >= at(2024, 3, 2)}
    assert registry.get_sample_value("nhjc_readings_flagged_total", {"flag": "unverified"}) == len(unverified)
    assert set(gas.values()) == {0}
    v = {k[1:]: r["valid"] for k, r in rows.items() if k[0] == ENT}
    assert v[(ELEC, QUARTER, at(2024, 3, 1, 23, 30))] is True
    assert v[(ELEC, QUARTER, at(2024, 3, 1, 23, 45))] is False  # ends at the 00:00 reading
    assert v[(ELEC, QUARTER, at(2024, 3, 2, 0, 30))] is False
    assert v[(ELEC, DAY, at(2024, 3, 2))] is False
    assert v[(ELEC, QUARTER, at(2023, 12, 31, 23, 30))] is True
    assert v[(GAS, QUARTER, at(2024, 3, 2, 0, 30))] is True
    assert v[(GAS, DAY, at(2024, 3, 2))] is True
    assert rows[(ENT, ELEC, QUARTER, at(2024, 3, 2, 0, 30))]["flags"] & q.UNVERIFIED
    # The enterprise total rests on the unverified item too.
    assert v[("0000", QUARTER, at(2024, 3, 2, 0, 30))] is False
    assert v[("0000", QUARTER, at(2024, 3, 1, 23, 30))] is True


async def test_flag_only_keeps_the_periods_valid(db: str) -> None:
    around = quarters(at(2024, 3, 1, 23), at(2024, 3, 2, 1))
    async with connected(db) as pool, pool.acquire() as conn:
        await setup(conn, [meter("E-1", ELEC)], around)
        await drain(aggregator(pool, unverified="flag"))
        elec = await flags(conn, ELEC)
        rows = await consumption(conn)
    assert elec[at(2024, 3, 2, 0, 30)] == q.UNVERIFIED
    row = rows[(ENT, ELEC, QUARTER, at(2024, 3, 2, 0, 30))]
    assert row["valid"] is True and row["flags"] & q.UNVERIFIED
    assert rows[(ENT, ELEC, DAY, at(2024, 3, 2))]["valid"] is True


async def test_a_later_verification_leaves_the_lapse_invalid(db: str) -> None:
    times = quarters(at(2024, 3, 1, 23), at(2024, 3, 3, 1))
    async with connected(db) as pool, pool.acquire() as conn:
        await setup(conn, [meter("E-1", ELEC)], times)
        agg = aggregator(pool)
        await drain(agg)
        assert (await flags(conn, ELEC))[at(2024, 3, 3, 0, 30)] == q.UNVERIFIED
        # Verified again on 2024-03-03: a new period; the lapse on 03-02 stays a lapse.
        await upsert_meters(conn, [meter("E-1", ELEC, lastAlignDate="2024-03-03", nextAlignDate="2025-03-02")],
                            "test")
        assert await conn.fetchval("SELECT count(*) FROM pending_recompute WHERE code = $1", ELEC) == 1
        await drain(agg)
        elec = await flags(conn, ELEC)
        rows = await consumption(conn)
    assert {t for t, f in elec.items() if f & q.UNVERIFIED} == {
        t for t in times if at(2024, 3, 2) <= t < at(2024, 3, 3)}
    assert rows[(ENT, ELEC, QUARTER, at(2024, 3, 2, 12))]["valid"] is False
    assert rows[(ENT, ELEC, DAY, at(2024, 3, 2))]["valid"] is False
    assert rows[(ENT, ELEC, QUARTER, at(2024, 3, 3, 0, 30))]["valid"] is True
    assert rows[(ENT, ELEC, QUARTER, at(2024, 3, 1, 23, 30))]["valid"] is True


async def test_an_unverified_instrument_flags_until_it_is_replaced(db: str) -> None:
    # GAS: an instrument never verified (alignState none) replaced at 12:00 by a verified one.
    times = quarters(at(2024, 2, 1, 11), at(2024, 2, 1, 13))
    old = meter("G-OLD", GAS, alignState="none", lastAlignDate=None, nextAlignDate=None)
    new = meter("G-NEW", GAS, replaces={"serNo": "G-OLD", "time": "2024-02-01T12:00:00+08:00",
                                        "oldFinal": 40.0, "newInitial": 40.0})
    async with connected(db) as pool, pool.acquire() as conn:
        await setup(conn, [old, new], times)
        await drain(aggregator(pool))
        gas = await flags(conn, GAS)
        elec = await flags(conn, ELEC)
    assert {t for t, f in gas.items() if f & q.UNVERIFIED} == {t for t in times if t < at(2024, 2, 1, 12)}
    assert not any(f & q.UNVERIFIED for f in elec.values())  # ELEC has no instrument


# ---- the pure parts -------------------------------------------------------------------

def test_what_an_instrument_judges() -> None:
    never, ever = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    assert _bad("none", 5, 50, None, None) == [(5, 50)]
    assert _bad("verified", never, ever, None, None) == []  # nothing recorded to judge by
    # Periods [10, 20) and [30, 40): not judged before 10, a lapse [20, 30), and after 40.
    assert _bad("verified", never, ever, [10, 30], [20, 40]) == [(20, 30), (40, ever)]
    assert _bad("calibrated", 25, 35, [10, 30], [20, 40]) == [(25, 30)]
    assert _bad("verified", 0, 100, [10, 15], [30, 20]) == [(30, 100)]  # overlapping periods
    assert _bad("verified", 50, 40, None, None) == []


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 50), st.integers(0, 50)), max_size=8),
       st.lists(st.tuples(st.integers(0, 3), st.integers(0, 60)), max_size=30))
def test_covered_is_membership_in_half_open_intervals(intervals: list[tuple[int, int, int]],
                                                      readings: list[tuple[int, int]]) -> None:
    ii = np.array([i for i, _, _ in intervals], np.int64)
    lo = np.array([min(a, b) for _, a, b in intervals], np.int64)
    hi = np.array([max(a, b) for _, a, b in intervals], np.int64)
    item = np.array([i for i, _ in readings], np.int64)
    ts = np.array([t for _, t in readings], np.int64)
    got = covered(item, ts, ii, lo, hi)
    want = [any(i == j and a <= t < b for j, a, b in zip(ii, lo, hi, strict=True)) for i, t in readings]
    assert got.tolist() == want


def test_setting_refuses_other_values() -> None:
    with pytest.raises(ValueError, match="unverified"):
        ProcessingSettings(unverified="maybe")  # type: ignore[arg-type]
    assert ProcessingSettings().unverified == "invalid"
