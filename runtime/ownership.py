"""Work that must happen once, whatever the number of instances: each is *owned*.

Several ``nhjc run`` share the readings through the broker, but some work is singular:
each uplink target's sender (two senders would send a period twice, at once), the
completeness job, the quality job.  Such a stage is wrapped with :meth:`Ownership.owned`;
it then steps only in the instance that holds the job's PostgreSQL advisory lock.

Why session-level advisory locks on one dedicated connection (and not a lease table):

* The database ends the lock with the session: an owner killed (SIGKILL, OOM) closes
  its TCP connection by the kernel, the server's backend ends at once and the lock is
  free; another instance takes it at its next heartbeat (``heartbeat_s``).  No clock,
  no expiry to tune, no table to clean.
* An owner whose host vanishes without closing TCP (power, a network cut), or whose
  process is frozen (SIGSTOP, a paused VM, a blocked event loop), stops its heartbeat:
  this connection sets ``idle_session_timeout`` to ``release_after_s`` for its own
  session, so the server ends the session (and frees the locks) after that long without
  a check.  ``tcp_keepalives_*`` and ``tcp_user_timeout`` are set too, so a dead peer's
  socket does not linger either.
* The owner side must give up first, so that two instances never do the work at once:
  every ``heartbeat_s`` it checks its connection with a deadline (``deadline_s``); an
  unanswered check, the connection closing, or simply no check answered for
  ``heartbeat_s + deadline_s`` (a timer: it fires first thing when a frozen process
  thaws) marks every job lost *and cancels the owned steps in progress*, before the
  server can have freed the locks (``heartbeat_s + deadline_s < release_after_s``,
  checked by the settings).
* One connection per instance for every job; the pool is not used (a pooled
  connection would carry the lock back into the pool).  A transaction-pooling proxy
  (PgBouncer ``pool_mode=transaction``) would break session locks: connect directly.

The check and the claims are one stage (``name`` ``ownership``) run by the
:class:`~runtime.runner.StageRunner` like every other: a failed check is a step that
raises (the runner logs it and pauses ``heartbeat_s``), the next step reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge

from runtime.runner import Stage

__all__ = ["OwnedStage", "Ownership", "OwnershipEvents", "lock_key"]

log = logging.getLogger("nhjc.ownership")

# The first key of every nhjc advisory lock ("nhjc" in ASCII); the second is the job's.
NAMESPACE = 0x6E686A63


def lock_key(job: str) -> int:
    """The job's advisory lock key: CRC-32 of its name as a signed 32-bit integer (the
    same in every instance and every version)."""
    k = zlib.crc32(job.encode())
    return k - (1 << 32) if k >= 1 << 31 else k


class OwnershipEvents:
    """``nhjc_owned{work}`` (1 while this instance owns the job) and
    ``nhjc_ownership_changes_total{work,change}`` (acquired, lost, released).  The label
    is ``work``, not ``job``: Prometheus puts its own ``job`` label on every series."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._owned = Gauge("nhjc_owned", "1 while this instance owns the singular job, else 0", ["work"],
                            registry=registry)
        self._changes = Counter("nhjc_ownership_changes_total",
                                "Ownership changes of singular jobs in this instance: acquired, lost "
                                "(connection gone or unanswered), released (shutdown)",
                                ["work", "change"], registry=registry)

    def wanted(self, job: str) -> None:
        self._owned.labels(job).set(0)

    def acquired(self, job: str) -> None:
        self._owned.labels(job).set(1)
        self._changes.labels(job, "acquired").inc()
        log.info("now the owner of %s", job)

    def lost(self, job: str, why: str) -> None:
        self._owned.labels(job).set(0)
        self._changes.labels(job, "lost").inc()
        log.warning("no longer the owner of %s (%s): stopped its work", job, why)

    def released(self, job: str) -> None:
        self._owned.labels(job).set(0)
        self._changes.labels(job, "released").inc()
        log.info("released %s", job)


class Ownership:
    """The advisory locks of one instance, on one connection of their own.  A stage:
    each step checks the connection (reconnecting if needed) and tries to take the
    jobs not held yet."""

    name = "ownership"

    def __init__(self, dsn: str, *, application_name: str, heartbeat_s: float, deadline_s: float,
                 release_after_s: int, events: OwnershipEvents) -> None:
        self._dsn = dsn
        self._application_name = application_name[:63]
        self.heartbeat_s = heartbeat_s
        self._deadline_s = deadline_s
        self._release_after_s = release_after_s
        self._events = events
        self._jobs: dict[str, int] = {}  # job -> lock key
        self._held: set[str] = set()
        self._conn: asyncpg.Connection | None = None
        # One query at a time on the connection: the heartbeat and the borrowed locks.
        self._busy = asyncio.Lock()
        self._lost = asyncio.Event()  # set (and replaced) each time the held jobs are lost
        self._closed = False
        # The owned steps running now, cancelled the moment ownership is lost.
        self._running: set[asyncio.Future[bool]] = set()
        # Ownership is good until the next check is overdue; then it is given up even if
        # the check never raised (the process was frozen, the event loop blocked).
        self._expiry: asyncio.TimerHandle | None = None

    # --- what the owned stages ask --------------------------------------------------
    def owned(self, stage: Stage) -> OwnedStage:
        """``stage`` stepped only while this instance owns the job named ``stage.name``."""
        self.want(stage.name)
        return OwnedStage(stage, self)

    def want(self, job: str) -> None:
        key = lock_key(job)
        if job not in self._jobs and key in self._jobs.values():
            raise ValueError(f"job {job!r} has the lock key of another job: rename it")
        self._jobs[job] = key
        self._events.wanted(job)

    def holds(self, job: str) -> bool:
        return job in self._held

    @property
    def held(self) -> list[str]:
        return sorted(self._held)

    @property
    def lost_event(self) -> asyncio.Event:
        """Set when the jobs held now are lost (a new event after that)."""
        return self._lost

    # --- the stage ------------------------------------------------------------------
    async def step(self) -> bool:
        if self._closed:
            return False
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with self._busy, asyncio.timeout(self._deadline_s):
                conn = await self._connection()
                await self._check_and_claim(conn)
        except Exception as exc:
            why = f"no answer within {self._deadline_s:g}s" if isinstance(exc, TimeoutError) else type(exc).__name__
            self._lose(why)
            raise
        if self._expiry is not None:
            self._expiry.cancel()
        if self._held:
            # The server ends the session release_after_s after this check at the
            # earliest; we give up heartbeat_s + deadline_s after it (checked shorter).
            self._expiry = loop.call_at(started + self.heartbeat_s + self._deadline_s, self._overdue)
        return False

    def _overdue(self) -> None:
        self._expiry = None
        self._lose(f"no check answered for {self.heartbeat_s + self._deadline_s:g}s")

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            idle = max(1, self._release_after_s // 4)
            count = 3
            interval = max(1, (self._release_after_s - idle) // count)
            conn = await asyncpg.connect(self._dsn, timeout=self._deadline_s, server_settings={
                "application_name": self._application_name,
                # The server's side of "the owner is gone": a silent peer ends this
                # session (and frees its locks) after about release_after_s.
                "tcp_keepalives_idle": str(idle),
                "tcp_keepalives_interval": str(interval),
                "tcp_keepalives_count": str(count),
                "tcp_user_timeout": str(self._release_after_s * 1000),
                # Whatever TCP says: a session whose owner stopped checking ends.
                "idle_session_timeout": str(self._release_after_s * 1000),
            })
            conn.add_termination_listener(self._terminated)
            self._conn = conn
        return self._conn

    async def _check_and_claim(self, conn: asyncpg.Connection) -> None:
        free = {job: key for job, key in self._jobs.items() if job not in self._held}
        if not free:
            await conn.fetchval("SELECT 1")
            return
        rows = await conn.fetch("SELECT k, pg_try_advisory_lock($1, k) AS got FROM unnest($2::int[]) AS k",
                                NAMESPACE, list(free.values()))
        got = {r["k"] for r in rows if r["got"]}
        for job, key in free.items():
            if key in got:
                self._held.add(job)
                self._events.acquired(job)

    # --- locks borrowed for a while (another instance's, found free) -----------------
    async def try_borrow(self, name: str) -> bool:
        """Try once the lock named ``name`` (not a wanted job: it is not claimed again);
        held on this connection until :meth:`give_back`, or lost with the others.  False
        when another session holds it, or its key is one of a lock held here (the
        server would grant it to us again: never mistaken for a free lock)."""
        key = lock_key(name)
        if name in self._held or key in {lock_key(j) for j in self._held}:
            return False
        async with self._busy, asyncio.timeout(self._deadline_s):
            if self._conn is None or self._conn.is_closed():
                return False  # the heartbeat reconnects; nothing is borrowed meanwhile
            got = bool(await self._conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", NAMESPACE, key))
        if got:
            self._held.add(name)
        return got

    async def give_back(self, name: str) -> None:
        """Release a borrowed lock (a no-op once lost with the connection)."""
        if name not in self._held or name in self._jobs:
            return
        self._held.discard(name)
        with contextlib.suppress(Exception):
            async with self._busy, asyncio.timeout(self._deadline_s):
                if self._conn is not None and not self._conn.is_closed():
                    await self._conn.fetchval("SELECT pg_advisory_unlock($1, $2)", NAMESPACE, lock_key(name))
                    return
        # Unanswered: end the session (the heartbeat reconnects and claims the jobs again)
        # rather than leave a lock held that the peer is waiting for.
        self._lose("a borrowed lock could not be released")

    def _terminated(self, conn: Any) -> None:
        # The connection closed under us (terminated, the server gone): the locks are free.
        if conn is self._conn and not self._closed:
            self._lose("connection closed")

    def _lose(self, why: str) -> None:
        # Runs in a callback (timer, connection closed) or the check: the owned steps are
        # cancelled here, before any of them can take another step of its own.
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        for work in self._running:
            work.cancel()
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()
        held, self._held = self._held, set()
        for job in sorted(held):
            if job in self._jobs:  # borrowed locks have no gauge: their users say it
                self._events.lost(job, why)
        if held:
            self._lost.set()
            self._lost = asyncio.Event()

    async def close(self) -> None:
        """Release every lock (after the owned stages have stopped): the other instances
        take them at their next heartbeat."""
        self._closed = True
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        conn, self._conn = self._conn, None
        held, self._held = self._held, set()
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), self._deadline_s)  # the session's locks go with it
            if not conn.is_closed():
                conn.terminate()
        for job in sorted(held):
            if job in self._jobs:
                self._events.released(job)


class OwnedStage:
    """A stage that steps only while its job is owned; a step in progress is cancelled
    when the ownership is lost (what it was doing stays in the database for the next
    owner, as after any cut-short step).

    A stage may have a ``disowned()`` method: it is called once when this instance no
    longer owns the job, to stop showing what the new owner now keeps (its gauges: an
    old owner's stale backlog would otherwise stay in Prometheus)."""

    def __init__(self, stage: Stage, ownership: Ownership) -> None:
        self.stage = stage
        self.name = stage.name
        self._ownership = ownership
        self._owned = False

    async def step(self) -> bool:
        if not self._ownership.holds(self.name):
            if self._owned:
                self._owned = False
                disowned = getattr(self.stage, "disowned", None)
                if callable(disowned):
                    disowned()
            return False
        self._owned = True
        lost = asyncio.ensure_future(self._ownership.lost_event.wait())
        work = asyncio.ensure_future(self.stage.step())
        self._ownership._running.add(work)
        try:
            await asyncio.wait({work, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._ownership._running.discard(work)
            lost.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(BaseException):
                    await work
        if work.cancelled():
            return False  # the ownership was lost mid-step: the new owner does the rest
        return work.result()
