"""UNVERIFIED: readings taken while the item's instrument was out of verification.

Which instrument measures an item at a time: every instrument of the registry (``meters``)
that lists the item in its ``data_codes`` and is in force then.  An instrument is in force
until its ``retired_at`` or the time a recorded replacement names it as the old meter, and
from the time a recorded replacement names it as the new meter (from the beginning of time
when none does).

An instrument in force judges a reading on local date ``d`` so:

* ``align_state`` none (neither verified nor calibrated): UNVERIFIED, whatever the date;
* verified or calibrated: in verification when one of its recorded periods
  (``meter_verifications``, never removed) holds ``d``; before the first period's
  ``valid_from`` not judged (the registry rarely holds the certificates before the current
  one: a meter's past is not condemned for a missing old certificate); otherwise
  UNVERIFIED.

A reading that some instrument in force flags is UNVERIFIED: with two instruments on one
item, a lapsed one is not hidden by the other.  An item that no instrument measures is
not judged (``nhjc meters report`` lists it).  The per-instrument work is a loop over
instruments and their few periods; the readings are judged with one sort, vectorised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import numpy as np

from ingest.quality import UNVERIFIED
from processing.itemtable import ItemTable
from processing.segments import Readings

__all__ = ["INSTRUMENTS", "Instruments", "covered", "unverified_flags"]

_NEVER = np.iinfo(np.int64).min
_EVER = np.iinfo(np.int64).max


def _us(expr: str) -> str:
    return f"(extract(epoch FROM {expr}) * 1000000)::int8"


# The instruments of each item (k: its position in the run's list), the time they are in
# force from and to (NULL: unbounded), their state, and their verification periods as
# [start of valid_from, start of the day after valid_until) in the zone's local time ($4).
INSTRUMENTS = f"""
SELECT u.k, m.align_state, f.since, {_us('least(m.retired_at, o.until)')} AS until,
  (SELECT array_agg({_us("(v.valid_from::timestamp AT TIME ZONE $4)")} ORDER BY v.valid_from)
     FROM meter_verifications v WHERE v.enterprise = m.enterprise AND v.ser_no = m.ser_no) AS lo,
  (SELECT array_agg({_us("((v.valid_until + 1)::timestamp AT TIME ZONE $4)")} ORDER BY v.valid_from)
     FROM meter_verifications v WHERE v.enterprise = m.enterprise AND v.ser_no = m.ser_no) AS hi
FROM unnest($1::int4[], $2::text[], $3::text[]) AS u(k, e, c)
JOIN meters m ON m.enterprise = u.e AND u.c = ANY(m.data_codes)
CROSS JOIN LATERAL (SELECT {_us('max(r.replaced_at)')} AS since FROM meter_replacements r
                    WHERE r.enterprise = u.e AND r.code = u.c AND r.new_ser_no = m.ser_no) AS f
CROSS JOIN LATERAL (SELECT min(r.replaced_at) AS until FROM meter_replacements r
                    WHERE r.enterprise = u.e AND r.code = u.c AND r.old_ser_no = m.ser_no
                      AND (f.since IS NULL OR {_us('r.replaced_at')} > f.since)) AS o
"""


class Instruments:
    """Per item, the stretches of time in which its readings are UNVERIFIED, as
    half-open intervals ``[lo, hi)`` of microseconds (they may overlap)."""

    __slots__ = ("hi", "item", "lo")

    def __init__(self, item: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        self.item, self.lo, self.hi = item, lo, hi

    @classmethod
    def from_rows(cls, items_of_k: np.ndarray, rows: Sequence[Any]) -> Instruments:
        """From rows of :data:`INSTRUMENTS` (k indexes ``items_of_k``)."""
        out_item: list[int] = []
        out_lo: list[int] = []
        out_hi: list[int] = []
        for row in rows:  # one per instrument and item: a handful per enterprise
            item = int(items_of_k[int(row["k"])])
            since = _NEVER if row["since"] is None else int(row["since"])
            until = _EVER if row["until"] is None else int(row["until"])
            for lo, hi in _bad(str(row["align_state"]), since, until, row["lo"], row["hi"]):
                out_item.append(item)
                out_lo.append(lo)
                out_hi.append(hi)
        return cls(np.array(out_item, np.int64), np.array(out_lo, np.int64), np.array(out_hi, np.int64))

    def __len__(self) -> int:
        return len(self.item)


def _bad(state: str, since: int, until: int, lo: Sequence[int] | None,
         hi: Sequence[int] | None) -> list[tuple[int, int]]:
    """The parts of [since, until) an instrument judges UNVERIFIED."""
    if since >= until:
        return []
    if state == "none":
        return [(since, until)]
    periods = sorted(zip(lo or [], hi or [], strict=True))
    if not periods:
        return []  # verified, but no period recorded: nothing to judge by
    out: list[tuple[int, int]] = []
    at = max(since, int(periods[0][0]))  # not judged before the first recorded verification
    for a, b in periods:
        if a > at:
            out.append((at, min(int(a), until)))
        at = max(at, int(b))
        if at >= until:
            break
    if at < until:
        out.append((at, until))
    return [(a, b) for a, b in out if a < b]


def covered(item: np.ndarray, ts: np.ndarray, i_item: np.ndarray, i_lo: np.ndarray,
            i_hi: np.ndarray) -> np.ndarray:
    """Bool per reading (item, ts): some interval ``[lo, hi)`` of its item holds ts.

    One sort of all interval ends and readings by (item, time, kind) and a running count
    of open intervals: at equal times an interval ends before one starts, and both before
    a reading is looked at, so the intervals are half-open."""
    n, m = len(ts), len(i_item)
    out = np.zeros(n, bool)
    if n == 0 or m == 0:
        return out
    all_item = np.concatenate([i_item, i_item, item]).astype(np.int64)
    all_t = np.concatenate([i_lo, i_hi, ts]).astype(np.int64)
    kind = np.concatenate([np.ones(m, np.int8), np.zeros(m, np.int8), np.full(n, 2, np.int8)])
    delta = np.concatenate([np.ones(m, np.int64), -np.ones(m, np.int64), np.zeros(n, np.int64)])
    order = np.lexsort((kind, all_t, all_item))
    depth = np.cumsum(delta[order])
    reading = order >= 2 * m
    out[order[reading] - 2 * m] = depth[reading] > 0
    return out


async def unverified_flags(conn: asyncpg.Connection, items: ItemTable, r: Readings,
                           zone: ZoneInfo) -> np.ndarray:
    """UNVERIFIED (or 0) per reading of ``r``, from the registry."""
    flags = np.zeros(len(r), np.int32)
    if len(r) == 0:
        return flags
    u = np.unique(r.item)
    ents = np.asarray(items.enterprise, dtype=object)[u].tolist()
    codes = np.asarray(items.code, dtype=object)[u].tolist()
    rows = await conn.fetch(INSTRUMENTS, np.arange(len(u), dtype=np.int32).tolist(), ents, codes, zone.key)
    if not rows:
        return flags
    bad = Instruments.from_rows(u, rows)
    flags[covered(r.item, r.ts, bad.item, bad.lo, bad.hi)] = UNVERIFIED
    return flags
