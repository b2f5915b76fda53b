"""Stuck registers: a cumulative register showing the same value for a long time while
other items of its enterprise record consumption.

A cumulative reading is STUCK when the register has shown its value since at least
``stuck_after`` before it (the *run* of equal values began that long ago) and some other
consumption item (cumulative or interval) of the same enterprise has a 15-minute period
with consumption overlapping those last ``stuck_after``.  When the whole plant is idle
nothing is flagged.  Movement is judged at 15-minute resolution because that is what
the database keeps for items whose readings are not at hand.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ingest import quality as q
from processing.itemtable import CUMULATIVE, INSTANT, TOTAL, ItemTable
from processing.periods import QUARTER_US
from processing.segments import Validated

__all__ = ["Movers", "StuckCandidates", "apply_stuck", "candidates", "flag_stuck"]


@dataclass(frozen=True, slots=True, eq=False)
class Movers:
    """15-minute periods in which an item recorded consumption (amount > 0)."""

    ent: np.ndarray  # int64 enterprise index
    item: np.ndarray  # int64
    start: np.ndarray  # int64 us, start of the 15-minute period

    @classmethod
    def of(cls, items: ItemTable, item: np.ndarray, start: np.ndarray,
           amount: np.ndarray) -> Movers:
        kind = items.kind[item]
        keep = (amount > 0) & (kind != INSTANT) & (kind != TOTAL)
        return cls(items.ent[item[keep]], item[keep], start[keep])

    @classmethod
    def concat(cls, parts: list[Movers]) -> Movers:
        item = np.concatenate([p.item for p in parts])
        start = np.concatenate([p.start for p in parts])
        ent = np.concatenate([p.ent for p in parts])
        # The same (item, period) may come from two sources: count it once.
        _, first = np.unique(np.stack([item, start]), axis=1, return_index=True)
        return cls(ent[first], item[first], start[first])


@dataclass(frozen=True, slots=True, eq=False)
class StuckCandidates:
    reading: np.ndarray  # index of a reading whose run is long enough
    ent: np.ndarray
    item: np.ndarray
    lo: np.ndarray  # int64 us: window start, ts - stuck_after
    hi: np.ndarray  # int64 us: the reading's ts


def candidates(v: Validated, items: ItemTable, *, stuck_after_us: int,
               run_since: np.ndarray | None = None) -> StuckCandidates:
    """Cumulative readings whose register has not changed for at least ``stuck_after``.

    ``run_since`` (per reading, int64 us) may tell for the first reading given of an item
    since when the register has shown that value (found in history the caller did not
    load); use a large value where unknown.
    """
    r, seg = v.readings, v.segments
    n = len(r)
    finite = np.isfinite(r.value)
    # A reading continues its predecessor's run when the segment between them shows no
    # change; non-finite readings (skipped by segments) never start a run of their own.
    starts = np.ones(n, bool)
    same = (items.kind[seg.item] == CUMULATIVE) & (r.value[seg.start] == r.value[seg.end])
    starts[seg.end[same]] = False
    starts[~finite] = False
    starts[~r.linked] = True
    first = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    since = r.ts[first]
    if run_since is not None:
        since = np.minimum(since, run_since[first])
    is_cand = (items.kind[r.item] == CUMULATIVE) & finite & (r.ts - since >= stuck_after_us)
    idx = np.flatnonzero(is_cand)
    return StuckCandidates(idx, items.ent[r.item[idx]], r.item[idx],
                           r.ts[idx] - stuck_after_us, r.ts[idx])


def _key(major: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    return (major.astype(np.int64) << 32) | seconds.astype(np.int64)


def flag_stuck(c: StuckCandidates, movers: Movers, n: int) -> np.ndarray:
    """Bool per reading (``n`` readings): the candidate is STUCK because another item of
    its enterprise moved in its window.  A 15-minute period ``[s, s+15min)`` overlaps
    the window ``[lo, hi]`` when ``s < hi`` and ``s + 15min > lo``."""
    out = np.zeros(n, bool)
    if len(c.reading) == 0 or len(movers.item) == 0:
        return out
    mstart_s = movers.start // 1_000_000
    ent_keys = np.sort(_key(movers.ent, mstart_s))
    own_keys = np.sort(_key(movers.item, mstart_s))
    # Integer bounds in whole seconds: start_s in [lo_s, hi_s).
    lo_s = (c.lo - QUARTER_US) // 1_000_000 + 1
    hi_s = -(-c.hi // 1_000_000)

    def count(keys: np.ndarray, major: np.ndarray) -> np.ndarray:
        return (np.searchsorted(keys, _key(major, hi_s), "left")
                - np.searchsorted(keys, _key(major, lo_s), "left"))

    moved = count(ent_keys, c.ent) - count(own_keys, c.item) > 0
    out[c.reading[moved]] = True
    return out


def apply_stuck(quality: np.ndarray, stuck: np.ndarray, stored: np.ndarray,
                keep_stored: np.ndarray | None = None) -> np.ndarray:
    """Quality with STUCK set where ``stuck``; where ``keep_stored``, as it was stored."""
    out = (quality & ~q.STUCK) | np.where(stuck, q.STUCK, 0)
    if keep_stored is not None:
        out = np.where(keep_stored, (out & ~q.STUCK) | (stored & q.STUCK), out)
    return out.astype(np.int32)
