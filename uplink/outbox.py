"""The durable outbox: every statement the uplink runs against the database.

Rows enter ``uplink_outbox`` in two ways, both server-side ``INSERT ... SELECT`` from
``consumption`` (nothing is copied through Python):

- the schedule: when periods close, all their rows, with their due time (``enqueue``);
- the revision cursor: a row whose ``revision`` moved after its period was enqueued
  (late data) becomes pending again (``feed``).

Only measured periods enter: a consumption row with coverage 0 is never enqueued.  One
already in the outbox whose coverage fell to 0 is re-queued all the same, so the
sender sees it and withdraws it (:meth:`Outbox.withdraw`) instead of sending it.

An upsert never moves a row backwards: it changes only when the consumption revision
is newer than the one the row carries.  A pending row keeps its schedule: its first
send time, or its retry backoff; a row that was sent and is waiting to be sent again
carries the new value and waits until the period has been quiet for ``resend_quiet_s``
(at most ``resend_max_wait_s`` after its first change).  An acked or withdrawn row
becomes pending again, due once the period has been quiet that long; a rejected one at
once (the platform holds nothing of it).
A backlog that revises a period with every batch therefore costs one more send once it
is drained, not one per batch, while a period never sent goes on its schedule.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import asyncpg

from uplink.adapters import Registration
from uplink.records import Record
from uplink.schedule import DUE_SQL, STAT_TYPES

__all__ = ["Backlog", "DueRow", "ItemRow", "Outbox", "Outcomes"]

_UPSERT = """
INSERT INTO uplink_outbox AS o (target, enterprise, code, stat_type, period_start, revision,
                                due_at, next_attempt_at, queued_at)
SELECT $1, c.enterprise, c.code, c.stat_type, c.period_start, c.revision,
       q.due, greatest(q.due, $2), $2
FROM consumption c
LEFT JOIN uplink_device d ON d.target = $1 AND d.enterprise = c.enterprise
CROSS JOIN LATERAL (SELECT {due} AS due) q
WHERE {where}
ON CONFLICT (target, enterprise, code, stat_type, period_start) DO UPDATE SET
    revision = EXCLUDED.revision,
    state = 'pending',
    attempts = CASE WHEN o.state = 'pending' THEN o.attempts ELSE 0 END,
    next_attempt_at = CASE
        -- never sent (first send on schedule) or failing (its backoff): unchanged
        WHEN o.state = 'pending' AND (o.sent_revision IS NULL OR o.last_error IS NOT NULL)
            THEN o.next_attempt_at
        -- sent, waiting to go again: quiet again, but not past the longest wait
        WHEN o.state = 'pending'
            THEN greatest(o.due_at, least(EXCLUDED.queued_at + $6::interval, o.queued_at + $7::interval))
        -- refused: the platform holds nothing of it, so the correction goes at once
        WHEN o.state = 'rejected' THEN greatest(o.due_at, EXCLUDED.queued_at)
        ELSE greatest(o.due_at, EXCLUDED.queued_at + $6::interval) END,
    queued_at = CASE WHEN o.state = 'pending' THEN o.queued_at ELSE EXCLUDED.queued_at END
WHERE o.revision < EXCLUDED.revision
""".replace("{due}", DUE_SQL.format(tz="$3", delay="$4", upload="COALESCE(d.upload_time, $5)"))

# A coverage-0 row is never enqueued; one already in the outbox goes on being followed.
_MEASURED = """ AND (c.coverage > 0 OR EXISTS (
    SELECT 1 FROM uplink_outbox x WHERE x.target = $1 AND x.enterprise = c.enterprise AND x.code = c.code
    AND x.stat_type = c.stat_type AND x.period_start = c.period_start))"""

_ENQUEUE = _UPSERT.replace(
    "{where}", "c.stat_type = $8 AND c.period_start >= $9 AND c.period_start < $10" + _MEASURED)
_FEED = _UPSERT.replace(
    "{where}",
    "c.revision > $8 AND c.revision <= $9"
    " AND c.period_start >= ($10::timestamptz[])[c.stat_type + 1]"
    " AND c.period_start < ($11::timestamptz[])[c.stat_type + 1]" + _MEASURED)

_FETCH_DUE = """
SELECT o.enterprise, o.code, o.stat_type, o.period_start, o.attempts,
       c.value, c.valid, c.revision, i.scope, i.input_type,
       c.coverage, o.revision AS queued_revision, o.sent_revision IS NOT NULL AS sent
FROM uplink_outbox o
LEFT JOIN consumption c ON c.enterprise = o.enterprise AND c.code = o.code
                       AND c.stat_type = o.stat_type AND c.period_start = o.period_start
LEFT JOIN items i ON i.enterprise = o.enterprise AND i.code = o.code
WHERE o.target = $1 AND o.state = 'pending' AND o.next_attempt_at <= $2
ORDER BY o.next_attempt_at, o.enterprise  -- the order of uplink_outbox_due: no sort
LIMIT $3
"""

_MATCH = ("o.target = $1 AND o.enterprise = r.enterprise AND o.code = r.code"
          " AND o.stat_type = r.stat_type AND o.period_start = r.period_start")

# The acknowledged revision settles the row unless a newer one arrived meanwhile: then
# the newer one goes once the period has been quiet (as any change of a sent period).
_ACK = f"""
UPDATE uplink_outbox o SET
    state = CASE WHEN o.revision <= r.rev THEN 'acked' ELSE 'pending' END,
    revision = greatest(o.revision, r.rev),
    attempts = o.attempts + 1,
    next_attempt_at = CASE WHEN o.revision <= r.rev THEN o.next_attempt_at ELSE r.at + $9::interval END,
    queued_at = CASE WHEN o.revision <= r.rev THEN o.queued_at ELSE r.at END,
    sent_at = r.at, sent_revision = r.rev, sent_value = r.val,
    acked_at = r.at, acked_revision = r.rev, last_error = NULL
FROM unnest($2::text[], $3::text[], $4::int2[], $5::timestamptz[], $6::int8[], $7::float8[],
            $8::timestamptz[]) AS r(enterprise, code, stat_type, period_start, rev, val, at)
WHERE {_MATCH}
"""
_RETRY = f"""
UPDATE uplink_outbox o SET
    attempts = o.attempts + 1,
    next_attempt_at = r.next,
    last_error = r.err,
    sent_at = CASE WHEN r.sent THEN $6 ELSE o.sent_at END,
    sent_revision = CASE WHEN r.sent THEN r.rev ELSE o.sent_revision END,
    sent_value = CASE WHEN r.sent THEN r.val ELSE o.sent_value END
FROM unnest($2::text[], $3::text[], $4::int2[], $5::timestamptz[], $7::int8[], $8::float8[],
            $9::timestamptz[], $10::text[], $11::bool[])
     AS r(enterprise, code, stat_type, period_start, rev, val, next, err, sent)
WHERE {_MATCH} AND o.state = 'pending'
"""
_REJECT = f"""
UPDATE uplink_outbox o SET
    state = CASE WHEN o.revision <= r.rev THEN 'rejected' ELSE 'pending' END,
    revision = greatest(o.revision, r.rev),
    attempts = o.attempts + 1,
    next_attempt_at = CASE WHEN o.revision <= r.rev THEN o.next_attempt_at ELSE $6 END,
    sent_at = $6, sent_revision = r.rev, sent_value = r.val,
    rejected_at = $6, rejected_status = r.status, rejected_message = r.msg, rejected_reason = r.reason,
    last_error = 'rejected: ' || r.msg
FROM unnest($2::text[], $3::text[], $4::int2[], $5::timestamptz[], $7::int8[], $8::float8[],
            $9::int4[], $10::text[], $11::text[])
     AS r(enterprise, code, stat_type, period_start, rev, val, status, msg, reason)
WHERE {_MATCH}
"""
# Both only while the row still carries the revision the sender looked at: a newer
# one (the period measured again) keeps it pending.
_FORGET = (f"DELETE FROM uplink_outbox o USING unnest($2::text[], $3::text[], $4::int2[], $5::timestamptz[],"
           f" $6::int8[]) AS r(enterprise, code, stat_type, period_start, rev)"
           f" WHERE {_MATCH} AND o.state = 'pending' AND o.revision = r.rev")
_WITHDRAW = f"""
UPDATE uplink_outbox o SET state = 'withdrawn', withdrawn_at = $7, last_error = NULL
FROM unnest($2::text[], $3::text[], $4::int2[], $5::timestamptz[], $6::int8[])
     AS r(enterprise, code, stat_type, period_start, rev)
WHERE {_MATCH} AND o.state = 'pending' AND o.revision = r.rev
"""


def _count(status: str) -> int:
    """Rows affected, from asyncpg's command tag ("INSERT 0 12", "UPDATE 3")."""
    try:
        return int(status.rsplit(" ", 1)[1])
    except (IndexError, ValueError):
        return 0


@dataclass(frozen=True, slots=True)
class DueRow:
    """A pending outbox row joined with its current consumption and item (value None:
    the consumption row is gone).  ``queued_revision`` is the revision the outbox row
    carries; ``sent``: a request carried this period to the target before."""

    enterprise: str
    code: str
    stat_type: int
    period_start: datetime
    attempts: int
    value: float | None
    valid: bool | None
    revision: int | None
    scope: int | None
    input_type: int | None
    coverage: float | None
    queued_revision: int
    sent: bool

    @property
    def key(self) -> tuple[str, str, int, datetime]:
        return (self.enterprise, self.code, self.stat_type, self.period_start)

    @property
    def measured(self) -> bool:
        """The period still has a measured value (a row with coverage above 0)."""
        return self.value is not None and self.coverage is not None and self.coverage > 0


@dataclass(frozen=True, slots=True)
class ItemRow:
    enterprise: str
    code: str
    name: str
    energy: str
    unit: str
    kind: str
    min: float | None
    max: float | None
    scope: int
    input_type: int


@dataclass(frozen=True, slots=True)
class Backlog:
    due: int                    # pending and past their due time
    waiting: int                # pending, not yet due (e.g. days before the upload time)
    oldest: datetime | None     # when the oldest due record became sendable
    rejected: int


@dataclass
class Outcomes:
    """What one sending round learned, written back in one transaction."""

    acked: list[tuple[Record, datetime]] = field(default_factory=list)
    retried: list[tuple[Record, datetime, str, bool]] = field(default_factory=list)  # next, error, sent
    # status, message, reason (one of uplink.errors.REJECT_REASONS)
    rejected: list[tuple[Record, int, str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.acked) + len(self.retried) + len(self.rejected)


def _due_columns(rows: Sequence[DueRow]) -> tuple[list[str], list[str], list[int], list[datetime], list[int]]:
    return ([r.enterprise for r in rows], [r.code for r in rows], [r.stat_type for r in rows],
            [r.period_start for r in rows], [r.queued_revision for r in rows])


def _columns(records: Iterable[Record]) -> tuple[list[str], list[str], list[int], list[datetime]]:
    rs = list(records)
    return ([r.enterprise for r in rs], [r.code for r in rs], [r.stat_type for r in rs],
            [r.period_start for r in rs])


class Outbox:
    """One target's view of the outbox tables."""

    def __init__(self, pool: asyncpg.Pool, target: str, *, zone: ZoneInfo,
                 realtime_delay: timedelta, upload_time: time, resend_quiet: timedelta,
                 resend_max_wait: timedelta) -> None:
        self._pool = pool
        self.target = target
        self._tz = zone.key  # the due-time rule runs in SQL, which takes the zone's name
        self._delay = realtime_delay
        self._upload = upload_time
        self._quiet = resend_quiet
        self._max_wait = max(resend_max_wait, resend_quiet)

    # -- windows and cursor ------------------------------------------------------------

    async def load_windows(self, initial: dict[int, datetime]) -> dict[int, tuple[datetime, datetime]]:
        """(since, through) per statType, created from ``initial`` on the first start."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                "INSERT INTO uplink_window (target, stat_type, since, through) VALUES ($1, $2, $3, $3)"
                " ON CONFLICT DO NOTHING",
                [(self.target, s, initial[s]) for s in STAT_TYPES])
            rows = await conn.fetch(
                "SELECT stat_type, since, through FROM uplink_window WHERE target = $1", self.target)
        return {r["stat_type"]: (r["since"], r["through"]) for r in rows}

    async def last_revision(self) -> int:
        """The highest consumption revision handed out so far (committed or not).
        The sequence must keep CACHE 1 (the default) for this to mean anything."""
        row = await self._pool.fetchrow("SELECT last_value, is_called FROM consumption_revision")
        return int(row["last_value"]) if row["is_called"] else 0

    async def revision_mark(self) -> tuple[int, datetime]:
        """:meth:`last_revision` and the database's clock when it was read: every
        transaction that took a revision up to it began before that time."""
        row = await self._pool.fetchrow(
            "SELECT last_value, is_called, clock_timestamp() AS at FROM consumption_revision")
        return (int(row["last_value"]) if row["is_called"] else 0), row["at"]

    async def oldest_open_transaction(self) -> datetime | None:
        """When the oldest transaction still open on this database (other than this
        statement's) began; None when there is none (or none this role may see)."""
        oldest: datetime | None = await self._pool.fetchval(
            "SELECT min(xact_start) FROM pg_stat_activity WHERE datname = current_database()"
            " AND backend_type = 'client backend' AND pid <> pg_backend_pid()")
        return oldest

    async def load_cursor(self, initial: int) -> int:
        async with self._pool.acquire() as conn:
            await conn.execute("INSERT INTO uplink_cursor (target, revision) VALUES ($1, $2)"
                               " ON CONFLICT DO NOTHING", self.target, initial)
            return int(await conn.fetchval(
                "SELECT revision FROM uplink_cursor WHERE target = $1", self.target))

    async def save_cursor(self, revision: int) -> None:
        await self._pool.execute("UPDATE uplink_cursor SET revision = $2 WHERE target = $1",
                                 self.target, revision)

    # -- putting rows in ---------------------------------------------------------------

    async def enqueue(self, stat_type: int, start: datetime, end: datetime, now: datetime) -> int:
        """Enqueue the periods of one type starting in [start, end) and move the
        window's ``through`` to ``end``, atomically."""
        async with self._pool.acquire() as conn, conn.transaction():
            status = await conn.execute(_ENQUEUE, self.target, now, self._tz, self._delay, self._upload,
                                        self._quiet, self._max_wait, stat_type, start, end)
            await conn.execute("UPDATE uplink_window SET through = $3 WHERE target = $1 AND stat_type = $2",
                               self.target, stat_type, end)
        return _count(status)

    async def feed(self, after: int, upto: int, windows: dict[int, tuple[datetime, datetime]],
                   now: datetime) -> int:
        """Re-queue rows with a revision in (after, upto] whose period is inside the
        target's window (enqueued already): late data."""
        since = [windows[s][0] for s in STAT_TYPES]
        through = [windows[s][1] for s in STAT_TYPES]
        status = await self._pool.execute(_FEED, self.target, now, self._tz, self._delay, self._upload,
                                          self._quiet, self._max_wait, after, upto, since, through)
        return _count(status)

    # -- sending -----------------------------------------------------------------------

    async def fetch_due(self, now: datetime, limit: int) -> list[DueRow]:
        rows = await self._pool.fetch(_FETCH_DUE, self.target, now, limit)
        return [DueRow(*r.values()) for r in rows]

    async def forget(self, rows: Sequence[DueRow]) -> int:
        """Drop rows never sent whose period has nothing measured (coverage 0, or the
        consumption row gone, e.g. dropped by retention): there is nothing to send."""
        if not rows:
            return 0
        return _count(await self._pool.execute(_FORGET, self.target, *_due_columns(rows)))

    async def withdraw(self, rows: Sequence[DueRow], now: datetime) -> int:
        """Rows sent before whose period has nothing measured any more: kept, marked
        ``withdrawn``, not sent (the platforms keep what they had; they have no call to
        delete a record)."""
        if not rows:
            return 0
        return _count(await self._pool.execute(_WITHDRAW, self.target, *_due_columns(rows), now))

    async def record(self, out: Outcomes, now: datetime) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            if out.acked:
                recs = [r for r, _ in out.acked]
                await conn.execute(_ACK, self.target, *_columns(recs), [r.revision for r in recs],
                                   [r.value for r in recs], [at for _, at in out.acked], self._quiet)
            if out.retried:
                recs = [r for r, *_ in out.retried]
                await conn.execute(_RETRY, self.target, *_columns(recs), now,
                                   [r.revision for r in recs], [r.value for r in recs],
                                   [n for _, n, _, _ in out.retried], [e for _, _, e, _ in out.retried],
                                   [s for *_, s in out.retried])
            if out.rejected:
                recs = [r for r, *_ in out.rejected]
                await conn.execute(_REJECT, self.target, *_columns(recs), now,
                                   [r.revision for r in recs], [r.value for r in recs],
                                   [s for _, s, _, _ in out.rejected], [m for _, _, m, _ in out.rejected],
                                   [why for *_, why in out.rejected])

    async def items(self, enterprises: Sequence[str]) -> dict[str, list[ItemRow]]:
        rows = await self._pool.fetch(
            "SELECT enterprise, code, name, energy, unit, kind, min, max, scope, input_type"
            " FROM items WHERE enterprise = ANY($1::text[]) ORDER BY enterprise, code", list(enterprises))
        found: dict[str, list[ItemRow]] = {e: [] for e in enterprises}
        for r in rows:
            found[r["enterprise"]].append(ItemRow(*r.values()))
        return found

    # -- devices -----------------------------------------------------------------------

    async def save_registration(self, enterprise: str, reg: Registration, now: datetime) -> None:
        await self._pool.execute(
            "INSERT INTO uplink_device (target, enterprise, device_id, info_url, data_url, upload_time,"
            " registered_at) VALUES ($1, $2, $3, $4, $5, $6, $7)"
            " ON CONFLICT (target, enterprise) DO UPDATE SET device_id = EXCLUDED.device_id,"
            " info_url = EXCLUDED.info_url, data_url = EXCLUDED.data_url,"
            " upload_time = EXCLUDED.upload_time, registered_at = EXCLUDED.registered_at,"
            " last_error = NULL",
            self.target, enterprise, reg.device_id, reg.info_url, reg.data_url, reg.upload_time, now)

    async def save_config(self, enterprise: str, config_hash: str, n_items: int, now: datetime) -> None:
        await self._pool.execute(
            "UPDATE uplink_device SET config_hash = $3, config_items = $4, config_sent_at = $5,"
            " last_error = NULL WHERE target = $1 AND enterprise = $2",
            self.target, enterprise, config_hash, n_items, now)

    async def save_device_error(self, enterprise: str, error: str, now: datetime) -> None:
        await self._pool.execute(
            "INSERT INTO uplink_device (target, enterprise, last_error, last_error_at)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (target, enterprise) DO UPDATE"
            " SET last_error = EXCLUDED.last_error, last_error_at = EXCLUDED.last_error_at",
            self.target, enterprise, error, now)

    # -- watching and housekeeping -----------------------------------------------------

    async def backlog(self, now: datetime) -> Backlog:
        # Two statements, each over its partial index; acked rows are never read.
        pending = await self._pool.fetchrow(
            "SELECT count(*) FILTER (WHERE due_at <= $2) AS due,"
            " count(*) FILTER (WHERE due_at > $2) AS waiting,"
            " min(greatest(due_at, queued_at)) FILTER (WHERE due_at <= $2) AS oldest"
            " FROM uplink_outbox WHERE target = $1 AND state = 'pending'", self.target, now)
        rejected = await self._pool.fetchval(
            "SELECT count(*) FROM uplink_outbox WHERE target = $1 AND state = 'rejected'", self.target)
        return Backlog(pending["due"], pending["waiting"], pending["oldest"], rejected)

    async def prune(self, acked_before: datetime) -> int:
        """Forget acknowledged (and withdrawn) rows older than the retention; a later
        change to one of their periods simply enqueues it again."""
        status = await self._pool.execute(
            "DELETE FROM uplink_outbox WHERE target = $1 AND state = 'acked' AND acked_at < $2",
            self.target, acked_before)
        withdrawn = await self._pool.execute(
            "DELETE FROM uplink_outbox WHERE target = $1 AND state = 'withdrawn' AND withdrawn_at < $2",
            self.target, acked_before)
        return _count(status) + _count(withdrawn)
