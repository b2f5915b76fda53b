"""Real services for tests: a private Mosquitto per test session and fresh databases
on the local PostgreSQL with TimescaleDB (both from :mod:`tools.guest`, which benchmarks
share).  Nothing is mocked; a missing service fails loudly (the set-up script installs
and starts them).  Here only what tests alone use."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from tools.guest import ADMIN_DSN

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


async def terminate_backends(dbname: str, admin_dsn: str = ADMIN_DSN) -> int:
    """pg_terminate_backend of every client connection to database dbname but our own;
    returns how many were terminated."""
    admin = await asyncpg.connect(admin_dsn)
    try:
        return int(await admin.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
            dbname))
    finally:
        await admin.close()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """A coroutine run to its end from synchronous code (fixtures, threads)."""
    return asyncio.run(coro)
