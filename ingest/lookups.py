"""The ingest's own database calls besides the store: reading the items registry and
applying a message's items.  Each is retried where it stands while the database is
away: the message in hand stays unacknowledged meanwhile (the broker keeps it), and
shutdown's grace period bounds the wait.  Any other error reaches the batcher, which
quarantines the message."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import asyncpg

from config.settings import IngestSettings
from ingest.batcher import RegistryCache
from ingest.items import ItemSpec
from ingest.registry import known_codes, upsert_items
from runtime.backoff import Backoff
from runtime.dberrors import DatabaseHealth, is_retryable

__all__ = ["ItemsWriter", "registry_cache", "until_database"]

log = logging.getLogger("nhjc.ingest")

P = ParamSpec("P")
T = TypeVar("T")


def until_database(stage: str, op: Callable[P, Awaitable[T]], *, settings: IngestSettings,
                   health: DatabaseHealth) -> Callable[P, Awaitable[T]]:
    """``op``, retried with the backoff of ``settings`` (pause_min_s to pause_max_s)
    while the database is away; each failure and the success after them reported to
    ``health`` under ``stage``."""
    async def retrying(*args: P.args, **kwargs: P.kwargs) -> T:
        backoff = Backoff(settings.pause_min_s, settings.pause_max_s)
        while True:
            try:
                result = await op(*args, **kwargs)
            except Exception as exc:
                if not is_retryable(exc):
                    raise
                health.failed(stage, exc)
                await asyncio.sleep(backoff.next_delay())
                continue
            health.succeeded(stage)
            return result

    return retrying


class ItemsWriter:
    """Applies one message's items in one transaction (all or none)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def __call__(self, items: list[ItemSpec], source: str) -> None:
        async with self._pool.acquire() as conn:
            changed = await upsert_items(conn, items, source)
        if changed:
            log.info("items registry: %d item(s) changed from %s", changed, source)


def registry_cache(pool: asyncpg.Pool, *, settings: IngestSettings, health: DatabaseHealth) -> RegistryCache:
    """The registered item codes, read from the database until it answers."""
    async def load() -> dict[str, frozenset[str]]:
        return await known_codes(pool)

    return RegistryCache(until_database("registry", load, settings=settings, health=health))
