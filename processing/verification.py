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

from collections.abc import Mapping, Sequence
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import numpy as np

from ingest.quality import UNVERIFIED
from processing.itemtable import ItemTable
from processing.segments import Readings

__all__ = ["INSTRUMENTS", "REPLACEMENTS", "Instruments", "covered", "unverified_flags"]

_NEVER = np.iinfo(np.int64).min
_EVER = np.iinfo(np.int64).max


def _us(expr: str) -> str:
    return f"(extract(epoch FROM {expr}) * 1000000)::int8"


# The instruments of the run's enterprises, with their verification periods as [start of
# valid_from, start of the day after valid_until) in the zone's local time ($2).  Read per
# enterprise (an index scan each), not per item: the registry of an enterprise is small,
# and matching its instruments to items is a dictionary look-up.
INSTRUMENTS = f"""
SELECT m.enterprise, m.ser_no, m.data_codes, m.align_state, {_us('m.retired_at')} AS retired, p.lo, p.hi
FROM unnest($1::text[]) AS u(e)
CROSS JOIN LATERAL (SELECT * FROM meters m WHERE m.enterprise = u.e OFFSET 0) AS m
CROSS JOIN LATERAL (
  SELECT array_agg({_us("(v.valid_from::timestamp AT TIME ZONE $2)")}) AS lo,
         array_agg({_us("((v.valid_until + 1)::timestamp AT TIME ZONE $2)")}) AS hi
  FROM meter_verifications v WHERE v.enterprise = m.enterprise AND v.ser_no = m.ser_no
) AS p
"""

REPLACEMENTS = f"""
SELECT r.enterprise, r.code, {_us('r.replaced_at')} AS at, r.old_ser_no, r.new_ser_no
FROM unnest($1::text[]) AS u(e)
CROSS JOIN LATERAL (SELECT * FROM meter_replacements r WHERE r.enterprise = u.e OFFSET 0) AS r
"""


class Instruments:
    """Per item, the stretches of time in which its readings are UNVERIFIED, as
    half-open intervals ``[lo, hi)`` of microseconds (they may overlap)."""

    __slots__ = ("hi", "item", "lo")

    def __init__(self, item: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        self.item, self.lo, self.hi = item, lo, hi

    @classmethod
    def from_rows(cls, index: Mapping[tuple[str, str], int], meters: Sequence[Any],
                  replacements: Sequence[Any]) -> Instruments:
        """From rows of :data:`INSTRUMENTS` and :data:`REPLACEMENTS`; ``index`` maps the
        (enterprise, code) of the items to judge to their item index."""
        since: dict[tuple[str, str, str], int] = {}  # (enterprise, code, new serial) -> from
        ends: dict[tuple[str, str, str], list[int]] = {}  # (enterprise, code, old serial) -> times
        for r in replacements:
            if r["new_ser_no"]:
                key = (r["enterprise"], r["code"], r["new_ser_no"])
                since[key] = max(since.get(key, _NEVER), int(r["at"]))
            if r["old_ser_no"]:
                ends.setdefault((r["enterprise"], r["code"], r["old_ser_no"]), []).append(int(r["at"]))
        out_item: list[int] = []
        out_lo: list[int] = []
        out_hi: list[int] = []
        for m in meters:  # one per instrument: a handful per item
            for code in m["data_codes"]:
                item = index.get((m["enterprise"], code))
                if item is None:
                    continue
                key = (m["enterprise"], code, m["ser_no"])
                start = since.get(key, _NEVER)
                until = _EVER if m["retired"] is None else int(m["retired"])
                until = min([until, *(t for t in ends.get(key, ()) if t > start)])
                for lo, hi in _bad(str(m["align_state"]), start, until, m["lo"], m["hi"]):
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
    index = {(items.enterprise[i], items.code[i]): i for i in u.tolist()}
    enterprises = sorted({e for e, _ in index})
    meters = await conn.fetch(INSTRUMENTS, enterprises, zone.key)
    if not meters:
        return flags
    replacements = await conn.fetch(REPLACEMENTS, enterprises)
    bad = Instruments.from_rows(index, meters, replacements)
    flags[covered(r.item, r.ts, bad.item, bad.lo, bad.hi)] = UNVERIFIED
    return flags
