"""From readings to segments: validation flags, unwrapping and per-segment consumption.

Readings are columns sorted by (item, ts) with one reading per timestamp.  Two
consecutive finite readings of an item form a *segment*.  Per segment we work out the
consumption it carries (multiplier applied) and its state:

* MEASURED: no longer than ``max_gap``; spread evenly over its time span,
* GAP: longer; its consumption is known, its timing is not,
* UNKNOWN: a reset or meter replacement (or a negative interval value): no consumption
  known, none counted.

A meter replacement recorded in ``meter_replacements`` turns its segment from UNKNOWN
into known consumption, in two parts either side of the replacement time
(:mod:`processing.replacing`).

Flags that describe a segment (ROLLOVER, RESET, SPIKE, and OUT_OF_RANGE for a rate of
consumption) are put on the reading that ends it; flags that describe a reading itself
(EARLY, LATE, NON_FINITE, STUCK, OUT_OF_RANGE of an instant value) taint the segments on
both sides of it.  Everything is vectorised: no Python loop per reading.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ingest import quality as q
from processing.itemtable import CUMULATIVE, INSTANT, INTERVAL, ItemTable
from processing.replacing import Matched, Replacements, match

__all__ = [
    "EVENT_KINDS",
    "EVENT_REPLACEMENT",
    "EVENT_REPLACEMENT_REFUSED",
    "EVENT_RESET",
    "EVENT_ROLLOVER",
    "GAP",
    "MEASURED",
    "UNKNOWN",
    "Readings",
    "Segments",
    "Validated",
    "reading_level_mask",
    "segment_flags",
    "validate",
]

MEASURED, GAP, UNKNOWN = 0, 1, 2
EVENT_ROLLOVER, EVENT_RESET, EVENT_REPLACEMENT, EVENT_REPLACEMENT_REFUSED = 1, 2, 3, 4
# meter_events.kind of each event code
EVENT_KINDS = {EVENT_ROLLOVER: "rollover", EVENT_RESET: "reset", EVENT_REPLACEMENT: "replacement",
               EVENT_REPLACEMENT_REFUSED: "replacement_refused"}

# Flags a reading carries for the segment that ends at it.
_SEGMENT_LEVEL = q.ROLLOVER | q.RESET | q.SPIKE | q.OUT_OF_RANGE
_READING_LEVEL = q.EARLY | q.LATE | q.NON_FINITE | q.STUCK | q.OUT_OF_LINE | q.UNVERIFIED
_US_PER_HOUR = 3.6e9


@dataclass(frozen=True, slots=True, eq=False)
class Readings:
    """Readings sorted by (item, ts), unique per (item, ts)."""

    item: np.ndarray  # int64 item index
    ts: np.ndarray  # int64 microseconds since the epoch
    value: np.ndarray  # float64, as the meter shows it
    quality: np.ndarray  # int32 flags as stored (ingest's bits and earlier processing bits)
    # linked[j]: reading j-1 in these arrays is reading j's real predecessor.  False for
    # an item's first reading, and where a caller loaded disjoint stretches of history.
    linked: np.ndarray

    @classmethod
    def from_unsorted(cls, item: np.ndarray, ts: np.ndarray, value: np.ndarray,
                      quality: np.ndarray | None = None) -> Readings:
        """Sort by (item, ts) and drop repeated timestamps, keeping the last copy given
        (the store's rule: a later copy is a correction)."""
        item = np.asarray(item, np.int64)
        ts = np.asarray(ts, np.int64)
        value = np.asarray(value, np.float64)
        qual = np.zeros(len(ts), np.int32) if quality is None else np.asarray(quality, np.int32)
        order = np.lexsort((ts, item))  # stable: copies of a key stay in input order
        si, st = item[order], ts[order]
        last = np.ones(len(order), bool)
        last[:-1] = (si[1:] != si[:-1]) | (st[1:] != st[:-1])
        keep = order[last]
        it = item[keep]
        linked = np.zeros(len(keep), bool)
        linked[1:] = it[1:] == it[:-1]
        return cls(it, ts[keep], value[keep], qual[keep], linked)

    def __len__(self) -> int:
        return len(self.ts)


@dataclass(frozen=True, slots=True, eq=False)
class Segments:
    item: np.ndarray  # int64
    start: np.ndarray  # index of the reading it starts at
    end: np.ndarray  # index of the reading it ends at
    t0: np.ndarray  # int64 us
    t1: np.ndarray  # int64 us
    # Consumption in the item's unit, multiplier applied; for an instant item the
    # integral of the (linearly interpolated) value over the segment, in unit x seconds.
    amount: np.ndarray
    v0: np.ndarray  # instant items: value at t0, multiplier applied (0 otherwise)
    v1: np.ndarray  # instant items: value at t1
    state: np.ndarray  # int8 MEASURED, GAP or UNKNOWN
    instant: np.ndarray  # bool
    skipped: np.ndarray  # bool: non-finite readings lie inside the segment

    def __len__(self) -> int:
        return len(self.t0)


@dataclass(frozen=True, slots=True, eq=False)
class Validated:
    readings: Readings
    segments: Segments
    # Flags per reading: ingest's bits as stored, processing's bits as computed now
    # (STUCK is added by processing.stuck).
    quality: np.ndarray
    # ends_segment[j]: reading j ends a segment here, so its segment-level flags were
    # computed; otherwise they are kept as stored (its predecessor was not given).
    ends_segment: np.ndarray
    event_reading: np.ndarray  # reading index of each meter event (the segment's end)
    event_kind: np.ndarray  # EVENT_ROLLOVER, EVENT_RESET, EVENT_REPLACEMENT(_REFUSED)
    event_reason: np.ndarray  # int8: why a replacement was refused (replacing.REASONS), else 0


def reading_level_mask(instant: np.ndarray) -> np.ndarray:
    """Flags of a reading that taint both segments around it."""
    return np.where(instant, _READING_LEVEL | q.OUT_OF_RANGE, _READING_LEVEL).astype(np.int32)


def validate(r: Readings, items: ItemTable, *, max_gap_us: int,
             replacements: Replacements | None = None) -> Validated:
    """Flags and segments of sorted, unique readings, and the recorded meter
    replacements of their items (any order of time; none when not given).  Pure; no I/O."""
    n = len(r)
    finite = np.isfinite(r.value)
    fin = np.flatnonzero(finite)
    # Consecutive finite readings form a segment unless a break (another item, or a
    # stretch of history not given) lies between them.
    breaks = np.cumsum(~r.linked)
    a, b = fin[:-1], fin[1:]
    real = breaks[a] == breaks[b]
    a, b = a[real], b[real]
    nonfinite_before = np.cumsum(~finite)

    it = r.item[a]
    kind = items.kind[it]
    mult = items.multiplier[it]
    rollover_at, lo, hi = items.rollover[it], items.min[it], items.max[it]
    t0, t1 = r.ts[a], r.ts[b]
    dt = t1 - t0
    hours = dt / _US_PER_HOUR
    v0, v1 = r.value[a], r.value[b]
    cum, itv, inst = kind == CUMULATIVE, kind == INTERVAL, kind == INSTANT

    # Unwrapping a register that went down: a rollover when the wrap value explains a
    # plausible consumption (within max per hour, or under 1 % of the wrap value when no
    # max is set); any other decrease is a reset or a new meter.  NaN compares false,
    # so an item without a rollover value never rolls over.
    delta = v1 - v0
    wrapped = rollover_at - v0 + v1
    plausible = (wrapped >= 0) & np.where(
        np.isnan(hi), wrapped < 0.01 * rollover_at, wrapped * mult <= hi * hours)
    down = cum & (delta < 0)
    rollover = down & plausible
    reset = down & ~rollover
    negative = itv & (v1 < 0)  # an interval item never consumes less than nothing
    raw = np.where(cum, np.where(rollover, wrapped, delta), np.where(itv, v1, 0.0))
    rep = None
    if replacements is not None and len(replacements):
        rep = match(replacements, it, t0, t1, v0, v1, cum, rollover_at, hi, mult)
        # A recorded replacement explains the register's jump, whichever way it went: no
        # rollover, no reset, its consumption known.  A refused one leaves an unknown reset.
        rollover[rep.seg] = False
        reset[rep.seg] = ~rep.applied
        raw[rep.seg] = np.where(rep.applied, rep.old + rep.new, 0.0)
    unknown = reset | negative

    amount = np.where(unknown, 0.0, raw * mult)
    iv0 = np.where(inst, v0 * mult, 0.0)
    iv1 = np.where(inst, v1 * mult, 0.0)
    amount = np.where(inst, 0.5 * (iv0 + iv1) * (dt / 1e6), amount)

    # Rate checks for consumption: above max per hour is a spike, below min out of range.
    rated = (cum | itv) & ~unknown
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = amount / hours
    spike = rated & (rate > hi)
    low = rated & (rate < lo)

    state = np.where(unknown, UNKNOWN, np.where(dt > max_gap_us, GAP, MEASURED)).astype(np.int8)
    seg = Segments(
        item=it, start=a, end=b, t0=t0, t1=t1, amount=amount, v0=iv0, v1=iv1, state=state,
        instant=inst, skipped=nonfinite_before[b] - nonfinite_before[a] > 0,
    )
    if rep is not None:
        seg = _split(seg, rep, mult, max_gap_us)

    # Reading flags.
    kinds = items.kind[r.item]
    quality = (r.quality & q.STICKY).astype(np.int32)
    quality |= np.where(finite, 0, q.NON_FINITE).astype(np.int32)
    scaled = r.value * items.multiplier[r.item]
    outside = (kinds == INSTANT) & finite & (
        (scaled < items.min[r.item]) | (scaled > items.max[r.item]))
    quality |= np.where(outside, q.OUT_OF_RANGE, 0).astype(np.int32)
    seg_bits = (np.where(rollover, q.ROLLOVER, 0) | np.where(reset, q.RESET, 0)
                | np.where(spike, q.SPIKE, 0) | np.where(low | negative, q.OUT_OF_RANGE, 0))
    ends = np.zeros(n, bool)
    ends[b] = True
    # A reading whose predecessor was not given keeps the segment-level flags it had.
    kept = np.where(ends | (kinds == INSTANT), 0, r.quality & _SEGMENT_LEVEL)
    quality |= kept.astype(np.int32)
    quality[b] |= seg_bits.astype(np.int32)

    ev_reading = np.concatenate([b[rollover], b[reset]])
    ev_kind = np.concatenate([np.full(int(rollover.sum()), EVENT_ROLLOVER, np.int8),
                              np.full(int(reset.sum()), EVENT_RESET, np.int8)])
    ev_reason = np.zeros(len(ev_reading), np.int8)
    if rep is not None:
        # The replacement's own event instead of the reset's.
        ev_keep = ~np.isin(ev_reading, b[rep.seg])
        ev_reading = np.concatenate([ev_reading[ev_keep], b[rep.seg]])
        ev_kind = np.concatenate([ev_kind[ev_keep], np.where(
            rep.applied, EVENT_REPLACEMENT, EVENT_REPLACEMENT_REFUSED).astype(np.int8)])
        ev_reason = np.concatenate([ev_reason[ev_keep], rep.reason])
    order = np.argsort(ev_reading, kind="stable")
    return Validated(r, seg, quality, ends, ev_reading[order], ev_kind[order], ev_reason[order])


def _split(seg: Segments, rep: Matched, mult: np.ndarray, max_gap_us: int) -> Segments:
    """Each applied replacement's segment as two: the old meter's part over [t0, T] and
    the new meter's over [T, t1], each measured or a gap by its own length.  Both rest
    on the same readings (start, end).  A reading exactly at T: one part, [t0, T]."""
    ok = rep.applied
    k, ts = rep.seg[ok], rep.ts[ok]
    m = mult[k]
    whole = ts == seg.t1[k]  # the new meter counted nothing before its reading at T
    old_amount = np.where(whole, rep.old[ok] + rep.new[ok], rep.old[ok]) * m

    def state(dt: np.ndarray) -> np.ndarray:
        return np.where(dt > max_gap_us, GAP, MEASURED).astype(np.int8)

    t1, amount, st = seg.t1.copy(), seg.amount.copy(), seg.state.copy()
    t1[k], amount[k], st[k] = ts, old_amount, state(ts - seg.t0[k])
    k, ts = k[~whole], ts[~whole]
    at = k + 1  # the new part right after its old part: (item, t0) order is kept
    new_amount = rep.new[ok][~whole] * mult[k]
    return Segments(
        item=np.insert(seg.item, at, seg.item[k]), start=np.insert(seg.start, at, seg.start[k]),
        end=np.insert(seg.end, at, seg.end[k]), t0=np.insert(seg.t0, at, ts),
        t1=np.insert(t1, at, seg.t1[k]), amount=np.insert(amount, at, new_amount),
        v0=np.insert(seg.v0, at, 0.0), v1=np.insert(seg.v1, at, 0.0),
        state=np.insert(st, at, state(seg.t1[k] - ts)),
        instant=np.insert(seg.instant, at, False), skipped=np.insert(seg.skipped, at, seg.skipped[k]),
    )


def segment_flags(seg: Segments, quality: np.ndarray) -> np.ndarray:
    """The flags each segment rests on: all of its end reading's, the reading-level ones
    of its start reading, and NON_FINITE when non-finite readings were skipped inside."""
    mask = reading_level_mask(seg.instant)
    flags: np.ndarray = (quality[seg.end] | (quality[seg.start] & mask)
                         | np.where(seg.skipped, q.NON_FINITE, 0)).astype(np.int32)
    return flags
