"""Recorded meter replacements on small hand-worked cases (pure functions, no database).

Times are local Asia/Shanghai on 2024-01-01; the 15-minute periods are named by their
start.  The rule: a replacement at T between readings a (old meter) and b (new meter)
counts (old_final - a) + (b - new_initial), times the multiplier, the old part over
[a, T] and the new part over [T, b].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest import quality as q
from processing.itemtable import ItemTable
from processing.periods import DAY, QUARTER, YEAR
from processing.pipeline import Result, compute
from processing.replacing import REASONS, Replacements
from processing.segments import (
    EVENT_REPLACEMENT,
    EVENT_REPLACEMENT_REFUSED,
    EVENT_RESET,
    GAP,
    UNKNOWN,
)
from tests.strategies import (
    CALENDAR,
    ELEC,
    ENTERPRISE,
    Replaced,
    Row,
    at,
    item,
    replaced_meters,
    rows,
    run,
    table,
)


def t(hour: int, minute: int = 0, second: int = 0) -> int:
    return at(2024, 1, 1, hour, minute, second)


def recorded(items: ItemTable, data: Sequence[tuple[str, int, float, float]]) -> Replacements:
    """From (code, time, old_final, new_initial) tuples."""
    return Replacements.of(items.lookup([ENTERPRISE] * len(data), [d[0] for d in data]),
                           np.array([d[1] for d in data], np.int64),
                           np.array([d[2] for d in data]), np.array([d[3] for d in data]))


def events(res: Result) -> list[tuple[int, int, str]]:
    """(reading ts, event kind, reason) of every meter event."""
    v = res.validated
    return [(int(res.readings.ts[r]), int(k), REASONS[int(w)])
            for r, k, w in zip(v.event_reading, v.event_kind, v.event_reason, strict=True)]


SIMPLE = [(ELEC, t(0, 0), 100.0), (ELEC, t(0, 5), 110.0), (ELEC, t(0, 10), 9.0),
          (ELEC, t(0, 14), 15.0)]


def test_a_recorded_replacement_turns_the_reset_into_known_consumption() -> None:
    items = table(item(multiplier=2.0))
    res = run(items, SIMPLE, replacements=recorded(items, [(ELEC, t(0, 7), 114.0, 5.0)]))
    row = rows(res, items)[(ELEC, QUARTER, t(0))]
    # 10 before, (114 - 110) + (9 - 5) = 8 across the replacement, 6 after; times 2.
    assert row.value == pytest.approx(2 * (10 + 8 + 6))
    assert (row.valid, row.flags) == (True, 0)
    assert row.coverage == pytest.approx(14 / 15)
    assert events(res) == [(t(0, 10), EVENT_REPLACEMENT, "")]
    assert not np.any(res.quality & q.RESET)


def test_without_a_record_the_jump_stays_an_unknown_reset() -> None:
    items = table(item(multiplier=2.0))
    res = run(items, SIMPLE)
    row = rows(res, items)[(ELEC, QUARTER, t(0))]
    assert row.value == pytest.approx(2 * (10 + 6))
    assert (row.valid, row.flags) == (False, q.RESET)
    assert row.coverage == pytest.approx(9 / 15)
    assert events(res) == [(t(0, 10), EVENT_RESET, "")]


def test_a_record_elsewhere_in_time_changes_nothing() -> None:
    items = table(item(multiplier=2.0))
    plain = rows(run(items, SIMPLE), items)
    # At the first reading (belongs to the segment before it: none), and after the last.
    far = recorded(items, [(ELEC, t(0, 0), 1.0, 2.0), (ELEC, t(0, 20), 1.0, 2.0)])
    assert rows(run(items, SIMPLE, replacements=far), items) == plain


def test_across_a_period_boundary_each_part_lands_in_its_own_periods() -> None:
    items = table(item())
    data = [(ELEC, t(0, 0), 100.0), (ELEC, t(0, 10), 110.0), (ELEC, t(0, 25), 3.0),
            (ELEC, t(0, 30), 8.0)]
    # Replaced at 00:17: old part 116 - 110 = 6 over 00:10-00:17 (5 of its 7 minutes
    # before 00:15), new part 3 - 0 = 3 over 00:17-00:25, all after 00:15.
    res = rows(run(items, data, replacements=recorded(items, [(ELEC, t(0, 17), 116.0, 0.0)])),
               items)
    assert res[(ELEC, QUARTER, t(0, 0))].value == pytest.approx(10 + 6 * 5 / 7)
    assert res[(ELEC, QUARTER, t(0, 15))].value == pytest.approx(6 * 2 / 7 + 3 + 5)
    assert res[(ELEC, QUARTER, t(0, 0))].coverage == 1.0
    assert res[(ELEC, QUARTER, t(0, 15))].coverage == 1.0
    assert res[(ELEC, DAY, t(0))].value == pytest.approx(10 + 6 + 3 + 5)
    # Replaced exactly at 00:15: the old part all before, the new part all after.
    res = rows(run(items, data, replacements=recorded(items, [(ELEC, t(0, 15), 116.0, 0.0)])),
               items)
    assert res[(ELEC, QUARTER, t(0, 0))].value == pytest.approx(10 + 6)
    assert res[(ELEC, QUARTER, t(0, 15))].value == pytest.approx(3 + 5)


def test_a_reading_exactly_at_the_replacement_time_is_the_new_meters() -> None:
    items = table(item())
    data = [(ELEC, t(0, 0), 100.0), (ELEC, t(0, 5), 110.0), (ELEC, t(0, 10), 7.0),
            (ELEC, t(0, 20), 12.0)]
    res = run(items, data, replacements=recorded(items, [(ELEC, t(0, 10), 114.0, 5.0)]))
    r = rows(res, items)
    # (114 - 110) + (7 - 5) = 6, all over 00:05-00:10 (no time left to the new meter).
    assert r[(ELEC, QUARTER, t(0, 0))].value == pytest.approx(10 + 6 + 5 * 5 / 10)
    assert r[(ELEC, QUARTER, t(0, 15))].value == pytest.approx(5 * 5 / 10)
    assert events(res) == [(t(0, 10), EVENT_REPLACEMENT, "")]


def test_a_new_meter_starting_higher_is_counted_by_the_record_not_the_jump() -> None:
    items = table(item())
    data = [(ELEC, t(0, 0), 100.0), (ELEC, t(0, 5), 110.0), (ELEC, t(0, 10), 505.0)]
    assert rows(run(items, data), items)[(ELEC, QUARTER, t(0))].value == pytest.approx(405.0)
    res = rows(run(items, data, replacements=recorded(items, [(ELEC, t(0, 7), 112.0, 500.0)])),
               items)
    assert res[(ELEC, QUARTER, t(0))].value == pytest.approx(10 + 2 + 5)


def test_a_long_old_part_is_a_gap_and_goes_to_the_day_whole() -> None:
    items = table(item())
    data = [(ELEC, t(0, 0), 100.0), (ELEC, t(2, 10), 4.0)]
    res = rows(run(items, data, replacements=recorded(items, [(ELEC, t(2, 0), 130.0, 0.0)])),
               items)
    # Old part 30 over two hours (longer than max_gap: when, is not known), new part 4
    # over the ten minutes after 02:00.
    assert res[(ELEC, QUARTER, t(2, 0))].value == pytest.approx(4.0)
    assert res[(ELEC, QUARTER, t(2, 0))].coverage == pytest.approx(10 / 15)
    assert (ELEC, QUARTER, t(1, 45)) not in res
    assert res[(ELEC, DAY, t(0))].value == pytest.approx(34.0)


@pytest.mark.parametrize(("record", "reason"), [
    ((ELEC, t(0, 7), 108.0, 5.0), "old_below"),  # old final below the last old reading
    ((ELEC, t(0, 7), 114.0, 10.0), "new_below"),  # first new reading below the initial value
])
def test_a_record_the_readings_contradict_is_refused(record: tuple[str, int, float, float],
                                                     reason: str) -> None:
    items = table(item(multiplier=2.0))
    res = run(items, SIMPLE, replacements=recorded(items, [record]))
    row = rows(res, items)[(ELEC, QUARTER, t(0))]
    # As without a record: no energy across the jump, the period not valid.
    assert row.value == pytest.approx(2 * (10 + 6))
    assert (row.valid, row.flags) == (False, q.RESET)
    assert events(res) == [(t(0, 10), EVENT_REPLACEMENT_REFUSED, reason)]


def test_a_wrap_on_either_side_is_refused_not_unwrapped() -> None:
    items = table(item(rollover=1000.0))
    data = [(ELEC, t(0, 0), 990.0), (ELEC, t(0, 5), 995.0), (ELEC, t(0, 10), 9.0)]
    old_wrap = run(items, data, replacements=recorded(items, [(ELEC, t(0, 7), 2.0, 5.0)]))
    assert events(old_wrap) == [(t(0, 10), EVENT_REPLACEMENT_REFUSED, "old_rollover")]
    new_wrap = run(items, data, replacements=recorded(items, [(ELEC, t(0, 7), 996.0, 999.5)]))
    assert events(new_wrap) == [(t(0, 10), EVENT_REPLACEMENT_REFUSED, "new_rollover")]
    for res in (old_wrap, new_wrap):
        row = rows(res, items)[(ELEC, QUARTER, t(0))]
        assert (row.value, row.valid, row.flags) == (5.0, False, q.RESET)


def test_two_records_in_one_segment_are_refused() -> None:
    items = table(item())
    res = run(items, SIMPLE, replacements=recorded(
        items, [(ELEC, t(0, 6), 112.0, 0.0), (ELEC, t(0, 8), 3.0, 5.0)]))
    assert events(res) == [(t(0, 10), EVENT_REPLACEMENT_REFUSED, "several")]
    assert rows(res, items)[(ELEC, QUARTER, t(0))].flags == q.RESET


def test_a_record_on_an_interval_item_changes_nothing() -> None:
    items = table(item(kind="interval"))
    data = [(ELEC, t(0, 0), 1.0), (ELEC, t(0, 5), 2.0), (ELEC, t(0, 10), 3.0)]
    res = run(items, data, replacements=recorded(items, [(ELEC, t(0, 7), 5.0, 0.0)]))
    assert rows(res, items) == rows(run(items, data), items)
    assert events(res) == []


# -- properties ---------------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(replaced_meters())
def test_a_replacement_never_creates_or_loses_energy(r: Replaced) -> None:
    res = compute(r.series.as_readings(), r.series.items, CALENDAR, replacements=r.replacements)
    seg = res.validated.segments
    assert not np.any(seg.state == UNKNOWN)
    assert set(res.validated.event_kind.tolist()) <= {EVENT_REPLACEMENT}
    assert len(res.validated.event_kind) == len(r.records)
    # Every segment's consumption, and the year's value (which holds every measured part
    # and every gap), are exactly what the meters counted.
    assert seg.amount.sum() == pytest.approx(r.energy, rel=1e-9, abs=1e-9)
    c = res.consumption
    years = c.take((c.tier == YEAR) & (c.item == 0))
    assert years.value.sum() == pytest.approx(r.energy, rel=1e-9, abs=1e-9)
    assert np.all(c.value >= 0)
    # The 15-minute periods hold every measured part: their sum plus the gaps' is the total.
    quarters = c.take((c.tier == QUARTER) & (c.item == 0))
    gaps = seg.amount[seg.state == GAP].sum()
    assert quarters.value.sum() + gaps == pytest.approx(r.energy, rel=1e-9, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(replaced_meters(), st.data())
def test_a_contradicted_record_counts_nothing_across_its_jump(r: Replaced, data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(r.records) - 1))
    when, old_final, new_initial = r.records[i]
    s = r.series
    b = int(np.searchsorted(s.ts, when, "left"))
    a_val, b_val = float(s.value[b - 1]), float(s.value[b])
    # Make the record contradict the readings on one side.
    if data.draw(st.booleans()):
        bad = (when, a_val - 1.0, new_initial)
    else:
        bad = (when, old_final, b_val + 1.0)
    records = [bad if j == i else x for j, x in enumerate(r.records)]
    rp = Replacements.of(np.zeros(len(records), np.int64), np.array([x[0] for x in records]),
                         np.array([x[1] for x in records]), np.array([x[2] for x in records]))
    res = compute(s.as_readings(), s.items, CALENDAR, replacements=rp)
    lost = s.items.multiplier[0] * ((old_final - a_val) + (b_val - new_initial))
    assert res.validated.segments.amount.sum() == pytest.approx(r.energy - lost, rel=1e-9, abs=1e-9)
    refused = res.validated.event_kind == EVENT_REPLACEMENT_REFUSED
    assert res.readings.ts[res.validated.event_reading[refused]].tolist() == [s.ts[b]]
    assert res.quality[b] & q.RESET


def test_the_worked_example_of_the_metrology_docs() -> None:
    # docs/metrology.md: multiplier 200, readings 10:00 (old, 4520.30) and 10:30 (new,
    # 1.35), replaced at 10:12 with old final 4520.42 and new initial 0.
    items = table(item(multiplier=200.0))
    data = [(ELEC, t(9, 45), 4520.10), (ELEC, t(10, 0), 4520.30), (ELEC, t(10, 30), 1.35)]
    res = rows(run(items, data, replacements=recorded(items, [(ELEC, t(10, 12), 4520.42, 0.0)])),
               items)
    assert res[(ELEC, QUARTER, t(10, 0))].value == pytest.approx(24 + 45)
    assert res[(ELEC, QUARTER, t(10, 15))].value == pytest.approx(225)
    assert res[(ELEC, QUARTER, t(10, 15))].valid
    plain = rows(run(items, data), items)
    # Without the record nothing is known from 10:00 to 10:30: a reset.
    assert plain[(ELEC, QUARTER, t(10, 15))] == Row(0.0, 0.0, 0.0, False, q.RESET)
    assert plain[(ELEC, QUARTER, t(10, 0))].flags == q.RESET
