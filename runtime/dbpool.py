"""The service's connection pool: every wait on the database has a deadline.

asyncpg waits without limit by default for a connection from the pool and (60 s) for a
new connection; a database that stalls (a hung host, a network that drops packets
without resetting) would then hold a stage forever.  Here connecting is bounded by
``connect_timeout_s``, every command by ``command_timeout_s``, and acquiring a pooled
connection (and so returning it: asyncpg bounds the reset on release by the same
figure) by ``command_timeout_s`` as well: a wait for a pooled connection longer than
a command may take means the holder is stuck.  A deadline that passes raises
``TimeoutError``, which :mod:`runtime.dberrors` classes as retryable.

Returning a connection never fails the work done on it: when the connection died after
the work finished (``pg_terminate_backend`` just after a COMMIT, say), asyncpg raises
from ``release()`` (``InternalClientError``, ``InterfaceError``) although the
transaction is committed; a caller that took that for a failed write would write again
(a batch's quarantine rows twice).  Here such an error is logged at debug level and
dropped: asyncpg has already discarded the connection and connects anew on the next
acquire.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg

from runtime.dberrors import RETRYABLE, describe

__all__ = ["BoundedPool", "open_pool"]

log = logging.getLogger("nhjc.database")


class BoundedPool(asyncpg.Pool):  # type: ignore[misc]  # asyncpg ships no type information
    """An asyncpg pool whose ``acquire()`` has a default deadline."""

    acquire_timeout_s: float = 60.0

    def acquire(self, *, timeout: float | None = None) -> Any:
        return super().acquire(timeout=self.acquire_timeout_s if timeout is None else timeout)

    async def release(self, connection: asyncpg.Connection, *, timeout: float | None = None) -> None:
        try:
            await super().release(connection, timeout=timeout)
        except RETRYABLE as exc:
            log.debug("a connection died on its way back to the pool (%s); it is replaced", describe(exc))


async def open_pool(url: str, *, max_size: int, command_timeout_s: float, connect_timeout_s: float) -> BoundedPool:
    """A pool with deadlines on connecting, acquiring and every command.  It connects on
    first use (the caller's first query says whether the database is there): with no
    floor of idle connections, asyncpg keeps no background task reconnecting while the
    database is away, which would log a traceback per attempt."""
    pool = BoundedPool(
        url, min_size=0, max_size=max_size, max_queries=50_000,
        max_inactive_connection_lifetime=300.0, loop=None,
        connection_class=asyncpg.Connection, record_class=asyncpg.Record,
        command_timeout=command_timeout_s, timeout=connect_timeout_s,
    )
    pool.acquire_timeout_s = command_timeout_s
    await pool
    return pool
