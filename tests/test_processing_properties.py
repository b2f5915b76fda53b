"""Properties of the pure computation, checked on generated readings (Hypothesis)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from processing.itemtable import INSTANT, TOTAL
from processing.periods import DAY, MONTH, QUARTER, YEAR
from processing.periodvalues import Consumption
from processing.pipeline import compute
from processing.segments import Readings
from tests.strategies import (
    CALENDAR,
    Series,
    at,
    full_year_series,
    series,
    starting_and_stopping,
)


def _tier(c: Consumption, tier: int) -> Consumption:
    return c.take(c.tier == tier)


def _children_sum(child: Consumption, parent: Consumption) -> np.ndarray:
    """Sum of child values per parent row (one item)."""
    p = np.searchsorted(parent.start, child.start, "right") - 1
    return np.bincount(p, weights=child.value, minlength=len(parent))


@settings(max_examples=12, deadline=None)
@given(full_year_series())
def test_a_fully_measured_year_adds_up_tier_by_tier(s: Series) -> None:
    # Each tier straight from the segments (not composed), so the sums are a real check.
    c = compute(s.as_readings(), s.items, CALENDAR, hierarchical=False).consumption
    c = c.take((c.item == 0) & (c.start >= at(2024)) & (c.end <= at(2025)))
    quarters, days, months, years = (_tier(c, t) for t in (QUARTER, DAY, MONTH, YEAR))
    assert (len(quarters), len(days), len(months), len(years)) == (366 * 96, 366, 12, 1)
    for child, parent in ((quarters, days), (days, months), (months, years)):
        np.testing.assert_allclose(_children_sum(child, parent), parent.value, rtol=1e-9)
    assert np.all(c.coverage == 1.0)
    assert np.all(c.value >= 0)


@settings(max_examples=150, deadline=None)
@given(series())
def test_composing_tiers_is_exactly_the_rule_applied_to_each_tier(s: Series) -> None:
    composed = compute(s.as_readings(), s.items, CALENDAR, hierarchical=True).consumption
    direct = compute(s.as_readings(), s.items, CALENDAR, hierarchical=False).consumption
    for f in ("tier", "item", "start", "end", "valid", "flags"):
        np.testing.assert_array_equal(getattr(composed, f), getattr(direct, f), err_msg=f)
    np.testing.assert_allclose(composed.value, direct.value, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(composed.kgce, direct.kgce, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(composed.coverage, direct.coverage, rtol=0, atol=1e-12)


@settings(max_examples=150, deadline=None)
@given(series())
def test_consumption_is_never_negative_and_coverage_is_a_share(s: Series) -> None:
    res = compute(s.as_readings(), s.items, CALENDAR)
    c = res.consumption
    consumed = s.items.kind[c.item] != INSTANT
    assert np.all(np.isfinite(c.value)) and np.all(np.isfinite(c.kgce))
    assert np.all(c.value[consumed] >= 0)
    assert np.all(c.kgce >= 0)
    assert np.all((c.coverage >= 0) & (c.coverage <= 1))
    assert np.all(res.validated.segments.amount[~res.validated.segments.instant] >= 0)
    # A period with nothing known is never valid.
    assert not np.any(c.valid & (c.coverage == 0))
    # Totals only where some counted item has a row.
    assert np.all(np.isin(c.item[s.items.kind[c.item] == TOTAL], s.items.total))


@settings(max_examples=100, deadline=None)
@given(series(), st.integers(0, 2**32 - 1))
def test_shuffled_and_repeated_readings_give_the_same_result(s: Series, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = len(s.ts)
    repeat = rng.integers(0, n, n // 3) if n else np.zeros(0, np.int64)
    order = rng.permutation(np.r_[np.arange(n), repeat])
    messy = Readings.from_unsorted(s.item[order], s.ts[order], s.value[order], s.quality[order])
    a = compute(s.as_readings(), s.items, CALENDAR)
    b = compute(messy, s.items, CALENDAR)
    for f in Consumption.__slots__:
        np.testing.assert_array_equal(getattr(a.consumption, f), getattr(b.consumption, f))
    np.testing.assert_array_equal(a.quality, b.quality)


@settings(max_examples=150, deadline=None)
@given(starting_and_stopping())
def test_series_that_start_and_stop_compose_exactly_and_cost_only_what_was_measured(
        s: Series) -> None:
    composed = compute(s.as_readings(), s.items, CALENDAR, hierarchical=True).consumption
    direct = compute(s.as_readings(), s.items, CALENDAR, hierarchical=False).consumption
    for f in ("tier", "item", "start", "end", "valid", "flags"):
        np.testing.assert_array_equal(getattr(composed, f), getattr(direct, f), err_msg=f)
    np.testing.assert_allclose(composed.value, direct.value, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(composed.coverage, direct.coverage, rtol=0, atol=1e-12)
    # An item's row either measured something or carries a reset's flags.
    own = s.items.kind[composed.item] != TOTAL
    assert np.all((composed.coverage[own] > 0) | (composed.flags[own] != 0))


@settings(max_examples=150, deadline=None)
@given(starting_and_stopping())
def test_a_total_counts_every_counted_item_that_had_begun_as_measuring_nothing_where_silent(
        s: Series) -> None:
    res = compute(s.as_readings(), s.items, CALENDAR)
    c = res.consumption
    counted = np.flatnonzero(s.items.in_total())
    finite = np.isfinite(s.value)
    first = {int(i): int(s.ts[finite & (s.item == i)].min())
             for i in counted if np.any(finite & (s.item == i))}
    own = c.take(s.items.kind[c.item] != TOTAL)
    cov = {(int(t), int(i), int(st_)): float(v)
           for t, i, st_, v in zip(own.tier, own.item, own.start, own.coverage, strict=True)}
    ok = {(int(t), int(i), int(st_)): bool(v)
          for t, i, st_, v in zip(own.tier, own.item, own.start, own.valid, strict=True)}
    tot = c.take(s.items.kind[c.item] == TOTAL)
    expected_keys = {(t, st_) for (t, i, st_), v in cov.items() if i in first and v > 0}
    assert {(int(t), int(st_)) for t, st_ in zip(tot.tier, tot.start, strict=True)} == expected_keys
    for t, st_, end, v, good in zip(tot.tier, tot.start, tot.end, tot.coverage, tot.valid,
                                    strict=True):
        takes_part = [i for i, since in first.items() if since < end]
        covs = [cov.get((int(t), i, int(st_)), 0.0) for i in takes_part]
        assert v == min(covs)
        assert good == (min(covs) > 0 and all(ok.get((int(t), i, int(st_)), False)
                                              for i in takes_part))
