"""The processing rules (docs/processing.md) on small hand-worked cases (pure functions, no database).

Times are local Asia/Shanghai; ``Q(h, m)`` is the 15-minute period starting then on
2024-01-01 unless a test says otherwise.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ingest import quality as q
from processing.periods import DAY, MONTH, QUARTER, YEAR
from processing.pipeline import compute
from processing.segments import EVENT_RESET, EVENT_ROLLOVER, Readings
from tests.strategies import CALENDAR, ELEC, ENTERPRISE, GAS, at, item, readings, rows, run, table

D = (2024, 1, 1)


def t(hour: int, minute: int = 0, second: int = 0) -> int:
    return at(*D, hour, minute, second)


def quality_of(result, ts: int) -> int:
    r = result.readings
    return int(result.quality[np.flatnonzero(r.ts == ts)[0]])


# -- splitting consumption over periods ------------------------------------------------

def test_a_segment_crossing_a_boundary_is_split_in_proportion_to_time() -> None:
    items = table(item())
    res = rows(run(items, [(ELEC, t(0, 10), 100.0), (ELEC, t(0, 20), 130.0)]), items)
    # 30 kWh over 10 minutes, 5 of them on each side of 00:15.
    assert res[(ELEC, QUARTER, t(0, 0))].value == pytest.approx(15.0)
    assert res[(ELEC, QUARTER, t(0, 0))].coverage == pytest.approx(5 / 15)
    assert res[(ELEC, QUARTER, t(0, 15))].value == pytest.approx(15.0)
    assert res[(ELEC, QUARTER, t(0, 15))].coverage == pytest.approx(5 / 15)
    assert res[(ELEC, DAY, t(0))].value == pytest.approx(30.0)
    assert res[(ELEC, DAY, t(0))].coverage == pytest.approx(10 / 1440)
    assert res[(ELEC, MONTH, t(0))].value == pytest.approx(30.0)
    assert res[(ELEC, YEAR, t(0))].value == pytest.approx(30.0)


def test_a_reading_exactly_on_a_boundary_splits_nothing() -> None:
    items = table(item())
    res = rows(run(items, [(ELEC, t(0, 5), 0.0), (ELEC, t(0, 15), 20.0),
                           (ELEC, t(0, 25), 30.0)]), items)
    assert res[(ELEC, QUARTER, t(0, 0))].value == 20.0  # all of (00:05, 00:15)
    assert res[(ELEC, QUARTER, t(0, 0))].coverage == pytest.approx(10 / 15)
    assert res[(ELEC, QUARTER, t(0, 15))].value == 10.0  # all of (00:15, 00:25)
    assert res[(ELEC, QUARTER, t(0, 15))].coverage == pytest.approx(10 / 15)
    assert len([k for k in res if k[0] == ELEC and k[1] == QUARTER]) == 2


def test_multiplier_and_default_coefficient() -> None:
    items = table(item(multiplier=200.0))
    res = rows(run(items, [(ELEC, t(0, 0), 1000.00), (ELEC, t(0, 15), 1000.50)]), items)
    row = res[(ELEC, QUARTER, t(0))]
    assert row.value == pytest.approx(100.0)  # 0.5 x 200 kWh
    assert row.kgce == pytest.approx(12.29)  # x 0.1229 kgce/kWh
    assert row.coverage == 1.0 and row.valid


def test_periods_before_the_first_and_after_the_last_reading_have_no_rows() -> None:
    items = table(item())
    res = rows(run(items, [(ELEC, t(1, 0), 0.0), (ELEC, t(1, 15), 5.0)]), items)
    assert set(k for k in res if k[0] == ELEC and k[1] == QUARTER) == {(ELEC, QUARTER, t(1, 0))}


# -- registers going down --------------------------------------------------------------

def test_rollover_without_max_is_unwrapped() -> None:
    items = table(item(rollover=99999.0, multiplier=2.0))
    res = run(items, [(ELEC, t(0, 0), 99990.0), (ELEC, t(0, 10), 5.0)])
    row = rows(res, items)[(ELEC, QUARTER, t(0))]
    # 99999 - 99990 + 5 = 14 register units (under 1 % of 99999), times 2.
    assert row.value == pytest.approx(28.0)
    assert row.valid  # a rollover is explained
    assert quality_of(res, t(0, 10)) == q.ROLLOVER
    assert row.flags == q.ROLLOVER
    assert res.validated.event_kind.tolist() == [EVENT_ROLLOVER]


def test_rollover_must_be_plausible_within_max_per_hour() -> None:
    # max 60 kWh per hour: 10 minutes allow 10 kWh.
    items = table(item(rollover=9999.0, max=60.0))
    ok = run(items, [(ELEC, t(0, 0), 9995.0), (ELEC, t(0, 10), 3.0)])  # 7 kWh
    assert rows(ok, items)[(ELEC, QUARTER, t(0))].value == pytest.approx(7.0)
    assert quality_of(ok, t(0, 10)) == q.ROLLOVER
    too_much = run(items, [(ELEC, t(0, 0), 9990.0), (ELEC, t(0, 10), 9.0)])  # would be 18
    row = rows(too_much, items)[(ELEC, QUARTER, t(0))]
    assert quality_of(too_much, t(0, 10)) == q.RESET
    assert row.value == 0.0 and row.coverage == 0.0 and not row.valid


def test_a_decrease_without_rollover_is_a_reset_with_unknown_consumption() -> None:
    items = table(item())
    res = run(items, [(ELEC, t(0, 0), 500.0), (ELEC, t(0, 5), 510.0), (ELEC, t(0, 10), 20.0),
                      (ELEC, t(0, 15), 30.0)])
    row = rows(res, items)[(ELEC, QUARTER, t(0))]
    assert row.value == 20.0  # 10 before the reset, 10 after; never 20 - 510
    assert row.coverage == pytest.approx(10 / 15)
    assert not row.valid and row.flags & q.RESET
    assert quality_of(res, t(0, 10)) == q.RESET
    assert res.validated.event_kind.tolist() == [EVENT_RESET]
    assert res.readings.ts[res.validated.event_reading].tolist() == [t(0, 10)]


def test_a_large_wrap_is_a_reset_even_with_a_rollover_value() -> None:
    items = table(item(rollover=1000.0))
    res = run(items, [(ELEC, t(0, 0), 900.0), (ELEC, t(0, 10), 899.0)])  # wrap 999 > 1 %
    assert quality_of(res, t(0, 10)) == q.RESET
    assert rows(res, items)[(ELEC, QUARTER, t(0))].value == 0.0


# -- gaps ------------------------------------------------------------------------------

def test_a_gap_goes_whole_to_a_period_containing_it_and_to_none_that_cut_it() -> None:
    items = table(item())
    res = rows(run(items, [(ELEC, t(0, 10), 0.0), (ELEC, t(1, 20), 70.0),
                           (ELEC, t(1, 25), 75.0)]), items)
    # (00:10, 01:20) is 70 minutes: longer than max_gap (30 min), so a gap.  The
    # 15-minute periods it cuts measured nothing: they have no row at all.
    for m in (0, 15, 30, 45, 60):
        assert (ELEC, QUARTER, t(0) + m * 60_000_000) not in res
    last = res[(ELEC, QUARTER, t(1, 15))]
    assert last.value == 5.0 and last.coverage == pytest.approx(5 / 15) and last.valid
    day = res[(ELEC, DAY, t(0))]
    assert day.value == 75.0 and day.coverage == pytest.approx(75 / 1440) and day.valid


def test_a_gap_inside_one_quarter_hour_goes_to_it() -> None:
    items = table(item())
    res = rows(run(items, [(ELEC, t(0, 1), 0.0), (ELEC, t(0, 10), 9.0)], max_gap_s=120), items)
    row = res[(ELEC, QUARTER, t(0))]
    assert row.value == 9.0 and row.coverage == pytest.approx(9 / 15)


def test_a_gap_across_midnight_goes_to_the_month_not_the_days() -> None:
    items = table(item())
    res = rows(run(items, [(ELEC, at(2024, 3, 9, 23, 50), 0.0),
                           (ELEC, at(2024, 3, 10, 0, 50), 60.0)]), items)
    # The days it cuts measured nothing: no rows.
    assert (ELEC, DAY, at(2024, 3, 9)) not in res
    assert (ELEC, DAY, at(2024, 3, 10)) not in res
    month = res[(ELEC, MONTH, at(2024, 3))]
    assert month.value == 60.0 and month.coverage == pytest.approx(60 / (31 * 1440))
    assert res[(ELEC, YEAR, at(2024))].value == 60.0


def test_a_gap_across_a_month_goes_to_the_year_and_across_a_year_to_nobody() -> None:
    items = table(item())
    res = rows(run(items, [(ELEC, at(2024, 1, 31, 23, 50), 0.0),
                           (ELEC, at(2024, 2, 1, 0, 50), 60.0)]), items)
    assert (ELEC, MONTH, at(2024, 1)) not in res
    assert (ELEC, MONTH, at(2024, 2)) not in res
    assert res[(ELEC, YEAR, at(2024))].value == 60.0
    res = rows(run(items, [(ELEC, at(2023, 12, 31, 23, 50), 0.0),
                           (ELEC, at(2024, 1, 1, 0, 50), 60.0)]), items)
    # Nobody takes it and nothing else was measured: no year row either side.
    assert (ELEC, YEAR, at(2023)) not in res
    assert (ELEC, YEAR, at(2024)) not in res


# -- calendar periods -------------------------------------------------------------------

@pytest.mark.parametrize(("year", "month", "days"), [(2023, 2, 28), (2024, 2, 29), (2024, 4, 30),
                                                     (2024, 1, 31)])
def test_months_of_28_29_30_and_31_days(year: int, month: int, days: int) -> None:
    items = table(item())
    start = at(year, month, 1)
    # A reading every 15 minutes from 15 minutes before the month to 15 after; the
    # register advances 0.25 kWh each time: 1 kWh an hour, 24 a day.
    n = days * 96 + 3
    ts = start - 15 * 60_000_000 + np.arange(n, dtype=np.int64) * 15 * 60_000_000
    res = rows(run(items, [(ELEC, int(x), 0.25 * i) for i, x in enumerate(ts)]), items)
    m = res[(ELEC, MONTH, start)]
    assert m.value == pytest.approx(24.0 * days, rel=1e-12)
    assert m.coverage == 1.0 and m.valid
    day_rows = [k for k in res if k[:2] == (ELEC, DAY) and start <= k[2] < start + days * 86_400_000_000]
    assert len(day_rows) == days
    assert all(res[k].value == pytest.approx(24.0) and res[k].coverage == 1.0 for k in day_rows)
    # The month starts at local midnight of the 1st: 16:00 UTC the day before.
    assert start % 86_400_000_000 == 16 * 3_600_000_000


def test_a_leap_year_in_full() -> None:
    items = table(item(multiplier=2.0))
    start = at(2024)
    n = 366 * 48 + 3  # every 30 minutes, one before the year and one after
    ts = start - 30 * 60_000_000 + np.arange(n, dtype=np.int64) * 30 * 60_000_000
    res = rows(run(items, [(ELEC, int(x), 0.5 * i) for i, x in enumerate(ts)]), items)
    year = res[(ELEC, YEAR, start)]
    assert year.value == pytest.approx(366 * 48 * 0.5 * 2, rel=1e-12)  # 17568 kWh
    assert year.coverage == 1.0 and year.valid
    assert year.kgce == pytest.approx(17568 * 0.1229, rel=1e-12)
    months = [res[(ELEC, MONTH, at(2024, m))].value for m in range(1, 13)]
    assert months[1] == pytest.approx(29 * 48.0) and months[0] == pytest.approx(31 * 48.0)
    assert math.fsum(months) == pytest.approx(year.value, rel=1e-12)


# -- instant and interval items --------------------------------------------------------

def test_instant_items_are_time_weighted_averages() -> None:
    items = table(item("01-00-0000-023300-02", kind="instant", unit="kW", multiplier=2.0))
    code = "01-00-0000-023300-02"
    res = rows(run(items, [(code, t(0, 0), 10.0), (code, t(0, 10), 20.0), (code, t(0, 20), 20.0),
                           (code, t(0, 30), 5.0)]), items)
    # Scaled: 20, 40, 40, 10 kW.  00:00-00:15: (20+40)/2 x 10 min + 40 x 5 min = 500
    # kW.min over 15 minutes; 00:15-00:30: 40 x 5 + (40+10)/2 x 10 = 450 over 15.
    assert res[(code, QUARTER, t(0, 0))].value == pytest.approx(500 / 15)
    assert res[(code, QUARTER, t(0, 15))].value == pytest.approx(30.0)
    day = res[(code, DAY, t(0))]
    assert day.value == pytest.approx(950 / 30)  # an average, never a sum
    assert day.coverage == pytest.approx(30 / 1440)
    assert day.kgce == 0.0
    assert not any(k[0] == "0000" for k in res)  # instant items are not in the total


def test_interval_items_are_apportioned_like_measured_segments() -> None:
    code = "01-00-0000-023300-03"
    items = table(item(code, kind="interval", multiplier=10.0))
    res = run(items, [(code, t(0, 0), 5.0), (code, t(0, 10), 1.0), (code, t(0, 20), 0.6)])
    r = rows(res, items)
    # The first value's start is unknown; 10 (x10) over (00:00, 00:10); 6 over (00:10, 00:20).
    assert r[(code, QUARTER, t(0))].value == pytest.approx(10 + 3)
    assert r[(code, QUARTER, t(0))].coverage == 1.0
    assert r[(code, QUARTER, t(0, 15))].value == pytest.approx(3.0)
    neg = run(items, [(code, t(0, 0), 5.0), (code, t(0, 10), -1.0)])
    assert quality_of(neg, t(0, 10)) == q.OUT_OF_RANGE
    assert rows(neg, items)[(code, QUARTER, t(0))].value == 0.0


# -- validation flags and valid ----------------------------------------------------------

def test_a_spike_is_flagged_and_still_counted() -> None:
    items = table(item(max=60.0))
    res = run(items, [(ELEC, t(0, 0), 0.0), (ELEC, t(0, 10), 20.0), (ELEC, t(0, 20), 25.0)])
    assert quality_of(res, t(0, 10)) == q.SPIKE  # 120 kWh/h > 60
    assert quality_of(res, t(0, 20)) == 0  # 30 kWh/h
    r = rows(res, items)
    assert r[(ELEC, QUARTER, t(0))].value == pytest.approx(22.5)
    assert not r[(ELEC, QUARTER, t(0))].valid
    assert r[(ELEC, QUARTER, t(0, 15))].valid  # rests on (00:10, 00:20) only


def test_consumption_below_min_per_hour_is_out_of_range() -> None:
    items = table(item(min=6.0))
    res = run(items, [(ELEC, t(0, 0), 0.0), (ELEC, t(0, 10), 0.5)])
    assert quality_of(res, t(0, 10)) == q.OUT_OF_RANGE  # 3 kWh/h


def test_instant_values_outside_their_range_taint_both_sides() -> None:
    code = "01-00-0000-023300-02"
    items = table(item(code, kind="instant", max=100.0))
    res = run(items, [(code, t(0, 0), 50.0), (code, t(0, 14), 150.0), (code, t(0, 16), 50.0),
                      (code, t(0, 40), 50.0)])
    assert quality_of(res, t(0, 14)) == q.OUT_OF_RANGE
    r = rows(res, items)
    assert not r[(code, QUARTER, t(0))].valid and not r[(code, QUARTER, t(0, 15))].valid
    assert r[(code, QUARTER, t(0, 30))].valid


def test_non_finite_values_are_skipped_and_flagged() -> None:
    items = table(item())
    res = run(items, [(ELEC, t(0, 0), 0.0), (ELEC, t(0, 5), float("nan")), (ELEC, t(0, 10), 10.0)])
    assert quality_of(res, t(0, 5)) == q.NON_FINITE
    row = rows(res, items)[(ELEC, QUARTER, t(0))]
    assert row.value == 10.0 and row.coverage == pytest.approx(10 / 15) and not row.valid


def test_early_readings_are_suspect_and_late_ones_are_not() -> None:
    items = table(item())
    late = rows(run(items, [(ELEC, t(0, 0), 0.0, q.LATE), (ELEC, t(0, 10), 5.0, q.LATE)]), items)
    assert late[(ELEC, QUARTER, t(0))].valid and late[(ELEC, QUARTER, t(0))].flags == q.LATE
    early = rows(run(items, [(ELEC, t(0, 0), 0.0), (ELEC, t(0, 10), 5.0, q.EARLY)]), items)
    assert not early[(ELEC, QUARTER, t(0))].valid


def test_a_stuck_register_is_flagged_while_others_move() -> None:
    other = "01-00-0000-023300-09"
    items = table(item(), item(other))
    quarter = 15 * 60_000_000
    times = [t(0) + i * quarter for i in range(29)]  # 00:00 to 07:00
    stuck = [(ELEC, x, 42.0) for x in times]
    moving = [(other, x, float(i)) for i, x in enumerate(times)]
    res = run(items, stuck + moving, stuck_after_s=6 * 3600)
    flagged = res.readings.ts[(res.quality & q.STUCK) > 0]
    assert flagged.tolist() == times[24:]  # 06:00 onwards: unchanged for 6 hours
    r = rows(res, items)
    assert not r[(ELEC, QUARTER, t(6))].valid and r[(ELEC, QUARTER, t(5, 30))].valid
    # The whole plant idle: nothing is stuck.
    idle = run(items, stuck + [(other, x, 7.0) for x in times], stuck_after_s=6 * 3600)
    assert not np.any(idle.quality & q.STUCK)


def test_the_last_copy_of_a_repeated_timestamp_wins() -> None:
    items = table(item())
    res = rows(run(items, [(ELEC, t(0, 0), 0.0), (ELEC, t(0, 10), 99.0), (ELEC, t(0, 10), 10.0)]),
               items)
    assert res[(ELEC, QUARTER, t(0))].value == 10.0


# -- enterprise totals -------------------------------------------------------------------

def test_totals_add_the_kgce_of_whole_plant_consumption_items_only() -> None:
    sub, power, water = "01-01-0101-023300-01", "00-00-0000-023300-02", "00-00-0000-014000-01"
    items = table(
        item(ELEC),  # electricity, 0.1229
        item(GAS, energy="1500", unit="m3", coefficient=1.3),  # override
        item(sub, scope=2),  # a sub-meter: counted in its whole-plant meter already
        item(power, kind="instant", unit="kW"),
        item(water, energy="4000", unit="t"),  # no coefficient known
    )
    data = [(ELEC, t(0, 0), 0.0), (ELEC, t(0, 15), 10.0),
            (GAS, t(0, 5), 0.0), (GAS, t(0, 15), 2.0),
            (sub, t(0, 0), 0.0), (sub, t(0, 15), 5.0),
            (power, t(0, 0), 100.0), (power, t(0, 15), 100.0),
            (water, t(0, 0), 0.0), (water, t(0, 15), 7.0)]
    r = rows(run(items, data), items)
    total = r[("0000", QUARTER, t(0))]
    assert total.value == pytest.approx(10 * 0.1229 + 2 * 1.3)
    assert total.kgce == total.value
    assert total.coverage == pytest.approx(10 / 15)  # the gas meter's
    assert total.valid
    assert r[(sub, QUARTER, t(0))].kgce == pytest.approx(5 * 0.1229)
    assert r[(water, QUARTER, t(0))].kgce == 0.0
    spiky = table(item(ELEC), item(GAS, energy="1500", max=1.0))
    r = rows(run(spiky, data[:4]), spiky)
    assert not r[("0000", QUARTER, t(0))].valid  # the gas spike (12 m3/h > 1)
    assert r[("0000", QUARTER, t(0))].value == pytest.approx(10 * 0.1229 + 2 * 1.2143)


def test_totals_are_per_enterprise() -> None:
    other = "91110000100000000A"
    items = table(item(), item(enterprise=other))
    r1 = readings(items, [(ELEC, t(0, 0), 0.0), (ELEC, t(0, 15), 10.0)])
    r2 = readings(items, [(ELEC, t(0, 0), 0.0), (ELEC, t(0, 15), 20.0)], enterprise=other)
    both = Readings.from_unsorted(np.r_[r1.item, r2.item], np.r_[r1.ts, r2.ts],
                                  np.r_[r1.value, r2.value])
    res = compute(both, items, CALENDAR)
    c = res.consumption
    tot = {(items.enterprise[i], int(s)): float(v)
           for i, s, v, tier in zip(c.item, c.start, c.value, c.tier, strict=True)
           if items.code[i] == "0000" and tier == QUARTER}
    assert tot == {(ENTERPRISE, t(0)): pytest.approx(1.229), (other, t(0)): pytest.approx(2.458)}


def test_nothing_or_a_single_reading_gives_no_periods() -> None:
    items = table(item())
    assert len(run(items, []).consumption) == 0
    assert len(run(items, [(ELEC, t(0, 5), 1.0)]).consumption) == 0
