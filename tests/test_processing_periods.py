"""Period boundaries in local time, and the windows the aggregator loads."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np

from processing.periods import DAY, MONTH, QUARTER, YEAR, Calendar
from processing.windows import inside, link_groups, merge_intervals, quarter_windows
from tests.strategies import at

H = 3_600_000_000


def local(cal: Calendar, us: np.ndarray) -> list[str]:
    tz = cal.zone
    return [datetime.fromtimestamp(int(x) // 1_000_000, tz).strftime("%Y-%m-%d %H:%M") for x in us]


def test_boundaries_are_local_midnights_and_quarter_hours() -> None:
    cal = Calendar(ZoneInfo("Asia/Shanghai"))
    lo = at(2024, 2, 28, 23, 50)
    assert local(cal, cal.bounds(QUARTER, lo, lo + 30 * 60_000_000)) == [
        "2024-02-28 23:45", "2024-02-29 00:00", "2024-02-29 00:15", "2024-02-29 00:30"]
    assert local(cal, cal.bounds(DAY, lo, lo + H)) == [
        "2024-02-28 00:00", "2024-02-29 00:00", "2024-03-01 00:00"]
    assert local(cal, cal.bounds(MONTH, lo, lo)) == ["2024-02-01 00:00", "2024-03-01 00:00"]
    assert local(cal, cal.bounds(YEAR, lo, lo)) == ["2024-01-01 00:00", "2025-01-01 00:00"]
    # Shanghai midnight is 16:00 UTC.
    assert cal.bounds(DAY, lo, lo)[0] % (24 * H) == 16 * H


def test_a_reading_on_a_boundary_starts_the_next_period() -> None:
    cal = Calendar(ZoneInfo("Asia/Shanghai"))
    t = np.array([at(2024, 3, 1), at(2024, 3, 1) - 1], np.int64)
    assert local(cal, cal.period_starts(DAY, t)) == ["2024-03-01 00:00", "2024-02-29 00:00"]
    assert local(cal, cal.period_starts(MONTH, t)) == ["2024-03-01 00:00", "2024-02-01 00:00"]


def test_daylight_saving_days_have_92_and_100_quarter_hours() -> None:
    tz = ZoneInfo("Europe/Berlin")
    cal = Calendar(tz)
    for day, quarters in (((2024, 3, 31), 92), ((2024, 10, 27), 100), ((2024, 6, 1), 96)):
        start = int(datetime(*day, tzinfo=tz).timestamp()) * 1_000_000
        days = cal.bounds(DAY, start, start)
        q = cal.bounds(QUARTER, int(days[0]), int(days[1]))
        assert len(q) - 1 == quarters
        assert np.all(np.diff(q) == 900_000_000)


def test_merge_intervals_joins_overlapping_and_touching_ones_per_item() -> None:
    item = np.array([1, 0, 0, 1, 0, 2])
    lo = np.array([5, 0, 3, 1, 10, 0])
    hi = np.array([6, 2, 9, 5, 12, 0])
    i, a, b = merge_intervals(item, lo, hi)
    assert list(zip(i.tolist(), a.tolist(), b.tolist(), strict=True)) == [
        (0, 0, 2), (0, 3, 9), (0, 10, 12), (1, 1, 6), (2, 0, 0)]


def test_quarter_windows_widen_to_boundaries() -> None:
    cal = Calendar(ZoneInfo("Asia/Shanghai"))
    qb = cal.bounds(QUARTER, at(2024, 1, 1), at(2024, 1, 2))
    ws, we = quarter_windows(qb, np.array([at(2024, 1, 1, 0, 7), at(2024, 1, 1, 0, 15)]),
                             np.array([at(2024, 1, 1, 0, 20), at(2024, 1, 1, 0, 30)]))
    assert ws.tolist() == [at(2024, 1, 1, 0, 0), at(2024, 1, 1, 0, 15)]
    assert we.tolist() == [at(2024, 1, 1, 0, 30), at(2024, 1, 1, 0, 30)]


def test_loaded_windows_are_linked_only_where_one_window_holds_both_readings() -> None:
    # Item 0: windows 0 and 1 share the reading at 30; window 2 is separate.
    item = np.zeros(8, np.int64)
    ts = np.array([10, 20, 30, 30, 40, 70, 80, 90], np.int64)
    group = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    r = link_groups(item, ts, ts.astype(float), np.zeros(8, np.int32), group)
    assert r.ts.tolist() == [10, 20, 30, 40, 70, 80, 90]
    assert r.linked.tolist() == [False, True, True, True, False, True, True]


def test_inside_keeps_periods_wholly_inside_a_window() -> None:
    s = 1_000_000
    w_item, w_lo, w_hi = np.array([0, 1]), np.array([900 * s, 0]), np.array([2700 * s, 900 * s])
    item = np.array([0, 0, 0, 1, 1])
    start = np.array([0, 900, 1800, 0, 900]) * s
    end = start + 900 * s
    assert inside(item, start, end, w_item, w_lo, w_hi).tolist() == [False, True, True, True, False]
