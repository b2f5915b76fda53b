"""Segments into period values: 15-minute, day, month and year consumption, and the
enterprise totals.  Pure numpy, no I/O.

The rule for one period: the time-proportional shares of the measured segments
overlapping it, plus every gap segment it contains whole; coverage is the part of the
period whose consumption is known that way.  Two ways to get a tier:

* :func:`distribute` applies the rule to segments directly (any tier);
* :func:`compose` builds a coarse period from its child periods plus the gap segments
  that lie wholly inside it but cross a child boundary (a child cannot take those).
  This is exact: the children partition the period, so they hold every measured share
  and every gap that fits inside one child; the crossing gaps are the rest.

Amounts stay raw until :func:`finish`: consumption for cumulative and interval items,
the integral of the value (unit x seconds) for instant items, with ``known`` the measured
time in microseconds, so that sums compose exactly and an average is taken only once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ingest.quality import SUSPECT
from processing.itemtable import INSTANT, ItemTable
from processing.segments import GAP, MEASURED, UNKNOWN, Segments

__all__ = [
    "NO_READING",
    "NO_TIER",
    "Consumption",
    "GapRows",
    "PeriodRows",
    "compose",
    "distribute",
    "finish",
    "first_readings",
    "gap_tiers",
    "totals",
]

NO_TIER = 4  # a gap segment that no period of any tier contains whole
NO_READING = np.iinfo(np.int64).max  # first reading of an item never heard from
_SHIFT = np.int64(53)  # enterprise index above the microseconds (2**53 us: year 2255)
_LIMIT = np.int64((1 << 53) - 1)


@dataclass(frozen=True, slots=True, eq=False)
class PeriodRows:
    """One row per (item, period) of one tier, sorted by (item, start)."""

    tier: int
    item: np.ndarray  # int64
    start: np.ndarray  # int64 us
    end: np.ndarray  # int64 us
    amount: np.ndarray  # float64 (see module docstring)
    known: np.ndarray  # int64 us of the period whose consumption is known
    flags: np.ndarray  # int32: OR of the quality flags of the readings it rests on

    def __len__(self) -> int:
        return len(self.item)

    def take(self, mask: np.ndarray) -> PeriodRows:
        return PeriodRows(self.tier, self.item[mask], self.start[mask], self.end[mask],
                          self.amount[mask], self.known[mask], self.flags[mask])


@dataclass(frozen=True, slots=True, eq=False)
class GapRows:
    """Gap segments handed to :func:`compose` for one tier."""

    item: np.ndarray
    t0: np.ndarray
    t1: np.ndarray
    amount: np.ndarray
    flags: np.ndarray

    def __len__(self) -> int:
        return len(self.item)

    @classmethod
    def of(cls, seg: Segments, seg_flags: np.ndarray, mask: np.ndarray) -> GapRows:
        return cls(seg.item[mask], seg.t0[mask], seg.t1[mask], seg.amount[mask], seg_flags[mask])


@dataclass(frozen=True, slots=True, eq=False)
class Consumption:
    """Rows of the ``consumption`` table, any tiers mixed."""

    tier: np.ndarray  # int8 stat_type
    item: np.ndarray  # int64
    start: np.ndarray  # int64 us
    end: np.ndarray  # int64 us
    value: np.ndarray  # float64: item's unit (instant: time-weighted average); totals: kgce
    kgce: np.ndarray  # float64
    coverage: np.ndarray  # float64 0..1
    valid: np.ndarray  # bool
    flags: np.ndarray  # int32

    def __len__(self) -> int:
        return len(self.item)

    @classmethod
    def concat(cls, parts: list[Consumption]) -> Consumption:
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__slots__))

    def take(self, mask: np.ndarray) -> Consumption:
        return Consumption(*(getattr(self, f)[mask] for f in self.__slots__))


def _runs(key: np.ndarray) -> np.ndarray:
    """Start index of each run of equal keys (keys sorted)."""
    if len(key) == 0:
        return np.zeros(0, np.int64)
    return np.flatnonzero(np.r_[True, key[1:] != key[:-1]])


def _reduce(tier: int, bounds: np.ndarray, item: np.ndarray, p: np.ndarray, amount: np.ndarray,
            known: np.ndarray, flags: np.ndarray) -> PeriodRows:
    """Sum contributions per (item, period index ``p`` into ``bounds``)."""
    key = item * np.int64(len(bounds)) + p
    if len(key) > 1 and np.any(key[1:] < key[:-1]):
        order = np.argsort(key, kind="stable")
        key, item, p, amount, known, flags = (x[order] for x in (key, item, p, amount, known, flags))
    first = _runs(key)
    if len(first) == 0:
        z = np.zeros(0, np.int64)
        return PeriodRows(tier, z, z, z, np.zeros(0), z, np.zeros(0, np.int32))
    return PeriodRows(
        tier, item[first], bounds[p[first]], bounds[p[first] + 1],
        np.add.reduceat(amount, first), np.add.reduceat(known, first),
        np.bitwise_or.reduceat(flags, first).astype(np.int32),
    )


def _kept(rows: PeriodRows) -> PeriodRows:
    """The rows worth a row in ``consumption``: a period whose consumption is partly
    known, or one that rests on a reset (its flags must reach the coarser periods).
    A period with nothing measured and nothing to say has no row: a long gap costs
    nothing."""
    keep = (rows.known > 0) | (rows.flags != 0)
    return rows if bool(keep.all()) else rows.take(keep)


def distribute(seg: Segments, seg_flags: np.ndarray, bounds: np.ndarray, tier: int) -> PeriodRows:
    """The period rule (see the module's docstring) applied to segments for the periods
    ``bounds`` (which must cover every segment).  Rows only for periods that take
    something from a segment or rest on one (:func:`_kept`): a gap or a reset, however
    long, is looked at only in the periods holding its ends, as every period strictly
    between them is covered by it alone and so has nothing known."""
    t0, t1 = seg.t0, seg.t1
    i0 = np.searchsorted(bounds, t0, "right") - 1
    i1 = np.searchsorted(bounds, t1, "left") - 1  # a segment ending on a boundary stops before it
    span = i1 - i0 + 1
    measured_seg = seg.state == MEASURED
    # A measured segment is at most max_gap long, so it spans few periods; any other
    # segment gives its end periods only (one when both ends fall in one period).
    counts = np.where(measured_seg, span, np.minimum(span, 2))
    total = int(counts.sum())
    s = np.repeat(np.arange(len(seg), dtype=np.int64), counts)
    step = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    p = np.repeat(i0, counts) + np.where(measured_seg[s], step, step * (span[s] - 1))
    a, b = t0[s], t1[s]
    lo = np.maximum(a, bounds[p])
    hi = np.minimum(b, bounds[p + 1])
    overlap = hi - lo
    dt = b - a
    state = seg.state[s]
    measured = state == MEASURED
    whole_gap = (state == GAP) & (span[s] == 1)

    amount = seg.amount[s]
    # Cumulative and interval: consumption spread evenly in time.  Instant: the integral
    # of the linearly interpolated value over the overlap.
    share = amount * (overlap / dt)
    inst = seg.instant[s]
    if inst.any():
        v0, v1 = seg.v0[s], seg.v1[s]
        va = v0 + (v1 - v0) * ((lo - a) / dt)
        vb = v0 + (v1 - v0) * ((hi - a) / dt)
        share = np.where(inst, 0.5 * (va + vb) * (overlap / 1e6), share)
    got = np.where(measured, share, np.where(whole_gap, amount, 0.0))
    known = np.where(measured, overlap, np.where(whole_gap, dt, 0))
    # A period rests on the readings of the segments it takes something from, and on a
    # reset's: a period cut by a gap takes nothing from it and does not rest on it.
    rests = measured | whole_gap | (state == UNKNOWN)
    flags = np.where(rests, seg_flags[s], 0)
    return _kept(_reduce(tier, bounds, seg.item[s], p, got, known, flags))


def gap_tiers(seg: Segments, bounds: dict[int, np.ndarray]) -> np.ndarray:
    """For each gap segment the finest tier with a period containing it whole (NO_TIER
    when none); -1 for segments that are not gaps."""
    out = np.full(len(seg), -1, np.int8)
    gap = seg.state == GAP
    found = np.zeros(len(seg), bool)
    out[gap] = NO_TIER
    for tier in sorted(bounds):
        b = bounds[tier]
        i0 = np.searchsorted(b, seg.t0, "right") - 1
        inside = gap & ~found & (seg.t1 <= b[np.minimum(i0 + 1, len(b) - 1)])
        out[inside] = tier
        found |= inside
    return out


def compose(child: PeriodRows, gaps: GapRows, bounds: np.ndarray, tier: int) -> PeriodRows:
    """Coarse periods of ``tier`` from their children plus the gap segments that lie
    wholly inside a coarse period but cross one of its child boundaries.  ``child`` may
    also be one pre-summed row per coarse period (the database does that)."""
    item = np.concatenate([child.item, gaps.item])
    at = np.concatenate([child.start, gaps.t0])
    p = np.searchsorted(bounds, at, "right") - 1
    return _kept(_reduce(
        tier, bounds, item, p,
        np.concatenate([child.amount, gaps.amount]),
        np.concatenate([child.known, gaps.t1 - gaps.t0]),
        np.concatenate([child.flags, gaps.flags]).astype(np.int32),
    ))


def finish(rows: PeriodRows, items: ItemTable, suspect: int = SUSPECT) -> Consumption:
    """Values as the platforms take them: the item's unit (instant items: the
    time-weighted average over the known time), kgce, coverage and valid (no flag of
    ``suspect``: SUSPECT, less UNVERIFIED when processing.unverified is "flag")."""
    inst = items.kind[rows.item] == INSTANT
    known_s = rows.known / 1e6
    with np.errstate(invalid="ignore", divide="ignore"):
        average = np.where(rows.known > 0, rows.amount / known_s, 0.0)
    value = np.where(inst, average, rows.amount)
    coef = items.coefficient[rows.item]
    # Instant values are not consumption and have no kgce; nor has an unknown energy kind.
    kgce = np.where(inst | ~np.isfinite(coef), 0.0, value * np.nan_to_num(coef))
    coverage = np.clip(rows.known / (rows.end - rows.start), 0.0, 1.0)
    valid = ((rows.flags & suspect) == 0) & (rows.known > 0)
    return Consumption(np.full(len(rows), rows.tier, np.int8), rows.item, rows.start, rows.end,
                       value, kgce, coverage, valid, rows.flags)


def first_readings(item: np.ndarray, ts: np.ndarray, n_items: int) -> np.ndarray:
    """Per item, the earliest of ``ts`` (NO_READING where it has none)."""
    since = np.full(n_items, NO_READING, np.int64)
    np.minimum.at(since, item, ts)
    return since


def totals(c: Consumption, items: ItemTable, since: np.ndarray | None = None) -> Consumption:
    """Code 0000 per enterprise and period: the kgce of its whole-plant consumption items
    summed; coverage the smallest of theirs; valid when all of them are.

    Every counted item whose series began before the period ended (``since``, per item:
    its first reading) takes part: one without a row there measured nothing and brings
    the coverage to 0, so a silent meter makes the total incomplete and not valid.  A
    total is kept only where some counted item measured something.  Without ``since``
    only the items with rows count (the rule before silent items were seen)."""
    m = items.in_total()[c.item]
    tier, item, start, end = c.tier[m], c.item[m], c.start[m], c.end[m]
    ent = items.ent[item]
    order = np.lexsort((item, start, ent, tier))  # deterministic summation order
    tier, ent, start, end = tier[order], ent[order], start[order], end[order]
    kgce, cov = c.kgce[m][order], c.coverage[m][order]
    valid, flags = c.valid[m][order], c.flags[m][order]
    if len(order) == 0:
        return c.take(np.zeros(len(c), bool))
    change = (tier[1:] != tier[:-1]) | (ent[1:] != ent[:-1]) | (start[1:] != start[:-1])
    first = np.flatnonzero(np.r_[True, change])
    total_kgce = np.add.reduceat(kgce, first)
    coverage = np.minimum.reduceat(cov, first)
    ok = np.logical_and.reduceat(valid, first)
    if since is not None:
        present = np.diff(np.r_[first, len(order)])
        silent = present < _expected(items, since, ent[first], end[first])
        coverage = np.where(silent, 0.0, coverage)
        ok &= ~silent
    out = Consumption(
        tier[first], items.total[ent[first]], start[first], end[first],
        total_kgce, total_kgce, coverage, ok,
        np.bitwise_or.reduceat(flags, first).astype(np.int32),
    )
    measured = np.maximum.reduceat(cov, first) > 0
    return out if bool(measured.all()) else out.take(measured)


def _expected(items: ItemTable, since: np.ndarray, ent: np.ndarray, end: np.ndarray) -> np.ndarray:
    """How many counted items of enterprise ``ent`` began before ``end`` (per period)."""
    counted = np.flatnonzero(items.in_total() & (since < NO_READING))
    # One sorted key (enterprise, first reading); times are microseconds after 1970.
    key = np.sort((items.ent[counted] << _SHIFT) | np.clip(since[counted], 0, _LIMIT))
    lo = np.searchsorted(key, ent << _SHIFT, "left")
    hi = np.searchsorted(key, (ent << _SHIFT) | np.clip(end, 0, _LIMIT), "left")
    expected: np.ndarray = hi - lo
    return expected
