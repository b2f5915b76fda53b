"""Records a platform refused, as kept in the outbox: listed for an operator, and sent
again only when the operator says so.

A rejected record is never sent again on its own (the platform would refuse it the same
way, forever); it becomes pending when its period's value changes, or when
:func:`resend` is called for its target and enterprise after the cause was fixed (a
registry entry corrected, the platform's configuration mended).

Instrument rows (``uplink_meter_outbox``) follow the same rules: :func:`meter_rejections`
lists them, :func:`resend` makes an enterprise's refused rows of both kinds pending.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

__all__ = ["MeterRejection", "Rejection", "meter_rejections", "rejections", "resend"]

_LIST = """
SELECT target, enterprise, code, stat_type, period_start, rejected_at, rejected_status,
       rejected_reason, rejected_message
FROM uplink_outbox
WHERE state = 'rejected' AND ($1::text IS NULL OR target = $1)
ORDER BY rejected_at DESC, target, enterprise, code, stat_type, period_start
LIMIT $2
"""

# attempts back to 0: the operator's decision starts a new series of tries.  Due at its
# own due time, which a refused record has passed (it was sent): at once, by any clock.
_RESEND = """
UPDATE uplink_outbox SET state = 'pending', attempts = 0, next_attempt_at = due_at, last_error = NULL
WHERE target = $1 AND enterprise = $2 AND state = 'rejected'
"""
_RESEND_METERS = """
UPDATE uplink_meter_outbox SET state = 'pending', attempts = 0, last_error = NULL
WHERE target = $1 AND enterprise = $2 AND state = 'rejected'
"""
_LIST_METERS = """
SELECT target, enterprise, ser_no, kind, ref, rejected_at, rejected_status, rejected_reason, rejected_message
FROM uplink_meter_outbox
WHERE state = 'rejected' AND ($1::text IS NULL OR target = $1)
ORDER BY rejected_at DESC, target, enterprise, ser_no, kind, ref
LIMIT $2
"""


@dataclass(frozen=True, slots=True)
class Rejection:
    target: str
    enterprise: str
    code: str                 # our item code (0000 for the enterprise total)
    stat_type: int
    period_start: datetime
    rejected_at: datetime
    status: int | None        # HTTP status; 200 when refused by a responseCode, 0 before sending
    reason: str | None        # one of uplink.errors.REJECT_REASONS (None: refused before it was kept)
    message: str | None       # the platform's own words


@dataclass(frozen=True, slots=True)
class MeterRejection:
    target: str
    enterprise: str
    ser_no: str
    kind: str                 # gauge, verify or replace
    ref: str                  # verify: the period 'from/until'; replace: 'code@time'
    rejected_at: datetime
    status: int               # HTTP status; 200 when refused by a responseCode, 0 before sending
    reason: str               # one of uplink.errors.REJECT_REASONS
    message: str


async def meter_rejections(conn: asyncpg.Connection | asyncpg.Pool, *, target: str | None,
                           limit: int) -> list[MeterRejection]:
    """The latest ``limit`` refused instrument rows, of one target or all."""
    rows = await conn.fetch(_LIST_METERS, target, limit)
    return [MeterRejection(*r.values()) for r in rows]


async def rejections(conn: asyncpg.Connection | asyncpg.Pool, *, target: str | None,
                     limit: int) -> list[Rejection]:
    """The latest ``limit`` rejected records, of one target or all."""
    rows = await conn.fetch(_LIST, target, limit)
    return [Rejection(r["target"], r["enterprise"], r["code"], r["stat_type"], r["period_start"],
                      r["rejected_at"], r["rejected_status"], r["rejected_reason"], r["rejected_message"])
            for r in rows]


async def resend(conn: asyncpg.Connection | asyncpg.Pool, *, target: str, enterprise: str) -> int:
    """Make the enterprise's rejected records and instrument rows at ``target`` pending
    again, due at once; how many."""
    status = await conn.execute(_RESEND, target, enterprise)
    # An instrument row keeps its next_attempt_at, which it had passed when it was
    # sent and refused: due at once, by any clock.
    meters = await conn.execute(_RESEND_METERS, target, enterprise)
    return _count(status) + _count(meters)


def _count(status: object) -> int:
    try:
        return int(str(status).rsplit(" ", 1)[1])
    except (IndexError, ValueError):
        return 0
