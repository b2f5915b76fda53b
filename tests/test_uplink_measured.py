"""The platforms hear only what was measured, and a backfill does not storm them: a
target stepped by hand with the adapter in memory, on the real database.

- a period with coverage 0 is never enqueued nor sent;
- one sent earlier whose coverage falls to 0, or whose row disappears, is withdrawn:
  kept in the outbox as ``withdrawn``, counted, not sent (the platform keeps what it
  had); measured again, it goes again;
- a period already sent and revised many times while a backlog drains goes again once,
  after it has been quiet for ``resend_quiet_s``; a period never sent goes on its
  schedule, at once.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from tests.test_uplink_delivery import NOW, count
from tests.test_uplink_stage import FakeAdapter, fake_target
from tests.test_uplink_support import E1, GAS, POWER, add_items, outbox
from tools.clock import FakeClock
from tools.platform.targets import local
from uplink.errors import RejectedError

pytestmark = pytest.mark.asyncio(loop_scope="session")

Q1145 = local(2026, 11, 28, 11, 45)
Q1200 = local(2026, 11, 28, 12, 0)   # due at 12:16, NOW is 12:16:30
QUIET_S = 120.0


async def write(db: str, code: str, start: datetime, value: float, coverage: float) -> None:
    """Insert or change one 15-minute row as processing does (a change takes a new
    revision)."""
    conn = await asyncpg.connect(db)
    try:
        await conn.execute(
            "INSERT INTO consumption (enterprise, code, stat_type, period_start, value, kgce, valid, coverage)"
            " VALUES ($1, $2, 0, $3, $4, $4, $5 >= 1, $5)"
            " ON CONFLICT (enterprise, code, stat_type, period_start) DO UPDATE"
            " SET value = EXCLUDED.value, kgce = EXCLUDED.kgce, valid = EXCLUDED.valid,"
            " coverage = EXCLUDED.coverage, revision = nextval('consumption_revision')",
            E1, code, start, value, coverage)
    finally:
        await conn.close()


async def remove(db: str, code: str, start: datetime) -> None:
    conn = await asyncpg.connect(db)
    try:
        await conn.execute("DELETE FROM consumption WHERE enterprise = $1 AND code = $2 AND stat_type = 0"
                           " AND period_start = $3", E1, code, start)
    finally:
        await conn.close()


async def seed_items(db: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        await add_items(conn, E1)
    finally:
        await conn.close()


def sends(fake: FakeAdapter, code: str, start: datetime) -> list[float]:
    """The values written for one period, in order."""
    return [r.value for _, chunk, _ in fake.writes for r in chunk if r.code == code and r.period_start == start]


async def row(db: str, code: str, start: datetime) -> asyncpg.Record | None:
    found = [r for r in await outbox(db, "p") if r["code"] == code and r["period_start"] == start]
    return found[0] if found else None


async def test_a_period_with_coverage_0_is_never_sent(db: str) -> None:
    await seed_items(db)
    await write(db, GAS, Q1200, 0.0, 0.0)      # nothing measured
    await write(db, POWER, Q1200, 210.0, 1.0)  # measured
    clock, registry, fake = FakeClock(NOW), CollectorRegistry(), FakeAdapter()
    async with fake_target(db, fake, clock, registry) as stage:
        await stage.step()
        # Late data about the silent period that still measures nothing: still not sent.
        await write(db, GAS, Q1200, 0.0, 0.0)
        clock.advance(seconds=QUIET_S * 2)
        await stage.step()
        await stage.step()
    assert sends(fake, POWER, Q1200) == [210.0]
    assert sends(fake, GAS, Q1200) == []
    assert await row(db, GAS, Q1200) is None  # never even in the outbox
    assert count(registry, "nhjc_uplink_withdrawn_total", target="p") == 0


async def test_a_sent_period_whose_coverage_falls_to_0_is_withdrawn_not_sent(db: str) -> None:
    await seed_items(db)
    await write(db, GAS, Q1200, 11.25, 1.0)
    await write(db, POWER, Q1200, 210.0, 1.0)
    clock, registry, fake = FakeClock(NOW), CollectorRegistry(), FakeAdapter()
    async with fake_target(db, fake, clock, registry) as stage:
        await stage.step()
        assert sends(fake, GAS, Q1200) == [11.25]

        # Its coverage falls to 0 (the readings it rested on are gone): withdrawn once
        # the change has been quiet, nothing sent, counted.
        await write(db, GAS, Q1200, 0.0, 0.0)
        await stage.step()
        clock.advance(seconds=QUIET_S + 1)
        await stage.step()
        r = await row(db, GAS, Q1200)
        assert r is not None and r["state"] == "withdrawn" and r["withdrawn_at"] == clock()
        assert r["acked_revision"] < r["revision"]  # what the platform holds stays as it was
        assert count(registry, "nhjc_uplink_withdrawn_total", target="p") == 1
        clock.advance(seconds=QUIET_S * 5)
        await stage.step()
        assert sends(fake, GAS, Q1200) == [11.25]

        # Measured again: it goes again (after the quiet), with the measured value.
        await write(db, GAS, Q1200, 12.5, 1.0)
        await stage.step()
        assert sends(fake, GAS, Q1200) == [11.25]
        clock.advance(seconds=QUIET_S + 1)
        await stage.step()
        assert sends(fake, GAS, Q1200) == [11.25, 12.5]
        r = await row(db, GAS, Q1200)
        assert r is not None and r["state"] == "acked"
    assert sends(fake, POWER, Q1200) == [210.0]  # its neighbour never moved
    assert count(registry, "nhjc_uplink_withdrawn_total", target="p") == 1


async def test_a_period_whose_row_disappears_is_withdrawn_if_sent_dropped_if_not(db: str) -> None:
    await seed_items(db)
    await write(db, GAS, Q1200, 11.25, 1.0)
    clock, registry, fake = FakeClock(NOW), CollectorRegistry(), FakeAdapter()
    async with fake_target(db, fake, clock, registry) as stage:
        await stage.step()
        # Sent, then changed (waiting for the quiet), then removed (coverage fell to 0
        # and processing deleted it): withdrawn, not sent.
        await write(db, GAS, Q1200, 13.0, 0.5)
        await stage.step()
        await remove(db, GAS, Q1200)
        clock.advance(seconds=QUIET_S + 1)
        await stage.step()
        r = await row(db, GAS, Q1200)
        assert r is not None and r["state"] == "withdrawn"
        assert sends(fake, GAS, Q1200) == [11.25]
        assert count(registry, "nhjc_uplink_withdrawn_total", target="p") == 1

        # Never sent (its enterprise could not register), then removed: simply gone
        # from the outbox, nothing counted.
        later = local(2026, 11, 28, 12, 15)
        await write(db, POWER, later, 50.0, 1.0)
        assert stage.delivery is not None
        stage.delivery.devices.forget(E1)  # registers again at its next data, and is refused
        fake.fail_register = RejectedError(403, "enterprise unknown")
        clock.set(local(2026, 11, 28, 12, 31))
        await stage.step()
        r = await row(db, POWER, later)
        assert r is not None and r["state"] == "pending" and r["sent_revision"] is None
        await remove(db, POWER, later)
        fake.fail_register = None
        clock.advance(seconds=60)
        await stage.step()
    assert sends(fake, POWER, later) == []
    assert await row(db, POWER, later) is None
    assert count(registry, "nhjc_uplink_withdrawn_total", target="p") == 1


async def test_a_period_revised_10_times_during_a_drain_is_sent_at_most_twice(db: str) -> None:
    """A backlog drains: every batch of late readings revises the same periods.  One
    was sent before the drain (POWER), one never was (GAS, which enters through the
    revisions as the drain writes it).  Each goes at most twice in all: once on its
    schedule, once after it settled, with its final value."""
    await seed_items(db)
    await write(db, POWER, Q1145, 100.0, 1.0)
    clock, registry, fake = FakeClock(NOW), CollectorRegistry(), FakeAdapter()
    async with fake_target(db, fake, clock, registry) as stage:
        await stage.step()
        assert sends(fake, POWER, Q1145) == [100.0]
        for n in range(1, 11):  # a batch every 10 s, each revising both periods
            await write(db, POWER, Q1145, 100.0 + n, 1.0)
            await write(db, GAS, Q1145, float(n), min(1.0, n / 10))
            await stage.step()
            clock.advance(seconds=10)
        assert sends(fake, POWER, Q1145) == [100.0]  # not once per batch
        assert len(sends(fake, GAS, Q1145)) == 1     # never sent: at once, on its schedule
        clock.advance(seconds=QUIET_S)
        for _ in range(3):
            await stage.step()
            clock.advance(seconds=QUIET_S)
    assert sends(fake, POWER, Q1145) == [100.0, 110.0]
    gas = sends(fake, GAS, Q1145)
    assert len(gas) <= 2 and gas[-1] == 10.0
    rows = {r["code"]: r for r in await outbox(db, "p") if r["period_start"] == Q1145}
    assert all(r["state"] == "acked" and r["acked_revision"] == r["revision"] for r in rows.values())


async def test_a_period_changing_without_pause_still_goes_within_the_longest_wait(db: str) -> None:
    """The quiet is pushed back by every change, but not past ``resend_max_wait_s``
    after the first: a period that never settles is still sent, every so often."""
    await seed_items(db)
    await write(db, POWER, Q1145, 100.0, 1.0)
    clock, registry, fake = FakeClock(NOW), CollectorRegistry(), FakeAdapter()
    async with fake_target(db, fake, clock, registry, resend_quiet_s=QUIET_S, resend_max_wait_s=600) as stage:
        await stage.step()
        start = clock()
        n = 0
        while clock() < start + timedelta(seconds=900):
            n += 1
            await write(db, POWER, Q1145, 100.0 + n, 1.0)
            await stage.step()
            clock.advance(seconds=60)  # a change a minute: never quiet for 120 s
    values = sends(fake, POWER, Q1145)
    assert len(values) == 2 and values[0] == 100.0  # once at the start, once at the longest wait
