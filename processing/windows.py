"""Which stretches of an item's history a recomputation needs.  Pure numpy helpers for
the aggregator.

A new or corrected reading at ``t`` replaces the segment between its neighbours ``a``
and ``b`` by two, so every period overlapping ``[a, b]`` may change, and only those.
To recompute a 15-minute period exactly we need every segment overlapping it, so the
aggregator loads the readings of the whole 15-minute *window* ``[floor(a), ceil(b)]``
widened to the finite reading before it and the one after it (``a`` and ``b`` are finite
readings too: non-finite ones make no segments).  Windows of an item that overlap or
touch are merged first, so loaded stretches never double count a segment.
"""

from __future__ import annotations

import numpy as np

from processing.segments import Readings

__all__ = ["holes", "inside", "link_groups", "merge_intervals", "quarter_windows", "stretches"]


def merge_intervals(item: np.ndarray, lo: np.ndarray, hi: np.ndarray, bridge: int = 0,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Union of closed intervals per item, sorted by (item, lo): intervals of the same
    item that overlap, touch or lie at most ``bridge`` apart become one."""
    if len(item) == 0:
        return item, lo, hi
    order = np.lexsort((lo, item))
    item, lo, hi = item[order], lo[order], hi[order]
    # Running maximum of hi within each item: an interval starts a new union when it
    # begins after everything before it (of the same item) has ended.  One cumulative
    # maximum serves all items: hi is replaced by its rank, and each item's ranks are
    # lifted above every earlier item's (ranks keep the numbers small).
    new_item = np.r_[True, item[1:] != item[:-1]]
    group_id = np.cumsum(new_item) - 1
    distinct = np.unique(hi)
    offset = np.int64(len(distinct)) * group_id
    rank = np.searchsorted(distinct, hi)
    reach = distinct[np.maximum.accumulate(rank + offset) - offset]
    starts = new_item.copy()
    starts[1:] |= lo[1:] > reach[:-1] + bridge
    first = np.flatnonzero(starts)
    return item[first], lo[first], np.maximum.reduceat(hi, first)


def quarter_windows(quarter_bounds: np.ndarray, a: np.ndarray, b: np.ndarray,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``[a, b]`` widened to 15-minute boundaries."""
    ws = quarter_bounds[np.searchsorted(quarter_bounds, a, "right") - 1]
    we = quarter_bounds[np.searchsorted(quarter_bounds, b, "left")]
    return ws, we


def link_groups(item: np.ndarray, ts: np.ndarray, value: np.ndarray, quality: np.ndarray,
                group: np.ndarray) -> Readings:
    """Readings loaded per window (``group`` numbers windows in (item, time) order),
    sorted and unique.  Two consecutive readings are linked (really consecutive in the
    database) only when some loaded window holds both: windows load contiguous
    stretches, but there may be readings between two windows that nobody loaded."""
    order = np.lexsort((group, ts, item))
    item, ts, value, quality, group = (x[order] for x in (item, ts, value, quality, group))
    n = len(ts)
    new = np.ones(n, bool)
    new[1:] = (item[1:] != item[:-1]) | (ts[1:] != ts[:-1])
    first = np.flatnonzero(new)
    last = np.r_[first[1:] - 1, n - 1] if n else first
    gmin, gmax = group[first], group[last]
    it = item[first]
    linked = np.zeros(len(first), bool)
    linked[1:] = (it[1:] == it[:-1]) & (gmin[1:] <= gmax[:-1])
    return Readings(it, ts[first], value[first], quality[first].astype(np.int32), linked)


def stretches(r: Readings) -> tuple[np.ndarray, np.ndarray]:
    """First and last index of each run of linked readings."""
    first = np.flatnonzero(~r.linked)
    last = np.r_[first[1:] - 1, len(r) - 1] if len(first) else first
    return first, last


def inside(item: np.ndarray, start: np.ndarray, end: np.ndarray,
           w_item: np.ndarray, w_lo: np.ndarray, w_hi: np.ndarray) -> np.ndarray:
    """Periods ``[start, end)`` lying inside one of the item's windows (windows sorted
    by (item, lo) and disjoint)."""
    if len(w_item) == 0:
        return np.zeros(len(item), bool)
    # Windows and periods start on whole seconds; one key orders (item, second).
    wkey = (w_item << 33) | (w_lo // 1_000_000)
    pkey = (item << 33) | (start // 1_000_000)
    j = np.searchsorted(wkey, pkey, "right") - 1
    ok = j >= 0
    j = np.maximum(j, 0)
    whole: np.ndarray = ok & (w_item[j] == item) & (w_lo[j] <= start) & (end <= w_hi[j])
    return whole


def holes(w_item: np.ndarray, w_lo: np.ndarray, w_hi: np.ndarray, item: np.ndarray,
          start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The parts of the windows (sorted by (item, lo) and disjoint) that none of the
    periods ``[start, end)`` covers (each period lies inside one window, none overlap):
    (item, lo, hi) of each part, ``[lo, hi)``."""
    if len(item) == 0:
        return w_item, w_lo, w_hi
    wkey = (w_item << 33) | (w_lo // 1_000_000)
    order = np.lexsort((start, item))
    item, start, end = item[order], start[order], end[order]
    w = np.searchsorted(wkey, (item << 33) | (start // 1_000_000), "right") - 1
    # Each window's hole before its first period, and the hole after each period up to
    # the next period of the same window or the window's end.
    first_start = w_hi.copy()
    first = np.r_[True, w[1:] != w[:-1]]
    first_start[w[first]] = start[first]
    next_start = np.r_[start[1:], 0]
    last = np.r_[w[1:] != w[:-1], True]
    next_start[last] = w_hi[w[last]]
    h_item = np.concatenate([w_item, item])
    h_lo = np.concatenate([w_lo, end])
    h_hi = np.concatenate([first_start, next_start])
    keep = h_hi > h_lo
    return h_item[keep], h_lo[keep], h_hi[keep]
