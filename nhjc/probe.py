"""The readiness probe: ``SELECT 1`` on a connection of its own, as a stage the runner
steps every second.  Not a wait for a pooled connection (all of them may be stuck in a
stall): its own connection, reconnected when lost, and a deadline, so a stall is
reported within the interval plus the deadline."""

from __future__ import annotations

import asyncio

import asyncpg

from config.settings import DatabaseSettings
from runtime.dberrors import describe, is_retryable

__all__ = ["DatabaseProbe", "DatabaseUnusable"]


class DatabaseUnusable(ConnectionError):
    """The database answered but cannot be used (a refused password, a missing
    database): for readiness that is the database being down like any outage, so it
    is reported as one (the runner hands it to the health state)."""


class DatabaseProbe:
    """Each step: ``SELECT 1`` within ``deadline_s``, or raise why not.  A failed step
    is the runner's to report (the health state says the outage once); a step that
    succeeds says the database is up."""

    name = "probe"

    def __init__(self, settings: DatabaseSettings, *, deadline_s: float) -> None:
        self._settings = settings
        self._deadline_s = deadline_s
        self._conn: asyncpg.Connection | None = None

    async def step(self) -> bool:
        try:
            async with asyncio.timeout(self._deadline_s):
                await self._select_one()
        except TimeoutError:
            self.close()
            raise TimeoutError(f"no answer to SELECT 1 within {self._deadline_s:.0f}s") from None
        except Exception as exc:
            self.close()
            if is_retryable(exc):
                raise
            raise DatabaseUnusable(describe(exc)) from exc
        return False

    async def _select_one(self) -> None:
        """A lost connection (terminated, the server restarted) is replaced at once
        within the same deadline, so it alone never makes the service unready."""
        reused = self._conn is not None
        while True:
            try:
                if self._conn is None:
                    self._conn = await asyncpg.connect(self._settings.dsn(), timeout=self._deadline_s,
                                                       server_settings={"application_name": "nhjc-probe"})
                await self._conn.fetchval("SELECT 1")
                return
            except Exception as exc:
                self.close()
                if isinstance(exc, TimeoutError) or not reused:
                    raise
                reused = False

    def close(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None
