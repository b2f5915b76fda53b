"""Shared helpers for the uplink tests (no tests here): a clock tests move by hand,
valid enterprise codes, rows written straight into items/consumption, and waiting for
a condition over real HTTP or the database.

No test sleeps for a fixed time and then asserts: they wait for a condition (with a
generous safety limit that only matters when something is broken) or for the runner
to have completed whole steps since the world changed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg

from config.settings import TargetSettings
from ingest.credit_code import check_character
from uplink.stage import Uplink

TZ_NAME = "Asia/Shanghai"
TZ = ZoneInfo(TZ_NAME)
LIMIT_S = 30.0  # safety limit for waits; a passing run never comes near it

E1 = "91340100MA2N0C8XB" + check_character("91340100MA2N0C8XB")
E2 = "91340200743082289" + check_character("91340200743082289")
GAS = "00-00-0000-011500-01"    # whole plant (scope 1), m3
POWER = "01-00-0000-023300-01"  # process 01 (scope 2), kWh
TOTAL = "0000"
TOTAL_CODE = "00-00-0000-000000-00"
SM4_KEY = "0123456789abcdeffedcba9876543210"
PIN = "246810"


def local(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=TZ)


class FakeClock:
    """Time that moves only when a test moves it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def set(self, now: datetime) -> None:
        self.now = now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def target(url: str, **kw: Any) -> TargetSettings:
    """A target tuned for tests: fast backoff, small batches."""
    base: dict[str, Any] = {"url": url, "backoff_min_s": 1.0, "backoff_max_s": 4.0, "timeout_s": 5.0,
                            "batch_size": 50, "concurrency": 2}
    base.update(kw)
    return TargetSettings(**base)


async def add_items(conn: asyncpg.Connection, enterprise: str) -> None:
    await conn.executemany(
        "INSERT INTO items (enterprise, code, name, energy, unit, kind, min, max, scope, input_type, source)"
        " VALUES ($1, $2, $3, $4, $5, 'cumulative', $6, $7, $8, $9, 'test')",
        [(enterprise, GAS, "天然气总表", "1500", "m3", 0.0, 400.0, 1, 4),
         (enterprise, POWER, "1# 主变进线有功电能", "3300", "kWh", 0.0, 2000.0, 2, 3)])


async def put(conn: asyncpg.Connection, enterprise: str, code: str, stat_type: int, start: datetime,
              value: float, *, valid: bool = True) -> None:
    """Insert or change one consumption row; a change takes a new revision, as the
    processing stage does."""
    await conn.execute(
        "INSERT INTO consumption (enterprise, code, stat_type, period_start, value, kgce, valid, coverage)"
        " VALUES ($1, $2, $3, $4, $5, $5, $6, 1)"
        " ON CONFLICT (enterprise, code, stat_type, period_start) DO UPDATE"
        " SET value = EXCLUDED.value, valid = EXCLUDED.valid, revision = nextval('consumption_revision')",
        enterprise, code, stat_type, start, value, valid)


async def wait_until(check: Callable[[], Awaitable[bool]], what: str, *, clock: FakeClock | None = None,
                     step_s: float = 1.0, limit_s: float = LIMIT_S) -> None:
    """Poll ``check`` until it holds.  With ``clock``, fake time moves on by ``step_s``
    at each poll: waiting for a retry means letting its backoff pass, whenever the
    failure happened to be recorded."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        if clock is not None:
            clock.advance(seconds=step_s)
        await asyncio.sleep(0.02)


async def loops(uplink: Uplink, n: int = 2) -> None:
    """Wait until every target has run ``n`` more whole steps: whatever the world
    looked like before, every target has planned and sent against it since."""
    start = {name: r.steps for name, r in uplink.runners.items()}

    async def done() -> bool:
        return all(r.steps >= start[name] + n for name, r in uplink.runners.items())

    await wait_until(done, f"{n} steps of every target")


@contextlib.asynccontextmanager
async def running(uplink: Uplink) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(uplink.run(stop), name="uplink-under-test")
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, LIMIT_S)


async def get_json(base: str, path: str, **kw: Any) -> Any:
    async with aiohttp.ClientSession() as s, s.get(base + path, **kw) as r:
        r.raise_for_status()
        return await r.json()


async def control(base: str, **changes: Any) -> Any:
    async with aiohttp.ClientSession() as s, s.post(base + "/_control", json=changes) as r:
        r.raise_for_status()
        return await r.json()


async def received(base: str) -> dict[tuple[str, str, int, str], dict[str, Any]]:
    """What a mock platform holds, keyed as it deduplicates."""
    rows = await get_json(base, "/_records")
    return {(r["enterpriseCode"], r["dataCode"], r["statType"], r["statDate"]): r for r in rows}


async def outbox(dsn: str, target_name: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(
            "SELECT * FROM uplink_outbox WHERE target = $1"
            " ORDER BY enterprise, code, stat_type, period_start", target_name)
        return rows
    finally:
        await conn.close()
