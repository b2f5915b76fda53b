"""Recorded meter replacements applied to segments.  Pure numpy, no I/O.

A replacement at time ``T`` (table ``meter_replacements``: the old meter's final register
value and the new meter's initial one) belongs to the segment ``(a, b]`` of its item with
``a.ts < T <= b.ts``: a reading stamped exactly at ``T`` is the new meter's.  The segment's
consumption is then known::

    (old_final - a.value) + (b.value - new_initial), times the item's multiplier

the old part spread over ``[a.ts, T]`` and the new part over ``[T, b.ts]`` (each side a
measured segment, or a gap when longer than ``max_gap``).  When ``b`` is stamped exactly
at ``T`` the new meter had no time to count: the whole amount lies in ``[a.ts, T]``.

A record the readings contradict is refused, and the segment stays an unknown reset
(no energy counted, RESET flag), with the reason in its meter event:

* ``old_below``: the old meter's final value is below its last reading;
* ``old_rollover``: the same, but the item's rollover value would explain it as a wrap
  (a wrap and a mistyped final value look alike: neither is counted);
* ``new_below`` / ``new_rollover``: the new meter's first reading is below its initial
  value (no wrap / a plausible wrap);
* ``several``: more than one replacement recorded inside one segment.

Only cumulative items have a register to replace: a record on an interval or instant
item changes nothing here.  Rare rows, so a Python loop per replacement row is fine;
nothing here loops per reading.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "APPLIED",
    "REASONS",
    "Matched",
    "Replacements",
    "match",
]

APPLIED = 0
# Reason codes of a refused record (int8 in arrays, text in meter_events.reason).
OLD_BELOW, OLD_ROLLOVER, NEW_BELOW, NEW_ROLLOVER, SEVERAL = 1, 2, 3, 4, 5
REASONS: dict[int, str] = {
    APPLIED: "",
    OLD_BELOW: "old_below",
    OLD_ROLLOVER: "old_rollover",
    NEW_BELOW: "new_below",
    NEW_ROLLOVER: "new_rollover",
    SEVERAL: "several",
}
_US_PER_HOUR = 3.6e9


@dataclass(frozen=True, slots=True, eq=False)
class Replacements:
    """Recorded replacements of some items, sorted by (item, ts)."""

    item: np.ndarray  # int64 item index
    ts: np.ndarray  # int64 us: the replacement time T
    old_final: np.ndarray  # float64, as the old meter showed it
    new_initial: np.ndarray  # float64, as the new meter showed it

    @classmethod
    def of(cls, item: np.ndarray, ts: np.ndarray, old_final: np.ndarray,
           new_initial: np.ndarray) -> Replacements:
        item = np.asarray(item, np.int64)
        ts = np.asarray(ts, np.int64)
        order = np.lexsort((ts, item))
        return cls(item[order], ts[order], np.asarray(old_final, np.float64)[order],
                   np.asarray(new_initial, np.float64)[order])

    def __len__(self) -> int:
        return len(self.ts)


@dataclass(frozen=True, slots=True, eq=False)
class Matched:
    """One row per segment holding a recorded replacement, sorted by segment."""

    seg: np.ndarray  # int64 segment index
    ts: np.ndarray  # int64 us: T (the first one when several)
    old: np.ndarray  # float64 register units: old_final - a.value
    new: np.ndarray  # float64 register units: b.value - new_initial
    reason: np.ndarray  # int8: APPLIED or why the record was refused

    def __len__(self) -> int:
        return len(self.seg)

    @property
    def applied(self) -> np.ndarray:
        ok: np.ndarray = self.reason == APPLIED
        return ok


def _find(rp: Replacements, seg_item: np.ndarray, t0: np.ndarray, t1: np.ndarray) -> np.ndarray:
    """Per replacement, the segment ``(t0, t1]`` of its item holding its time (-1 when
    none).  Segments are sorted by (item, t0) and an item's segments do not overlap."""
    found = np.full(len(rp), -1, np.int64)
    lo_item = np.searchsorted(seg_item, rp.item, "left")
    hi_item = np.searchsorted(seg_item, rp.item, "right")
    for i in range(len(rp)):  # one per replacement row: rare
        lo, hi = int(lo_item[i]), int(hi_item[i])
        j = lo + int(np.searchsorted(t1[lo:hi], rp.ts[i], "left"))
        if j < hi and t0[j] < rp.ts[i]:
            found[i] = j
    return found


def _wraps(below: np.ndarray, wrapped: np.ndarray, rollover: np.ndarray, hi: np.ndarray,
           mult: np.ndarray, hours: np.ndarray) -> np.ndarray:
    """The rollover rule of :func:`processing.segments.validate`: a decrease that a wrap
    at the rollover value explains with a plausible consumption."""
    plausible = (wrapped >= 0) & np.where(
        np.isnan(hi), wrapped < 0.01 * rollover, wrapped * mult <= hi * hours)
    out: np.ndarray = below & plausible
    return out


def match(rp: Replacements, seg_item: np.ndarray, t0: np.ndarray, t1: np.ndarray,
          v0: np.ndarray, v1: np.ndarray, cumulative: np.ndarray, rollover: np.ndarray,
          hi: np.ndarray, mult: np.ndarray) -> Matched:
    """The replacements falling inside segments of cumulative items, one row per such
    segment, with the parts of its consumption or the reason it was refused.  Per
    segment arrays: item, times, register values at both ends, and the item's
    cumulative kind, rollover value, max per hour and multiplier."""
    found = _find(rp, seg_item, t0, t1)
    inside = found >= 0
    inside[inside] = cumulative[found[inside]]
    k, ts = found[inside], rp.ts[inside]
    old_final, new_initial = rp.old_final[inside], rp.new_initial[inside]
    # Replacements are sorted by (item, ts) and segments by (item, t0): k is sorted.
    first = np.r_[True, k[1:] != k[:-1]] if len(k) else np.zeros(0, bool)
    several = ~np.r_[first[1:], True] | ~first if len(k) else first
    k, ts, old_final, new_initial, several = (
        x[first] for x in (k, ts, old_final, new_initial, several))
    a_val, b_val = v0[k], v1[k]
    old, new = old_final - a_val, b_val - new_initial
    roll, top, m = rollover[k], hi[k], mult[k]
    old_wrap = _wraps(old < 0, roll - a_val + old_final, roll, top, m, (ts - t0[k]) / _US_PER_HOUR)
    new_wrap = _wraps(new < 0, roll - new_initial + b_val, roll, top, m, (t1[k] - ts) / _US_PER_HOUR)
    reason = np.select(
        [several, old_wrap, old < 0, new_wrap, new < 0],
        [SEVERAL, OLD_ROLLOVER, OLD_BELOW, NEW_ROLLOVER, NEW_BELOW], APPLIED).astype(np.int8)
    return Matched(k, ts, old, new, reason)
