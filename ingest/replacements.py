"""Recorded meter replacements: the register values on both sides of a changed meter.

A replacement is stored in ``meter_replacements`` (by ``nhjc meters load`` when an
instrument entry says what it replaced, or by ``nhjc meters replace``).  Processing then
reads it and turns the register's jump at that time into known consumption.  Recording
one after the readings arrived queues the item's periods for recomputation, in the same
transaction, so a crash in between loses nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from ingest.registry import queue_item_recompute

__all__ = ["Replacement", "ReplacementError", "record_replacement"]


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


async def record_replacement(conn: asyncpg.Connection, r: Replacement, source: str) -> bool:
    """Store a replacement (the same item and time again replaces the values).  Returns
    whether anything changed; a change queues the item's recomputation."""
    async with conn.transaction():
        row = await conn.fetchrow(_UPSERT, r.enterprise, r.code, r.replaced_at, r.old_ser_no,
                                  r.new_ser_no, r.old_final, r.new_initial, source)
        if row is None:
            return False
        await queue_item_recompute(conn, r.enterprise, r.code)
        return True
