"""What to do next when the database fails: the one classification every stage uses.

Retryable errors are the infrastructure's: the server is away, restarting, busy, short of
resources, or cut our connection (``pg_terminate_backend``, a failover, a dropped TCP
connection), or a transaction lost a race.  The same statement will work later, so the
caller waits and tries again, with nothing acknowledged meanwhile.

Anything else (a value PostgreSQL refuses, a constraint, a bug) will fail the same way
every time: retrying it is a crash loop, so callers treat it as a fault of the input in
hand and quarantine or skip it with a reason.
"""

from __future__ import annotations

import asyncpg
from asyncpg import exceptions as pgx

__all__ = ["RETRYABLE", "is_retryable"]

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
    pgx.PostgresSystemError,  # class 58: I/O error on the server
)


def is_retryable(exc: BaseException) -> bool:
    """True when the database (not the data) is at fault and a retry may succeed."""
    return isinstance(exc, RETRYABLE)
