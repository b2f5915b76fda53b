"""Replies and recovery with an adapter in memory (see tests/test_uplink_stage.py):
rejections counted by reason and never re-sent, the daily dictionary check, the return
of a platform after an outage, and the enterprise registry reaching the adapter."""

from __future__ import annotations

import contextlib
import json
import logging
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from config.settings import TargetSettings
from tests.test_uplink_delivery import DUE, NOW, count, seed
from tests.test_uplink_stage import N_DUE, FakeAdapter, fake_target, key, states
from tests.test_uplink_support import E1, E2, POWER, FakeClock, outbox, put
from uplink.errors import RejectedError, RetryableError
from uplink.records import Record

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_rejections_are_kept_and_counted_by_reason_and_not_sent_again(db: str) -> None:
    """An HTTP 200 failure code the flavour does not know and an HTTP 400: both kept as
    rejected with their reason, counted by it, and not sent again by later steps."""
    await seed(db)
    clock, registry, fake = FakeClock(NOW), CollectorRegistry(), FakeAdapter()

    async def refuse(enterprise: str, chunk: list[Record]) -> Exception | None:
        return (RejectedError(200, "responseCode '1': 数据格式错误", reason="unknown_code") if enterprise == E1
                else RejectedError(400, "bad request"))

    fake.fail_write = refuse
    async with fake_target(db, fake, clock, registry, batch_size=len(DUE)) as stage:
        await stage.step()
        rows = await outbox(db, "p")
        assert states(rows) == {"rejected": N_DUE}
        assert {(r["enterprise"], r["rejected_reason"], r["rejected_status"]) for r in rows} == \
            {(E1, "unknown_code", 200), (E2, "http_4xx", 400)}
        assert count(registry, "nhjc_uplink_rejected_total", target="p", reason="unknown_code") == len(DUE)
        assert count(registry, "nhjc_uplink_rejected_total", target="p", reason="http_4xx") == len(DUE)
        assert count(registry, "nhjc_uplink_retries_total", target="p") == 0
        refused = {key(r) for r in rows}
        writes = len(fake.writes)
        for _ in range(3):
            clock.advance(seconds=300)
            await stage.step()
        # Later periods come due and are sent; the refused ones are not sent again.
        assert not refused & {r.key for _, chunk, _ in fake.writes[writes:] for r in chunk}
        assert sorted(fake.registered) == [E1, E2]  # a rejection is not a reason to register again


async def test_the_dictionary_version_is_checked_daily_and_a_change_sends_the_configuration_again(
        db: str) -> None:
    await seed(db)
    clock, registry, fake = FakeClock(NOW), CollectorRegistry(), FakeAdapter()
    fake.with_urls, fake.dictionary = True, "1/7"
    async with fake_target(db, fake, clock, registry) as stage:
        await stage.step()
        assert fake.dictionary_asked == 2 and sorted(e for e, _ in fake.configured) == [E1, E2]

        async def more(hours: float) -> None:
            clock.advance(hours=hours)
            for e in (E1, E2):  # something to send, so that the enterprises get ready again
                await put_value(db, e, clock.now)
            for _ in range(6):  # the schedule catches up in slices of at most 6 hours
                await stage.step()

        await more(12)  # within the day: not asked
        assert fake.dictionary_asked == 2 and len(fake.configured) == 2
        await more(13)  # a day later, the same version: asked, nothing sent again
        assert fake.dictionary_asked == 4 and len(fake.configured) == 2
        fake.dictionary = "1/8"
        await more(25)  # the platform's dictionaries changed: configured again, once each
        assert fake.dictionary_asked == 6 and sorted(e for e, _ in fake.configured[2:]) == [E1, E2]
        await more(1)
        assert fake.dictionary_asked == 6 and len(fake.configured) == 4
        assert "rejected" not in states(await outbox(db, "p"))


async def put_value(dsn: str, enterprise: str, now: datetime) -> None:
    """A real-time value for the quarter hour that ended before ``now``, due at once."""
    start = now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0) - timedelta(minutes=30)
    conn = await asyncpg.connect(dsn)
    try:
        await put(conn, enterprise, POWER, 0, start, 1.5)
    finally:
        await conn.close()


async def test_a_platform_back_from_an_outage_gets_traffic_within_30_s_and_the_outage_costs_one_request_per_pause(
        db: str) -> None:
    """With the default backoff (1 s doubling to 30 s), a platform down for 200 s is
    asked once per pause, and gets traffic again at most 30 s after it returns (it took
    211 s when the pause could grow to 300 s)."""
    await seed(db)
    clock, registry, fake = FakeClock(NOW), CollectorRegistry(), FakeAdapter()
    down = [True]

    async def outage(enterprise: str, chunk: list[Record]) -> Exception | None:
        return RetryableError("connect", "refused") if down[0] else None

    fake.fail_write = outage
    defaults = TargetSettings(url="http://platform.invalid")
    async with fake_target(db, fake, clock, registry, concurrency=1, backoff_min_s=defaults.backoff_min_s,
                           backoff_max_s=defaults.backoff_max_s) as stage:
        assert stage.delivery is not None and defaults.backoff_max_s == 30
        pauses: set[datetime] = set()
        while clock.now < NOW + timedelta(seconds=200):  # a step every second
            await stage.step()
            if stage.delivery.paused_until is not None:
                pauses.add(stage.delivery.paused_until)
            clock.advance(seconds=1)
        assert not any(ok for *_, ok in fake.writes)
        assert len(fake.writes) == len(pauses)  # one failed request per pause
        assert 6 <= len(pauses) <= 20  # 1, 2, 4, 8, 16 s, then 15 to 30 s each
        assert max(b - a for a, b in zip(sorted(pauses), sorted(pauses)[1:], strict=False)) \
            <= timedelta(seconds=31)

        down[0] = False
        back = clock.now
        resume = stage.delivery.paused_until
        assert resume is not None and resume - back <= timedelta(seconds=30)
        clock.set(max(resume, back))
        await stage.step()
        assert fake.writes[-1][2]  # the first request after the pause goes through
        for _ in range(3):  # every record's own retry time is within 30 s too
            clock.advance(seconds=31)
            while await stage.step():
                pass
        assert states(await outbox(db, "p")) == {"acked": N_DUE}


async def test_the_enterprise_registry_reaches_the_adapter(db: str) -> None:
    """Region, profile and the target's PIN from the enterprises table; an enterprise
    missing from the registry registers with its credit code's region, said once."""
    await seed(db)
    conn = await asyncpg.connect(db)
    try:
        await conn.execute(
            "INSERT INTO enterprises (enterprise, name, region, profile, targets, secrets, source)"
            " VALUES ($1, '合肥示范化工有限公司', '340104', $2, $3, $4, 'test')",
            E1, json.dumps({"address": "合肥市蜀山区", "industryCode": "2614"}),
            json.dumps({"q": {"region": "999999"}}),
            json.dumps({"p": {"pin": "123456", "secret": "0123456789abcdefXYZ"}}))
    finally:
        await conn.close()
    clock, registry, fake = FakeClock(NOW), CollectorRegistry(), FakeAdapter()
    async with fake_target(db, fake, clock, registry) as stage:
        with caplog_at("nhjc.uplink") as lines:
            await stage.step()
            clock.advance(minutes=20)
            await put_value(db, E2, clock.now)
            await stage.step()
    by_code = {e.code: e for e in fake.enterprises}
    e1, e2 = by_code[E1], by_code[E2]
    assert (e1.name, e1.region, dict(e1.profile)) == \
        ("合肥示范化工有限公司", "340104", {"address": "合肥市蜀山区", "industryCode": "2614"})
    assert e1.pin is not None and e1.pin.get_secret_value() == "123456"
    assert e1.secret is not None and e1.secret.get_secret_value() == "0123456789abcdefXYZ"
    assert (e2.name, e2.region, e2.pin) == (E2, E2[2:8], None)
    said = [m for m in lines if "not in the enterprise registry" in m]
    assert len(said) == 1 and E2 in said[0] and E2[2:8] in said[0]
    assert not any("123456" in m for m in lines)


@contextlib.contextmanager
def caplog_at(name: str) -> Any:
    """The messages logged under ``name`` while the block runs."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Keep(level=logging.DEBUG)
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
