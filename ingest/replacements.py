"""Recorded meter replacements: the register values on both sides of a changed meter.

A replacement is stored in ``meter_replacements`` (by ``nhjc meters load`` when an
instrument entry says what it replaced, or by ``nhjc meters replace``).  Processing then
reads it and turns the register's jump at that time into known consumption.  Recording
one after the readings arrived queues the one segment it falls in (from the last reading
before its time to the first one at or after it) for recomputation, in the same
transaction, so a crash in between loses nothing; the aggregator recomputes the periods
that segment touches and their days, months, years and totals.  When the old meter is in
the instrument registry and not retired yet, it is retired at the replacement time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import asyncpg

__all__ = ["Replacement", "ReplacementError", "check_item", "record_replacement",
           "withdraw_replacement"]


class ReplacementError(ValueError):
    """A replacement that cannot be right (its message names the problem)."""


@dataclass(frozen=True, slots=True)
class Replacement:
    enterprise: str
    code: str  # hyphenated data code of the item whose meter was replaced
    replaced_at: datetime  # timezone-aware
    old_final: float  # the old meter's register at replaced_at, as it showed it
    new_initial: float  # the new meter's register at replaced_at, as it showed it
    old_ser_no: str = ""
    new_ser_no: str = ""

    def __post_init__(self) -> None:
        if self.replaced_at.tzinfo is None:
            raise ReplacementError("replacement time needs a UTC offset")
        for name in ("old_final", "new_initial"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ReplacementError(f"{name} must be a finite register value >= 0, got {value!r}")


_UPSERT = """
INSERT INTO meter_replacements AS r
    (enterprise, code, replaced_at, old_ser_no, new_ser_no, old_final, new_initial, source)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (enterprise, code, replaced_at) DO UPDATE SET
    old_ser_no = EXCLUDED.old_ser_no, new_ser_no = EXCLUDED.new_ser_no,
    old_final = EXCLUDED.old_final, new_initial = EXCLUDED.new_initial,
    source = EXCLUDED.source, recorded_at = now()
WHERE (r.old_ser_no, r.new_ser_no, r.old_final, r.new_initial)
      IS DISTINCT FROM (EXCLUDED.old_ser_no, EXCLUDED.new_ser_no, EXCLUDED.old_final, EXCLUDED.new_initial)
RETURNING id
"""


_FINITE = "value < 'Infinity'::float8 AND value > '-Infinity'::float8"

# The segment holding the replacement time T: (last finite reading before T, first one at
# or after T] (a reading exactly at T is the new meter's).  Without both there is no
# segment to change yet: the readings to come will be processed with the record.
_QUEUE_SEGMENT = f"""
INSERT INTO pending_recompute (enterprise, code, from_ts, to_ts)
SELECT $1, $2, a, b FROM (SELECT
  (SELECT max(ts) FROM readings WHERE enterprise = $1 AND code = $2 AND ts < $3 AND {_FINITE}) AS a,
  (SELECT min(ts) FROM readings WHERE enterprise = $1 AND code = $2 AND ts >= $3 AND {_FINITE}) AS b
) AS s WHERE a IS NOT NULL AND b IS NOT NULL
"""

# The old meter stops measuring at the replacement time (when the registry has it and
# has not retired it already); the change is kept in its history like a load's.
_RETIRE = """
WITH retired AS (
  UPDATE meters SET retired_at = $3, source = $4, updated_at = now()
  WHERE enterprise = $1 AND ser_no = $2 AND retired_at IS NULL
  RETURNING *
)
INSERT INTO meters_history (enterprise, ser_no, source, record)
SELECT enterprise, ser_no, source, to_jsonb(retired) - 'updated_at' FROM retired
RETURNING 1
"""

_ITEM_KIND = "SELECT kind FROM items WHERE enterprise = $1 AND code = $2"


async def check_item(conn: asyncpg.Connection, enterprise: str, code: str) -> None:
    """ReplacementError unless the item is registered and cumulative: only a register
    that counts up has a jump for a replacement to explain."""
    kind = await conn.fetchval(_ITEM_KIND, enterprise, code)
    if kind is None:
        raise ReplacementError(f"no data item {code} of enterprise {enterprise} is registered")
    if kind != "cumulative":
        raise ReplacementError(f"data item {code} is {kind}, not cumulative: a replacement only "
                               "changes what a cumulative register counts")


async def record_replacement(conn: asyncpg.Connection, r: Replacement, source: str) -> bool:
    """Store a replacement (the same item and time again replaces the values).  Returns
    whether anything changed; a change queues the recomputation of the segment it falls
    in, and retires the old meter in the registry (see the module's docstring)."""
    async with conn.transaction():
        row = await conn.fetchrow(_UPSERT, r.enterprise, r.code, r.replaced_at, r.old_ser_no,
                                  r.new_ser_no, r.old_final, r.new_initial, source)
        if row is None:
            return False
        await conn.execute(_QUEUE_SEGMENT, r.enterprise, r.code, r.replaced_at)
        if r.old_ser_no:
            await conn.fetch(_RETIRE, r.enterprise, r.old_ser_no, r.replaced_at, source)
        return True


_DELETE = """
DELETE FROM meter_replacements WHERE enterprise = $1 AND code = $2 AND replaced_at = $3
RETURNING id
"""


async def withdraw_replacement(conn: asyncpg.Connection, enterprise: str, code: str,
                               replaced_at: datetime) -> bool:
    """Remove a replacement recorded by mistake (e.g. at a wrong time): the segment it fell
    in is recomputed, a reset again unless another record explains it.  Whether there
    was one.  A meter it retired stays retired: the registry is corrected by a load."""
    async with conn.transaction():
        if await conn.fetchrow(_DELETE, enterprise, code, replaced_at) is None:
            return False
        await conn.execute(_QUEUE_SEGMENT, enterprise, code, replaced_at)
        return True
