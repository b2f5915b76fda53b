"""Delivery when things go wrong: a platform down for a while, a restart in the middle
of delivery, rejections, the HTTP status rules, time-outs."""

from __future__ import annotations

import functools
from datetime import timedelta

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from tests.test_uplink_delivery import DUE, NOW, count, has, seed, uplink_for, wire_key
from tests.test_uplink_support import (
    E1,
    E2,
    GAS,
    POWER,
    TOTAL,
    control,
    loops,
    outbox,
    put,
    received,
    running,
    wait_until,
)
from tools.clock import FakeClock
from tools.platform.mock import MockPlatform, Mode
from tools.platform.targets import local, target

pytestmark = pytest.mark.asyncio(loop_scope="session")

FIRST = {wire_key(e, c, st, t) for e in (E1, E2) for c, st, t, _ in DUE}


async def settled(dsn: str, name: str, *, attempted: bool = True) -> bool:
    """True when every outbox row of the target has been tried at least once."""
    rows = await outbox(dsn, name)
    return bool(rows) and all(r["attempts"] >= 1 for r in rows) if attempted else bool(rows)


async def test_one_target_down_then_back_the_other_stays_current(db: str) -> None:
    await seed(db)
    clock, registry = FakeClock(NOW), CollectorRegistry()
    async with MockPlatform(name="provincial", mode=Mode(down=True)) as prov, \
            MockPlatform(name="national", flavour="yunnan") as nat, \
            uplink_for(db, {"provincial": target(prov.url), "national": target(nat.url, flavour="yunnan")},
                       clock, registry) as up, running(up):
        await wait_until(lambda: has(nat.url, FIRST), "national current")
        await wait_until(lambda: settled(db, "provincial"), "provincial tried")
        rows = await outbox(db, "provincial")
        assert all(r["state"] == "pending" and "connect" in r["last_error"] for r in rows)
        assert count(registry, "nhjc_uplink_retries_total", target="provincial", reason="connect") >= 1
        assert (await up.backlog())["provincial"] == len(FIRST)

        # Three more quarter hours of outage; the national platform gets each on time.
        conn = await asyncpg.connect(db)
        try:
            later = {wire_key(e, POWER, 0, local(2026, 11, 28, 12, 15)) for e in (E1, E2)}  # seeded
            for q in range(3):
                start = local(2026, 11, 28, 12, 15) + timedelta(minutes=15 * q)
                for e in (E1, E2):
                    await put(conn, e, GAS, 0, start, 5.0 + q)
                clock.set(start + timedelta(minutes=16))  # due: closed a minute ago
                due_now = {wire_key(e, GAS, 0, start) for e in (E1, E2)}
                later |= due_now
                await wait_until(functools.partial(has, nat.url, due_now), f"national gets {start:%H:%M}")
                got = await received(nat.url)
                assert {got[k]["uploadDate"] for k in due_now} == {clock.now.strftime("%Y-%m-%d %H:%M:%S")}
                assert not await received(prov.url)
            # The oldest record waiting for the provincial platform became due at 12:16:30.
            await up.backlog()
            assert count(registry, "nhjc_uplink_oldest_unacked_seconds", target="provincial") == \
                (clock.now - NOW).total_seconds()
        finally:
            await conn.close()

        # The provincial platform comes back: it receives everything, once.
        await control(prov.url, down=False)
        await wait_until(lambda: has(prov.url, FIRST | later), "provincial catches up", clock=clock)
        for p in (prov, nat):
            assert p.stats()["resends"] == 0 and p.stats()["records"] == len(FIRST | later)
        await loops(up)
        for name in ("provincial", "national"):
            assert all(r["state"] == "acked" for r in await outbox(db, name))
        assert await up.backlog() == {"provincial": 0, "national": 0}


async def test_restart_in_the_middle_resends_only_what_was_not_acknowledged(db: str) -> None:
    await seed(db)
    clock = FakeClock(NOW)
    # Three records a request, one request at a time; the platform takes two requests
    # and then goes away, in the middle of the delivery.
    settings = {"provincial": target("http://placeholder", batch_size=3, concurrency=1)}
    async with MockPlatform(name="provincial", mode=Mode(fail_after=2)) as prov:
        settings["provincial"] = target(prov.url, batch_size=3, concurrency=1)
        async with uplink_for(db, settings, clock) as up, running(up):
            async def first_part_done() -> bool:
                rows = await outbox(db, "provincial")
                return sum(r["state"] == "acked" for r in rows) == 6 and \
                    any(r["attempts"] >= 1 and r["state"] == "pending" for r in rows)

            await wait_until(first_part_done, "two requests acknowledged, the third failed")
        # The uplink has stopped ("restart").  What the platform has is what was acked.
        acked = {(r["enterprise"], r["code"], r["stat_type"], r["period_start"])
                 for r in await outbox(db, "provincial") if r["state"] == "acked"}
        assert prov.stats()["records"] == 6 and prov.stats()["received"] == 6

        await control(prov.url, down=False)
        async with uplink_for(db, settings, clock) as up2, running(up2):
            await wait_until(lambda: has(prov.url, FIRST), "the rest after the restart", clock=clock)
            await loops(up2)
        stats = prov.stats()
        assert stats["records"] == len(FIRST) and stats["resends"] == 0
        assert all(r["count"] == 1 for r in (await received(prov.url)).values())
        rows = await outbox(db, "provincial")
        assert all(r["state"] == "acked" for r in rows)
        # The rows acked before the restart were not touched again.
        assert all(r["attempts"] == 1 for r in rows
                   if (r["enterprise"], r["code"], r["stat_type"], r["period_start"]) in acked)


async def test_rejected_records_are_kept_with_the_message_and_not_retried(db: str) -> None:
    await seed(db)
    clock, registry = FakeClock(NOW), CollectorRegistry()
    async with MockPlatform(name="provincial", mode=Mode(reject_codes=[POWER])) as prov, \
            uplink_for(db, {"provincial": target(prov.url)}, clock, registry) as up, running(up):
        async def all_decided() -> bool:
            rows = await outbox(db, "provincial")
            return bool(rows) and all(r["state"] != "pending" for r in rows)

        await wait_until(all_decided, "every record acked or rejected")
        rows = await outbox(db, "provincial")
        rejected = [r for r in rows if r["state"] == "rejected"]
        assert {r["code"] for r in rejected} == {POWER} and len(rejected) == 6
        for r in rejected:
            assert r["rejected_status"] == 400
            assert f"dataCode {POWER} refused by the platform" in r["rejected_message"]
            assert r["attempts"] == 1 and r["sent_revision"] == r["revision"]
        # Its neighbours in the same batch got through (the batch was split to find it).
        good = {k for k in FIRST if k[1] != POWER}
        assert set(await received(prov.url)) == good
        assert count(registry, "nhjc_uplink_rejected_total", target="provincial") == 6
        await up.backlog()
        assert count(registry, "nhjc_uplink_rejected_records", target="provincial") == 6

        # Time passes: nothing is retried blindly.
        requests = prov.stats()["requests"]["data"]
        clock.advance(seconds=30)
        await loops(up, 3)
        assert prov.stats()["requests"]["data"] == requests

        # New content for a rejected period is a new record: it is sent (and accepted now).
        await control(prov.url, reject_codes=[])
        conn = await asyncpg.connect(db)
        try:
            await put(conn, E1, POWER, 0, local(2026, 11, 28, 12, 0), 205.0)
        finally:
            await conn.close()
        key = wire_key(E1, POWER, 0, local(2026, 11, 28, 12, 0))
        await wait_until(lambda: has(prov.url, {key}), "the corrected record")

        async def corrected_row() -> asyncpg.Record:
            return next(r for r in await outbox(db, "provincial")
                        if r["enterprise"] == E1 and r["code"] == POWER and r["stat_type"] == 0
                        and r["period_start"] == local(2026, 11, 28, 12, 0))

        # The platform holds the record before the outbox records its answer: wait for that.
        async def corrected_settled() -> bool:
            return bool((await corrected_row())["state"] != "pending")

        await wait_until(corrected_settled, "the corrected record's answer recorded")
        row = await corrected_row()
        assert row["state"] == "acked" and row["sent_value"] == 205.0


@pytest.mark.parametrize(("status", "outcome"), [
    (400, "rejected"), (403, "rejected"), (404, "rejected"), (409, "rejected"), (422, "rejected"),
    (408, "http_408"), (429, "http_429"), (500, "http_5xx"), (502, "http_5xx"), (503, "http_5xx"),
    (504, "http_5xx"), (401, "auth"),
])
async def test_http_status_rules(db: str, status: int, outcome: str) -> None:
    await seed(db)
    clock, registry = FakeClock(NOW), CollectorRegistry()
    async with MockPlatform(name="p", mode=Mode(fail_status=status, only=["data"])) as prov, \
            uplink_for(db, {"p": target(prov.url)}, clock, registry) as up, running(up):
        if outcome == "rejected":
            await wait_until(lambda: settled(db, "p"), "every record tried")
        else:  # a 408, 429 or 5xx pauses the target after the first failure (time is frozen)
            await wait_until(lambda: has_retried(registry, outcome), f"a retry for {outcome}")
        await loops(up)
        rows = await outbox(db, "p")
        if outcome == "rejected":
            assert all(r["state"] == "rejected" and r["rejected_status"] == status for r in rows)
            assert count(registry, "nhjc_uplink_rejected_total", target="p") == len(FIRST)
        else:
            assert all(r["state"] == "pending" for r in rows)
            assert any(r["last_error"] and str(status) in r["last_error"] for r in rows)
            assert prov.stats()["records"] == 0
            # ... and once the platform is well, everything arrives.
            await control(prov.url, fail_status=None)
            await wait_until(lambda: has(prov.url, FIRST), "delivery after recovery", clock=clock)


async def test_a_busy_reply_is_retried_and_registration_refusal_waits(db: str) -> None:
    await seed(db)
    clock, registry = FakeClock(NOW), CollectorRegistry()
    async with MockPlatform(name="p", mode=Mode(fail_status=400, only=["register"])) as prov, \
            uplink_for(db, {"p": target(prov.url)}, clock, registry) as up, running(up):
        # A refused registration is not the records' fault: they wait, nothing is rejected.
        await wait_until(lambda: settled(db, "p"), "every record tried")
        rows = await outbox(db, "p")
        assert all(r["state"] == "pending" and r["last_error"].startswith("register") for r in rows)
        conn = await asyncpg.connect(db)
        try:
            errors = await conn.fetch("SELECT last_error FROM uplink_device WHERE target = 'p'")
        finally:
            await conn.close()
        assert len(errors) == 2 and all("injected failure" in e["last_error"] for e in errors)

        # HTTP 200 with a failure code and a message saying the platform is busy
        # (系统繁忙，请稍后再试): retried later; an unknown failure is a rejection instead
        # (tests/test_uplink_stage.py).
        await control(prov.url, fail_status=None, only=["data"], busy=True)
        await wait_until(lambda: has_retried(registry, "busy"), "a busy reply", clock=clock)
        assert prov.stats()["records"] == 0
        assert count(registry, "nhjc_uplink_rejected_total", target="p") == 0
        await control(prov.url, busy=False)
        await wait_until(lambda: has(prov.url, FIRST), "delivery once the platform says 0", clock=clock)


async def has_retried(registry: CollectorRegistry, reason: str) -> bool:
    return count(registry, "nhjc_uplink_retries_total", target="p", reason=reason) > 0


async def test_time_out_is_retried(db: str) -> None:
    await seed(db)
    clock, registry = FakeClock(NOW), CollectorRegistry()
    async with MockPlatform(name="p", mode=Mode(slow_s=60.0, only=["data"])) as prov, \
            uplink_for(db, {"p": target(prov.url, timeout_s=0.3)}, clock, registry) as up, running(up):
        await wait_until(lambda: has_retried(registry, "timeout"), "a time-out")
        assert prov.stats()["records"] == 0
        await control(prov.url, slow_s=0.0)
        await wait_until(lambda: has(prov.url, FIRST), "delivery once the platform is quick", clock=clock)
        await loops(up)


async def test_an_expired_token_is_renewed(db: str) -> None:
    await seed(db)
    clock, registry = FakeClock(NOW), CollectorRegistry()
    async with MockPlatform(name="p", flavour="yunnan") as nat, \
            uplink_for(db, {"p": target(nat.url, flavour="yunnan")}, clock, registry) as up, running(up):
        await wait_until(lambda: has(nat.url, FIRST), "first delivery")
        assert nat.stats()["tokens_issued"] == 2
        await control(nat.url, expire_tokens=True)
        conn = await asyncpg.connect(db)
        try:
            await put(conn, E2, TOTAL, 0, local(2026, 11, 28, 12, 0), 99.0)
        finally:
            await conn.close()
        key = wire_key(E2, TOTAL, 0, local(2026, 11, 28, 12, 0))

        async def redelivered() -> bool:
            return bool((await received(nat.url))[key]["dataValue"] == 99.0)

        # A sent period goes again once it has been quiet (resend_quiet_s): time moves on.
        await wait_until(redelivered, "the change, after a new token", clock=clock, step_s=30)
        stats = nat.stats()
        assert stats["tokens_issued"] == 3  # one refresh, for the enterprise that sent
        assert count(registry, "nhjc_uplink_retries_total", target="p", reason="auth") == 0
        assert stats["resends"] == 1
