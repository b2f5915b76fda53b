"""Delivery over real HTTP to two mock platforms (one per flavour) from a real database:
every due period reaches both with the right fields, on schedule, and again when late
data changes it."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from config.settings import TargetSettings, UplinkSettings
from runtime.dberrors import DatabaseHealth
from runtime.runner import RunnerEvents
from tests.test_uplink_support import (
    E1,
    E2,
    GAS,
    POWER,
    TOTAL,
    TOTAL_CODE,
    add_items,
    get_json,
    loops,
    outbox,
    put,
    received,
    running,
    wait_until,
)
from tools.clock import FakeClock
from tools.platform.mock import MockPlatform
from tools.platform.targets import TZ, local, target
from uplink.stage import Uplink

pytestmark = pytest.mark.asyncio(loop_scope="session")

NOW = local(2026, 11, 28, 12, 16, 30)

# (code, statType, period start, value) per enterprise; the expected ones are due at NOW.
DUE = [
    (GAS, 0, local(2026, 11, 28, 11, 45), 10.5), (GAS, 0, local(2026, 11, 28, 12, 0), 11.25),
    (POWER, 0, local(2026, 11, 28, 11, 45), 200.0), (POWER, 0, local(2026, 11, 28, 12, 0), 210.0),
    (TOTAL, 0, local(2026, 11, 28, 12, 0), 38.4),
    (GAS, 1, local(2026, 11, 27), 1000.0), (TOTAL, 1, local(2026, 11, 27), 3600.0),
    (POWER, 2, local(2026, 10, 1), 150000.0),
    (TOTAL, 3, local(2025, 1, 1), 4.5e6),
]
NOT_YET = [
    (GAS, 0, local(2026, 11, 28, 12, 15), 3.0),      # open (and then waiting for the delay)
    (POWER, 0, local(2026, 11, 28, 12, 15), 50.0),
    (TOTAL, 1, local(2026, 11, 28), 1800.0),         # today
]
TOO_OLD = [(GAS, 0, local(2026, 11, 27, 10, 0), 9.0)]  # before a new target's backfill window


async def seed(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for e in (E1, E2):
            await add_items(conn, e)
            for code, st, start, value in DUE + NOT_YET + TOO_OLD:
                await put(conn, e, code, st, start, value * (2 if e == E2 else 1), valid=code != POWER or st != 2)
    finally:
        await conn.close()


def wire_key(e: str, code: str, st: int, start: datetime) -> tuple[str, str, int, str]:
    data_code = TOTAL_CODE if code == TOTAL else code
    return (e, data_code, st, start.strftime("%Y-%m-%d %H:%M:%S"))


@contextlib.asynccontextmanager
async def uplink_for(dsn: str, targets: dict[str, TargetSettings], clock: FakeClock,
                     registry: CollectorRegistry | None = None) -> AsyncIterator[Uplink]:
    registry = registry or CollectorRegistry()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=6)
    try:
        yield Uplink(pool, UplinkSettings(targets=targets, interval_ms=20, settle_s=0.2), zone=TZ,
                     clock=clock, registry=registry, health=DatabaseHealth(registry),
                     events=RunnerEvents(registry))
    finally:
        await pool.close()


def count(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(sample.value for metric in registry.collect() for sample in metric.samples
               if sample.name == name and labels.items() <= sample.labels.items())


async def has(url: str, keys: set[tuple[str, str, int, str]]) -> bool:
    return keys <= set(await received(url))


async def test_every_due_period_reaches_both_targets_with_the_right_fields(db: str) -> None:
    await seed(db)
    clock, registry = FakeClock(NOW), CollectorRegistry()
    expected = {wire_key(e, c, st, t) for e in (E1, E2) for c, st, t, _ in DUE}
    async with MockPlatform(name="provincial") as prov, \
            MockPlatform(name="national", flavour="yunnan") as nat, \
            uplink_for(db, {"provincial": target(prov.url), "national": target(nat.url, flavour="yunnan")},
                       clock, registry) as up:
        async with running(up):
            for p in (prov, nat):
                await wait_until(functools.partial(has, p.url, expected), f"everything due at {p.name}")
            await loops(up)
        for p in (prov, nat):
            got = await received(p.url)
            assert set(got) == expected  # nothing early, nothing outside the window
            for e in (E1, E2):
                for code, st, start, value in DUE:
                    r = got[wire_key(e, code, st, start)]
                    assert r["dataValue"] == value * (2 if e == E2 else 1)
                    assert r["statDate"] == start.strftime("%Y-%m-%d %H:%M:%S")  # local time
                    assert r["uploadDate"] == "2026-11-28 12:16:30"
                    assert (r["scope"], r["inputType"]) == {GAS: (1, 4), POWER: (2, 3), TOTAL: (1, 4)}[code]
                    assert r["valid"] is (code != POWER or st != 2)
                    assert r["count"] == 1
            stats = p.stats()
            assert stats["resends"] == 0 and stats["rejected_requests"] == 0
        assert prov.stats()["devices"] == 2 and prov.stats()["config_uploads"] == 2
        assert nat.stats()["tokens_issued"] == 2
        # One request per enterprise and period batch, not per record, for the batch flavours.
        assert prov.stats()["requests"]["data"] == 2 and nat.stats()["requests"]["data"] == 2

        for name in ("provincial", "national"):
            rows = await outbox(db, name)
            assert len(rows) == len(expected)
            assert all(r["state"] == "acked" and r["acked_revision"] == r["revision"] and r["attempts"] == 1
                       for r in rows)
            assert count(registry, "nhjc_uplink_acked_total", target=name) == len(expected)
            assert count(registry, "nhjc_uplink_sent_total", target=name) == len(expected)
        assert await up.backlog() == {"provincial": 0, "national": 0}
        # The item configuration the provincial platform got: items, the total, scaled ranges.
        conn = await asyncpg.connect(db)
        try:
            dev = await conn.fetchrow("SELECT * FROM uplink_device WHERE target = 'provincial' AND enterprise = $1", E1)
        finally:
            await conn.close()
        assert dev["device_id"] and dev["config_items"] == 3 and str(dev["upload_time"]) == "00:10:00"


async def test_schedule_and_late_data(db: str) -> None:
    await seed(db)
    clock = FakeClock(NOW)
    first = {wire_key(e, c, st, t) for e in (E1, E2) for c, st, t, _ in DUE}
    async with MockPlatform(name="provincial") as prov, \
            uplink_for(db, {"provincial": target(prov.url)}, clock) as up, running(up):
        await wait_until(lambda: has(prov.url, first), "the first due periods")

        # Late data changes a period already delivered: it goes again, with the new value.
        conn = await asyncpg.connect(db)
        try:
            await put(conn, E1, POWER, 0, local(2026, 11, 28, 12, 0), 222.0)
        finally:
            await conn.close()
        key = wire_key(E1, POWER, 0, local(2026, 11, 28, 12, 0))

        async def resent() -> bool:
            r = (await received(prov.url))[key]
            return bool(r["count"] == 2 and r["dataValue"] == 222.0)

        # A sent period goes again once it has been quiet (resend_quiet_s): time moves on.
        await wait_until(resent, "the changed period sent again", clock=clock, step_s=30)
        assert prov.stats()["resends"] == 1  # only that one

        # 12:15 closes at 12:30 and is due a minute later.
        quarter = {wire_key(e, c, 0, local(2026, 11, 28, 12, 15)) for e in (E1, E2) for c in (GAS, POWER)}
        clock.set(local(2026, 11, 28, 12, 30, 59))
        await loops(up)
        assert not quarter & set(await received(prov.url))
        clock.set(local(2026, 11, 28, 12, 31, 0))
        await wait_until(lambda: has(prov.url, quarter), "the 12:15 period")

        # Today's daily value goes after midnight, at the upload time (00:10).
        today = {wire_key(e, TOTAL, 1, local(2026, 11, 28)) for e in (E1, E2)}
        clock.set(local(2026, 11, 29, 0, 9, 59))
        await loops(up)
        assert not today & set(await received(prov.url))
        rows = [r for r in await outbox(db, "provincial") if r["stat_type"] == 1 and r["state"] == "pending"]
        assert {r["due_at"] for r in rows} == {local(2026, 11, 29, 0, 10)}
        clock.set(local(2026, 11, 29, 0, 10, 0))
        await wait_until(lambda: has(prov.url, today), "the daily values at the upload time")
        stats: dict[str, Any] = await get_json(prov.url, "/_stats")
        assert stats["resends"] == 1 and stats["records"] == len(first | quarter | today)


async def test_a_change_committed_late_with_an_older_revision_is_not_missed(db: str) -> None:
    """Transaction A takes a revision, B takes a later one and commits first; the runner
    sees B's revision before A's row is visible.  The settle pass still finds A."""
    await seed(db)
    clock = FakeClock(NOW)
    a_key = wire_key(E1, GAS, 0, local(2026, 11, 28, 12, 0))
    b_key = wire_key(E2, GAS, 0, local(2026, 11, 28, 12, 0))
    async with MockPlatform(name="provincial") as prov, \
            uplink_for(db, {"provincial": target(prov.url)}, clock) as up, running(up):
        first = {wire_key(e, c, st, t) for e in (E1, E2) for c, st, t, _ in DUE}
        await wait_until(lambda: has(prov.url, first), "the first delivery")
        a, b = await asyncpg.connect(db), await asyncpg.connect(db)
        try:
            tx = a.transaction()
            await tx.start()
            await put(a, E1, GAS, 0, local(2026, 11, 28, 12, 0), 77.0)   # revision r, not committed
            await put(b, E2, GAS, 0, local(2026, 11, 28, 12, 0), 88.0)   # revision r+1, committed

            async def b_resent() -> bool:
                return bool((await received(prov.url))[b_key]["dataValue"] == 88.0)

            await wait_until(b_resent, "the later revision", clock=clock, step_s=30)
            await loops(up)  # the runner has looked past both revisions by now
            await tx.commit()
        finally:
            await a.close()
            await b.close()

        async def a_resent() -> bool:
            return bool((await received(prov.url))[a_key]["dataValue"] == 77.0)

        await wait_until(a_resent, "the change committed late", clock=clock, step_s=30)


async def test_a_period_whose_row_is_gone_is_dropped_from_the_outbox(db: str) -> None:
    await seed(db)
    clock = FakeClock(NOW)
    async with MockPlatform(name="provincial") as prov, \
            uplink_for(db, {"provincial": target(prov.url)}, clock) as up, running(up):
        await loops(up)
        conn = await asyncpg.connect(db)
        try:
            await conn.execute("DELETE FROM consumption WHERE enterprise = $1 AND code = $2 AND stat_type = 1"
                               " AND period_start = $3", E1, TOTAL, local(2026, 11, 28))
        finally:
            await conn.close()
        clock.set(local(2026, 11, 29, 0, 10))
        e2_today = wire_key(E2, TOTAL, 1, local(2026, 11, 28))
        await wait_until(lambda: has(prov.url, {e2_today}), "E2's day")
        await loops(up)
        assert wire_key(E1, TOTAL, 1, local(2026, 11, 28)) not in await received(prov.url)
        assert not [r for r in await outbox(db, "provincial") if r["state"] == "pending"]
