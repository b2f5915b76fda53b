"""What to do next when the database fails: the one classification every stage uses.

Retryable errors are the infrastructure's: the server is away, restarting, busy, short of
resources, or cut our connection (``pg_terminate_backend``, a failover, a dropped TCP
connection), or a transaction lost a race.  The same statement will work later, so the
caller waits and tries again, with nothing acknowledged meanwhile.

Anything else (a value PostgreSQL refuses, a constraint, a bug) will fail the same way
every time: retrying it is a crash loop, so callers treat it as a fault of the input in
hand and quarantine or skip it with a reason.

:class:`DatabaseHealth` is what the service knows of the database's state: every stage
reports its retryable failures and its successes to the one instance, which logs one line
when the state changes (up to down with the error's class, down to up with how long it
was down) and counts the retries, instead of a warning per failed batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import asyncpg
from asyncpg import exceptions as pgx
from prometheus_client import CollectorRegistry, Counter

__all__ = ["RETRYABLE", "DatabaseHealth", "describe", "is_retryable"]

log = logging.getLogger("nhjc.database")

RETRYABLE: tuple[type[BaseException], ...] = (
    OSError,  # connection refused, reset, unreachable
    TimeoutError,  # connect or command time-out: a stall
    asyncpg.InterfaceError,  # the connection is closed or in a state it cannot be used in
    pgx.InternalClientError,  # asyncpg's pool after a connection died under it
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    pgx.OperatorInterventionError,  # class 57: admin/crash shutdown, cannot connect now, cancelled
    pgx.InsufficientResourcesError,  # class 53: too many connections, disk full, out of memory
    pgx.TransactionRollbackError,  # class 40: serialization failure, deadlock
    pgx.LockNotAvailableError,  # 55P03
    pgx.ReadOnlySQLTransactionError,  # 25006: a standby during failover
    pgx.IdleInTransactionSessionTimeoutError,  # 25P03: the server's idle time-out cut the session
    pgx.PostgresSystemError,  # class 58: I/O error on the server
)


# Retryable, but the database is up: a lost race between transactions.
_CONTENTION: tuple[type[BaseException], ...] = (pgx.TransactionRollbackError, pgx.LockNotAvailableError)


# asyncpg's client-side refusals subclass InterfaceError too (an argument it cannot
# encode, a setting or feature it does not support): the same call fails the same way.
_REFUSED_BY_CLIENT: tuple[type[BaseException], ...] = (
    ValueError, pgx.UnsupportedClientFeatureError, pgx.UnsupportedServerFeatureError)


def is_retryable(exc: BaseException) -> bool:
    """True when the database (not the data) is at fault and a retry may succeed.  A
    group of errors (from a task group) is retryable when every error in it is.
    Stricter than ``except RETRYABLE``, which cannot leave out asyncpg's client-side
    refusals (they are InterfaceErrors as well): prefer this."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_retryable(e) for e in exc.exceptions)
    if isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, _REFUSED_BY_CLIENT):
        return False
    return isinstance(exc, RETRYABLE)


def describe(exc: BaseException) -> str:
    """The error's class and first line, short: what a log line or /readyz shows."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    return f"{name}: {text[:200]}" if text else name


class DatabaseHealth:
    """Up or down, as the stages and the readiness probe last found the database.

    ``failed(stage, exc)`` counts a retry (``nhjc_database_retries_total{stage}``) and,
    when the database was up, logs one warning naming the stage and the error's class;
    ``succeeded()`` after an outage logs one line with how long it lasted.  The first
    report after start counts as a change too, so a database that is away at start is
    said once."""

    def __init__(self, registry: CollectorRegistry | None = None,
                 on_change: Callable[[bool], None] | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.retries = Counter("nhjc_database_retries_total",
                               "Database operations that failed with a retryable error, by stage",
                               ["stage"], registry=registry)
        self.outages = Counter("nhjc_database_outages_total",
                               "Times the database went from up to down", registry=registry)
        self._on_change = on_change
        self.up: bool | None = None  # None: nothing reported yet
        self.reason: str | None = None  # why it is down
        self._down_since = 0.0
        self._failures = 0  # retries during the current outage

    def failed(self, stage: str, exc: BaseException) -> None:
        self.retries.labels(stage).inc()
        if isinstance(exc, _CONTENTION):
            log.debug("%s: retrying after %s", stage, describe(exc))
            return  # the database answers: no outage
        self._failures += 1
        if self.up is False:
            return
        self.up, self.reason = False, f"{stage}: {describe(exc)}"
        self._down_since = time.monotonic()
        self.outages.inc()
        log.warning("database down (%s); retrying until it answers", self.reason)
        if self._on_change is not None:
            self._on_change(False)

    def succeeded(self, stage: str = "") -> None:
        if self.up is True:
            return
        if self.up is False:
            log.info("database up again after %.1fs down (%d retries)%s",
                        time.monotonic() - self._down_since, self._failures, f"; {stage} first" if stage else "")
        self.up, self.reason, self._failures = True, None, 0
        if self._on_change is not None:
            self._on_change(True)
