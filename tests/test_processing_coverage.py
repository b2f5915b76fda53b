"""Coverage at the edges of a series, on the real database: a whole-plant meter that goes
silent, a reading far out of line, a long outage, a period that loses what it measured.
Every expected figure is computed by hand in the comments."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry

from ingest import quality as q
from processing.periods import DAY, MONTH, QUARTER, YEAR
from tests.strategies import ELEC, ENTERPRISE, GAS, at, item
from tests.test_processing_aggregator import (
    add_items,
    aggregator,
    connected,
    consumption,
    drain,
    store,
)

pytestmark = pytest.mark.services

TOTAL = "0000"
MIN = 60_000_000
ELEC_KGCE = 0.1229  # kgce per kWh
GAS_KGCE = 1.2143  # kgce per m3 of natural gas (the default for energy 1500)


def t(hour: int, minute: int = 0) -> int:
    return at(2024, 3, 1, hour, minute)


def every_5_min(code: str, start: int, end: int, per_min: float = 1.0) -> list[tuple[str, int, float]]:
    """Register readings every 5 minutes in [start, end], growing by ``per_min`` a minute."""
    return [(code, ts, per_min * (ts - start) / MIN) for ts in range(start, end + 1, 5 * MIN)]


async def test_a_silent_whole_plant_meter_makes_the_totals_incomplete_until_it_reports(db: str) -> None:
    async with connected(db) as pool:
        async with pool.acquire() as conn:
            await add_items(conn, [item(ELEC), item(GAS, energy="1500", unit="m3")])
            # Electricity 1 kWh a minute 00:00-02:00; gas 1 m3 a minute, silent after 01:00.
            await store(conn, every_5_min(ELEC, t(0), t(2)) + every_5_min(GAS, t(0), t(1)))
            agg = aggregator(pool)
            await drain(agg)
            rows = await consumption(conn)
            e = ENTERPRISE
            assert rows[(e, GAS, QUARTER, t(0))]["kgce"] == pytest.approx(15 * GAS_KGCE)
            both = 15 * ELEC_KGCE + 15 * GAS_KGCE
            for m in (0, 15, 30, 45):
                total = rows[(e, TOTAL, QUARTER, t(0) + m * MIN)]
                assert total["value"] == pytest.approx(both)
                assert (total["coverage"], total["valid"]) == (1.0, True)
            # After 01:00 the gas meter measured nothing: its 15-minute periods have no
            # row, and the totals there hold the electricity alone, incomplete, not valid.
            for m in (60, 75, 90, 105):
                assert (e, GAS, QUARTER, t(0) + m * MIN) not in rows
                total = rows[(e, TOTAL, QUARTER, t(0) + m * MIN)]
                assert total["value"] == pytest.approx(15 * ELEC_KGCE)
                assert (total["coverage"], total["valid"]) == (0.0, False)
            # The day: electricity 120 of 1440 minutes, gas 60: the smaller.
            day = rows[(e, TOTAL, DAY, at(2024, 3, 1))]
            assert day["coverage"] == pytest.approx(60 / 1440) and day["valid"]
            before = {m: rows[(e, TOTAL, QUARTER, t(0) + m * MIN)]["revision"] for m in (60, 75, 90, 105)}

            # The gas readings of 01:05-02:00 arrive late: complete again.
            await store(conn, [r for r in every_5_min(GAS, t(0), t(2)) if r[1] > t(1)])
            await drain(agg)
            rows = await consumption(conn)
        for m in (60, 75, 90, 105):
            total = rows[(e, TOTAL, QUARTER, t(0) + m * MIN)]
            assert total["value"] == pytest.approx(both)
            assert (total["coverage"], total["valid"]) == (1.0, True)
            assert total["revision"] > before[m]
        day = rows[(e, TOTAL, DAY, at(2024, 3, 1))]
        assert day["coverage"] == pytest.approx(120 / 1440) and day["valid"]


async def test_a_reading_from_2000_beside_a_current_series_adds_no_rows_and_is_flagged(db: str) -> None:
    async with connected(db) as pool:
        async with pool.acquire() as conn:
            await add_items(conn, [item(ELEC)])
            await store(conn, [(c, ts, v + 100.0) for c, ts, v in every_5_min(ELEC, t(0), t(1))])
            registry = CollectorRegistry()
            agg = aggregator(pool, registry)
            await drain(agg)
            before = await consumption(conn)
            # A gateway's clock error: one reading dated 2000-01-01 arrives after them.
            await store(conn, [(ELEC, at(2000), 5.0)])
            await drain(agg)
            after = await consumption(conn)
            flags = await conn.fetchval(
                "SELECT quality FROM readings WHERE ts = timestamptz '2000-01-01 00:00+08'")
        # The segment from 2000 to 2024 is a gap across New Year: no period takes it,
        # and every period it cuts measured nothing, so it costs no row at all; no row
        # that was there moves (nothing for the uplink to send).
        assert set(after) == set(before)
        assert all(after[k]["revision"] == before[k]["revision"] for k in before)
        assert flags & q.OUT_OF_LINE
        assert registry.get_sample_value("nhjc_readings_flagged_total",
                                         {"flag": "out_of_line"}) == 1


async def test_the_15_minute_rows_inside_a_two_month_outage_are_not_written(db: str) -> None:
    async with connected(db) as pool:
        async with pool.acquire() as conn:
            await add_items(conn, [item(ELEC)])
            first = every_5_min(ELEC, t(0), t(1))
            # Back on 1 May at 00:00, the register 1000 kWh further on.
            back = [(c, ts - t(0) + at(2024, 5, 1), v + 1060.0) for c, ts, v in first]
            await store(conn, first + back)
            await drain(aggregator(pool))
            rows = await consumption(conn)
            n = await conn.fetchval("SELECT count(*) FROM consumption WHERE stat_type = 0")
        e = ENTERPRISE
        # Four measured quarters on each side, and not one row between.
        assert n == 8 * 2  # the item's and the total's
        quarters = sorted(k[3] for k in rows if k[1] == ELEC and k[2] == QUARTER)
        assert quarters == [t(0) + m * MIN for m in (0, 15, 30, 45)] + [
            at(2024, 5, 1, 0, m) for m in (0, 15, 30, 45)]
        # The days it cuts have no rows; April, inside it, neither.
        assert {k[3] for k in rows if k[1] == ELEC and k[2] == DAY} == {at(2024, 3, 1), at(2024, 5, 1)}
        assert (e, ELEC, MONTH, at(2024, 4)) not in rows
        # The year holds it whole: 60 + 1000 + 60 kWh, known for all of it.
        year = rows[(e, ELEC, YEAR, at(2024))]
        assert year["value"] == pytest.approx(1120.0)
        assert year["coverage"] == pytest.approx((at(2024, 5, 1, 1) - t(0)) / (at(2025) - at(2024)))


async def test_a_period_that_loses_what_it_measured_is_withdrawn_with_a_new_revision(db: str) -> None:
    async with connected(db) as pool:
        async with pool.acquire() as conn:
            await add_items(conn, [item(ELEC)])
            await store(conn, [(ELEC, t(0), 100.0), (ELEC, t(0, 20), 120.0)])
            agg = aggregator(pool)
            await drain(agg)
            before = await consumption(conn)
            e = ENTERPRISE
            assert before[(e, ELEC, QUARTER, t(0))]["coverage"] == 1.0
            # The second value is corrected to nothing usable: no segment is left.
            await store(conn, [(ELEC, t(0, 20), math.nan)])
            await drain(agg)
            after = await consumption(conn)
        # Every row stays, withdrawn: nothing measured, not valid, a new revision.
        assert set(after) == set(before)
        for k, row in after.items():
            assert (row["value"], row["kgce"], row["coverage"], row["valid"]) == (0, 0, 0, False), k
            assert row["revision"] > before[k]["revision"]
