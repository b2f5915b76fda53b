"""The instrument outbox (``uplink_meter_outbox``): every statement the uplink runs for
measuring instruments.

Planning is server-side, like the data outbox's: each instrument (``meters``), each
verification period (``meter_verifications``) and each recorded replacement
(``meter_replacements``) becomes the object the platform is sent, built in SQL; a
row's ``hash`` is that object's digest.  An upsert changes a row only when its digest
moved: a row the platform acknowledged at that digest stays done, a changed one becomes
pending (at once: instruments have no schedule), a refused one pending again when its
content changes (as refused data records do).  The instrument tables are read again
only when their signature (row count and row versions) changed, so an idle target
costs one small statement per step.

Sending follows the data rules (:mod:`uplink.delivery`): the same backoff per row, the
same target pause, the same rejections kept with their reason.  A verification or
replacement waits while its instrument's own record is pending, so that it can quote
the dataIndex the platform gives at ``add``.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import asyncpg

from uplink.adapters.meters import MeterCall, MeterKind

__all__ = ["MeterOutbox", "MeterOutcomes", "MeterRow"]

_ALIGN = ("CASE {s} WHEN 'verified' THEN '检定' WHEN 'calibrated' THEN '校准' ELSE '未检定' END")
_DATE = "to_char({d}, 'YYYY-MM-DD')"

# The instrument object, by the platforms' field names (our reading of an unpublished
# shape, docs/uplink.md "Instruments").  Several data codes are joined with commas.
_GAUGE_OBJECT = f"""jsonb_build_object(
    'serNo', m.ser_no, 'meterName', m.meter_name, 'meterType', m.meter_type, 'meterLevel', m.meter_level,
    'dataCode', array_to_string(m.data_codes, ','), 'reportRatio', m.report_ratio,
    'precisionLevel', m.precision_level, 'manufacturer', m.manufacturer, 'model', m.model,
    'installPlace', m.install_place, 'alignState', {_ALIGN.format(s="m.align_state")},
    'alignCycle', m.align_cycle, 'lastAlignDate', {_DATE.format(d="m.last_align_date")},
    'nextAlignDate', {_DATE.format(d="m.next_align_date")}, 'alignOrg', m.align_org)"""

_UPSERT_TAIL = """
ON CONFLICT (target, enterprise, ser_no, kind, ref) DO UPDATE SET
    payload = EXCLUDED.payload, retired = EXCLUDED.retired, hash = EXCLUDED.hash,
    -- back to what the platform acknowledged: nothing to send
    state = CASE WHEN EXCLUDED.hash = o.acked_hash THEN 'acked' ELSE 'pending' END,
    attempts = CASE WHEN o.state = 'pending' THEN o.attempts ELSE 0 END,
    -- a failing row keeps its backoff; a settled or refused one goes at once
    next_attempt_at = CASE WHEN o.state = 'pending' THEN o.next_attempt_at ELSE EXCLUDED.next_attempt_at END,
    queued_at = CASE WHEN o.state = 'pending' THEN o.queued_at ELSE EXCLUDED.queued_at END,
    last_error = CASE WHEN EXCLUDED.hash = o.acked_hash THEN NULL ELSE o.last_error END
WHERE o.hash <> EXCLUDED.hash
"""
_INSERT = ("INSERT INTO uplink_meter_outbox AS o (target, enterprise, ser_no, kind, ref, payload, retired, hash,"
           " next_attempt_at, queued_at)\n")

# Retired with no recorded replacement: the instrument is gone (Yunnan: delete).  One
# retired because it was replaced stays: the replacement call says what happened.
_PLAN = {
    "gauge": _INSERT + f"""
SELECT $1, m.enterprise, m.ser_no, 'gauge', '', p.obj, p.retired, md5(p.obj::text || p.retired::text), $2, $2
FROM meters m
CROSS JOIN LATERAL (SELECT {_GAUGE_OBJECT} AS obj,
    m.retired_at IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM meter_replacements r WHERE r.enterprise = m.enterprise AND r.old_ser_no = m.ser_no)
    AS retired) p
""" + _UPSERT_TAIL,
    "verify": _INSERT + f"""
SELECT $1, v.enterprise, v.ser_no, 'verify', {_DATE.format(d="v.valid_from")} || '/' || {_DATE.format(d="v.valid_until")},
       p.obj, false, md5(p.obj::text), $2, $2
FROM meter_verifications v
LEFT JOIN meters m ON m.enterprise = v.enterprise AND m.ser_no = v.ser_no
CROSS JOIN LATERAL (SELECT jsonb_build_object(
    'serNo', v.ser_no, 'alignState', {_ALIGN.format(s="v.align_state")}, 'alignOrg', v.align_org,
    'alignCycle', m.align_cycle, 'lastAlignDate', {_DATE.format(d="v.valid_from")},
    'nextAlignDate', {_DATE.format(d="v.valid_until")}) AS obj) p
""" + _UPSERT_TAIL,
    "replace": _INSERT + """
SELECT $1, r.enterprise, coalesce(nullif(r.new_ser_no, ''), r.old_ser_no), 'replace',
       r.code || '@' || to_char(r.replaced_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
       p.obj, false, md5(p.obj::text), $2, $2
FROM meter_replacements r
CROSS JOIN LATERAL (SELECT jsonb_build_object(
    'serNo', coalesce(nullif(r.new_ser_no, ''), r.old_ser_no), 'oldSerNo', r.old_ser_no,
    'newSerNo', r.new_ser_no, 'dataCode', r.code,
    'replaceTime', to_char(r.replaced_at AT TIME ZONE $3, 'YYYY-MM-DD HH24:MI:SS'),
    'oldFinalValue', r.old_final, 'newInitialValue', r.new_initial) AS obj) p
""" + _UPSERT_TAIL,
}

# Any insert, update or delete in the three tables changes this text (row counts and
# the sum of row versions): the plan runs again only then.
_SIGNATURE = """
SELECT (SELECT count(*) || '/' || coalesce(sum(xmin::text::bigint), 0) FROM meters) || ';' ||
       (SELECT count(*) || '/' || coalesce(sum(xmin::text::bigint), 0) FROM meter_verifications) || ';' ||
       (SELECT count(*) || '/' || coalesce(sum(xmin::text::bigint), 0) FROM meter_replacements)
"""

# A verification or replacement waits while its instrument's record is pending (the
# add that gives the dataIndex it quotes); instrument records go first.
_FETCH_DUE = """
SELECT o.enterprise, o.ser_no, o.kind, o.ref, o.payload, o.retired, o.hash, o.attempts,
       g.data_index, og.data_index AS old_data_index
FROM uplink_meter_outbox o
LEFT JOIN uplink_meter_outbox g ON g.target = o.target AND g.enterprise = o.enterprise
     AND g.ser_no = o.ser_no AND g.kind = 'gauge' AND g.ref = ''
LEFT JOIN uplink_meter_outbox og ON o.kind = 'replace' AND og.target = o.target AND og.enterprise = o.enterprise
     AND og.ser_no = o.payload->>'oldSerNo' AND og.kind = 'gauge' AND og.ref = ''
WHERE o.target = $1 AND o.state = 'pending' AND o.next_attempt_at <= $2
  AND (o.kind = 'gauge' OR g.state IS DISTINCT FROM 'pending')
ORDER BY o.kind <> 'gauge', o.next_attempt_at, o.enterprise
LIMIT $3
"""

_KEYS = "$2::text[], $3::text[], $4::text[], $5::text[]"
_MATCH = ("o.target = $1 AND o.enterprise = r.enterprise AND o.ser_no = r.ser_no AND o.kind = r.kind"
          " AND o.ref = r.ref")
# Acknowledged at the digest sent: done, unless the content moved meanwhile (then it
# goes again at once).  A delete forgets the dataIndex: the platform did.
_ACK = f"""
UPDATE uplink_meter_outbox o SET
    state = CASE WHEN o.hash = r.hash THEN 'acked' ELSE 'pending' END,
    attempts = CASE WHEN o.hash = r.hash THEN o.attempts + 1 ELSE 0 END,
    next_attempt_at = CASE WHEN o.hash = r.hash THEN o.next_attempt_at ELSE r.at END,
    sent_at = CASE WHEN r.sent THEN r.at ELSE o.sent_at END,
    acked_at = r.at, acked_hash = r.hash, last_error = NULL,
    data_index = CASE WHEN r.deleted THEN NULL ELSE coalesce(r.idx, o.data_index) END
FROM unnest({_KEYS}, $6::text[], $7::text[], $8::bool[], $9::bool[], $10::timestamptz[])
     AS r(enterprise, ser_no, kind, ref, hash, idx, deleted, sent, at)
WHERE {_MATCH}
"""
_RETRY = f"""
UPDATE uplink_meter_outbox o SET
    attempts = o.attempts + 1, next_attempt_at = r.next, last_error = r.err,
    sent_at = CASE WHEN r.sent THEN $6 ELSE o.sent_at END
FROM unnest({_KEYS}, $7::timestamptz[], $8::text[], $9::bool[]) AS r(enterprise, ser_no, kind, ref, next, err, sent)
WHERE {_MATCH} AND o.state = 'pending'
"""
_REJECT = f"""
UPDATE uplink_meter_outbox o SET
    state = CASE WHEN o.hash = r.hash THEN 'rejected' ELSE 'pending' END,
    attempts = o.attempts + 1,
    next_attempt_at = CASE WHEN o.hash = r.hash THEN o.next_attempt_at ELSE $6 END,
    sent_at = CASE WHEN r.status > 0 THEN $6 ELSE o.sent_at END,
    rejected_at = $6, rejected_status = r.status, rejected_message = r.msg, rejected_reason = r.reason,
    last_error = 'rejected: ' || r.msg
FROM unnest({_KEYS}, $7::text[], $8::int4[], $9::text[], $10::text[])
     AS r(enterprise, ser_no, kind, ref, hash, status, msg, reason)
WHERE {_MATCH}
"""


@dataclass(frozen=True, slots=True)
class MeterRow:
    """A pending instrument row: the call to make, the digest of what it carries, and
    how many attempts this content has had."""

    call: MeterCall
    hash: str
    attempts: int


@dataclass
class MeterOutcomes:
    """What one round learned of instrument rows, written back in one transaction."""

    # data_index, deleted, sent (False: nothing needed sending), at
    acked: list[tuple[MeterRow, str | None, bool, bool, datetime]] = field(default_factory=list)
    retried: list[tuple[MeterRow, datetime, str, bool]] = field(default_factory=list)  # next, error, sent
    rejected: list[tuple[MeterRow, int, str, str]] = field(default_factory=list)  # status, message, reason


def _keys(rows: Sequence[MeterRow]) -> tuple[list[str], list[str], list[str], list[str]]:
    return ([r.call.enterprise for r in rows], [r.call.ser_no for r in rows], [r.call.kind for r in rows],
            [r.call.ref for r in rows])


def _count(status: str) -> int:
    try:
        return int(status.rsplit(" ", 1)[1])
    except (IndexError, ValueError):
        return 0


class MeterOutbox:
    """One target's instrument rows, for the ``kinds`` its platform has a call for."""

    def __init__(self, pool: asyncpg.Pool, target: str, *, kinds: Collection[MeterKind], zone: str) -> None:
        self._pool = pool
        self.target = target
        self.kinds = tuple(k for k in ("gauge", "verify", "replace") if k in kinds)
        self._zone = zone
        self._signature: str | None = None

    async def plan(self, now: datetime) -> dict[str, int]:
        """Queue what changed in the instrument tables since the last look: rows made
        pending, by kind (empty when nothing changed)."""
        if not self.kinds:
            return {}
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            # One snapshot: the signature describes exactly the rows planned from.
            signature = str(await conn.fetchval(_SIGNATURE))
            if signature == self._signature:
                return {}
            queued = {}
            for kind in self.kinds:
                args: tuple[Any, ...] = (self.target, now, self._zone) if kind == "replace" else (self.target, now)
                queued[kind] = _count(await conn.execute(_PLAN[kind], *args))
        self._signature = signature
        return queued

    async def fetch_due(self, now: datetime, limit: int) -> list[MeterRow]:
        if not self.kinds:
            return []
        rows = await self._pool.fetch(_FETCH_DUE, self.target, now, limit)
        return [MeterRow(MeterCall(kind=cast(MeterKind, r["kind"]), enterprise=r["enterprise"], ser_no=r["ser_no"],
                                   ref=r["ref"], payload=_json(r["payload"]), retired=r["retired"],
                                   data_index=r["data_index"], old_data_index=r["old_data_index"]),
                         r["hash"], r["attempts"])
                for r in rows]

    async def record(self, out: MeterOutcomes, now: datetime) -> None:
        if not (out.acked or out.retried or out.rejected):
            return
        async with self._pool.acquire() as conn, conn.transaction():
            if out.acked:
                rows = [a[0] for a in out.acked]
                await conn.execute(_ACK, self.target, *_keys(rows), [r.hash for r in rows],
                                   [a[1] for a in out.acked], [a[2] for a in out.acked], [a[3] for a in out.acked],
                                   [a[4] for a in out.acked])
            if out.retried:
                rows = [a[0] for a in out.retried]
                await conn.execute(_RETRY, self.target, *_keys(rows), now, [a[1] for a in out.retried],
                                   [a[2] for a in out.retried], [a[3] for a in out.retried])
            if out.rejected:
                rows = [a[0] for a in out.rejected]
                await conn.execute(_REJECT, self.target, *_keys(rows), now, [r.hash for r in rows],
                                   [a[1] for a in out.rejected], [a[2] for a in out.rejected],
                                   [a[3] for a in out.rejected])

    async def backlog(self, now: datetime) -> tuple[int, int]:
        """(rows pending and due, rows refused and kept)."""
        if not self.kinds:
            return 0, 0
        row = await self._pool.fetchrow(
            "SELECT count(*) FILTER (WHERE state = 'pending' AND next_attempt_at <= $2) AS due,"
            " count(*) FILTER (WHERE state = 'rejected') AS rejected"
            " FROM uplink_meter_outbox WHERE target = $1 AND state <> 'acked'", self.target, now)
        return int(row["due"]), int(row["rejected"])


def _json(value: Any) -> dict[str, Any]:
    """A jsonb column as a dict, whether or not the pool decodes jsonb."""
    obj = json.loads(value) if isinstance(value, str) else value
    return dict(obj)
