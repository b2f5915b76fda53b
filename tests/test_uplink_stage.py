"""A target's delivery logic without HTTP: an adapter in memory is handed to the uplink
(as httpx takes a MockTransport), the outbox is a real database, and the tests step the
target by hand, so each asserts the exact outcome of one step: what was written, what
the outbox holds, what was counted.  Retries, the target's pause, the splitting of a
rejected chunk, registering again, and recording what was learned when a round ends in
an unexpected error."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from config.settings import UplinkSettings
from runtime.dberrors import DatabaseHealth
from runtime.runner import RunnerEvents
from tests.test_uplink_delivery import DUE, NOW, count, seed
from tests.test_uplink_support import (
    E1,
    E2,
    POWER,
    outbox,
    running,
    wait_until,
)
from tools.clock import FakeClock
from tools.platform.targets import TZ, target
from uplink.adapters import Enterprise, Registration
from uplink.errors import RefreshError, RejectedError, RetryableError
from uplink.records import ItemConfig, Record
from uplink.stage import TargetStage, Uplink

pytestmark = pytest.mark.asyncio(loop_scope="session")

N_DUE = 2 * len(DUE)  # records due at NOW, both enterprises


class FakeAdapter:
    """A platform in memory.  ``fail_write`` decides, per call, what a write raises
    (None: accepted); ``refuse`` rejects any chunk holding one of these data codes, as
    a strict platform refuses a whole request for one bad record."""

    records_per_call: int | None = None

    def __init__(self) -> None:
        self.registered: list[str] = []
        self.enterprises: list[Enterprise] = []  # as each registration saw them
        self.dictionary: str | None = None       # the platform's dictionary version
        self.dictionary_asked = 0
        self.with_urls = False                   # registrations with configuration and dictionary URLs
        self.configured: list[tuple[str, list[str]]] = []
        self.writes: list[tuple[str, list[Record], bool]] = []  # enterprise, chunk, accepted
        self.fail_register: Exception | None = None
        self.fail_write: Any = None  # (enterprise, chunk) -> awaitable of an Exception or None
        self.refuse: set[str] = set()

    async def register(self, enterprise: Enterprise) -> Registration:
        self.registered.append(enterprise.code)
        self.enterprises.append(enterprise)
        if self.fail_register is not None:
            raise self.fail_register
        urls = {"info_url": "mem:config", "dic_version_url": "mem:dic"} if self.with_urls else {}
        return Registration(device_id=f"dev-{enterprise.code[-4:]}-{len(self.registered)}", **urls)

    async def configure(self, enterprise: Enterprise, registration: Registration,
                        items: Sequence[ItemConfig]) -> None:
        self.configured.append((enterprise.code, [c.data_code for c in items]))

    async def write(self, enterprise: Enterprise, registration: Registration, records: Sequence[Record],
                    uploaded_at: datetime) -> None:
        chunk = list(records)
        exc = await self.fail_write(enterprise.code, chunk) if self.fail_write is not None else None
        if exc is None and self.refuse & {r.data_code for r in chunk}:
            exc = RejectedError(400, "dataCode refused")
        self.writes.append((enterprise.code, chunk, exc is None))
        if exc is not None:
            raise exc

    async def dictionary_version(self, enterprise: Enterprise, registration: Registration) -> str | None:
        self.dictionary_asked += 1
        return self.dictionary

    def written(self) -> list[tuple[str, str, int, datetime]]:
        return [r.key for _, chunk, _ in self.writes for r in chunk]


def failing(exc: Exception, *, times: int = 1_000_000, enterprise: str | None = None) -> Any:
    """A ``fail_write`` raising ``exc`` for the first ``times`` writes (of one enterprise)."""
    left = [times]

    async def fail(e: str, chunk: list[Record]) -> Exception | None:
        if (enterprise is None or e == enterprise) and left[0] > 0:
            left[0] -= 1
            return exc
        return None

    return fail


@contextlib.asynccontextmanager
async def fake_target(dsn: str, adapter: FakeAdapter, clock: FakeClock, registry: CollectorRegistry,
                      **kw: Any) -> AsyncIterator[TargetStage]:
    """The target "p", opened with the fake adapter, ready to be stepped by hand."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    try:
        settings = UplinkSettings(targets={"p": target("http://platform.invalid", **kw)}, interval_ms=20,
                                  settle_s=0.2)
        up = Uplink(pool, settings, zone=TZ, clock=clock, registry=registry, health=DatabaseHealth(registry),
                    events=RunnerEvents(registry), rng=random.Random(9), adapters={"p": adapter})
        async with up.stages["p"].open(asyncio.Event()):
            yield up.stages["p"]
    finally:
        await pool.close()


def states(rows: list[asyncpg.Record]) -> dict[str, int]:
    found: dict[str, int] = {}
    for r in rows:
        found[r["state"]] = found.get(r["state"], 0) + 1
    return found


def key(r: asyncpg.Record) -> tuple[str, str, int, datetime]:
    return (r["enterprise"], r["code"], r["stat_type"], r["period_start"])


async def test_acknowledged_records_are_recorded_when_the_round_ends_in_an_error(db: str) -> None:
    """E1's chunk is acknowledged, then E2's part meets the database going away (an
    error that is no one enterprise's fault, so it leaves the round for the runner), and
    E1's acknowledgement must be in the outbox all the same, or the next round sends
    E1's records again."""
    await seed(db)
    clock, registry, fake = FakeClock(NOW), CollectorRegistry(), FakeAdapter()
    e1_done = asyncio.Event()

    async def e2_breaks(enterprise: str, chunk: list[Record]) -> Exception | None:
        if enterprise == E1:
            e1_done.set()
            return None
        await e1_done.wait()
        return ConnectionResetError("the database went away")

    fake.fail_write = e2_breaks
    async with fake_target(db, fake, clock, registry) as stage:
        with pytest.raises(BaseExceptionGroup) as raised:
            await stage.step()
        assert raised.group_contains(ConnectionResetError, match="the database went away")
        rows = await outbox(db, "p")
        assert {(r["enterprise"], r["state"], r["attempts"]) for r in rows if r["attempts"] or r["state"] != "pending"} \
            == {(E1, "acked", 1)}
        assert sum(r["enterprise"] == E1 and r["state"] == "acked" for r in rows) == len(DUE)
        assert all(r["state"] == "pending" and r["attempts"] == 0 for r in rows if r["enterprise"] == E2)
        acked_first = {key(r) for r in rows if r["state"] == "acked"}

        fake.fail_write = None
        fake.writes.clear()
        assert await stage.step() is False
        # Only E2's records go out again; E1's were acknowledged once and stay so.
        assert {k[0] for k in fake.written()} == {E2} and len(fake.written()) == len(DUE)
        rows = await outbox(db, "p")
        assert states(rows) == {"acked": N_DUE}
        assert all(r["attempts"] == 1 for r in rows if key(r) in acked_first)
        assert count(registry, "nhjc_uplink_acked_total", target="p") == N_DUE


async def test_a_bug_with_one_enterprise_costs_that_enterprise_alone(db: str) -> None:
    """E2's write meets a bug on every try: E2's records wait for their retry (reason
    ``internal``) and E1's are delivered in the same round and in every round after;
    the round itself ends normally, so the target goes on."""
    await seed(db)
    clock, registry, fake = FakeClock(NOW), CollectorRegistry(), FakeAdapter()
    fake.fail_write = failing(RuntimeError("a bug met with E2's data"), enterprise=E2)
    async with fake_target(db, fake, clock, registry) as stage:
        await stage.step()
        rows = await outbox(db, "p")
        assert all(r["state"] == "acked" for r in rows if r["enterprise"] == E1)
        e2 = [r for r in rows if r["enterprise"] == E2]
        assert e2 and all(r["state"] == "pending" and r["attempts"] == 1 for r in e2)
        assert all(r["last_error"].startswith("internal: RuntimeError") for r in e2)
        assert count(registry, "nhjc_uplink_retries_total", target="p", reason="internal") == len(e2)
        assert count(registry, "nhjc_stage_errors_total") == 0, "the round did not fail"

        # Fixed (or the data changed): E2's records go out at their retry.
        fake.fail_write = None
        fake.writes.clear()
        for _ in range(30):  # the records' backoff is at most the target's 4 s
            clock.advance(seconds=1)
            await stage.step()
            if states(await outbox(db, "p")) == {"acked": N_DUE}:
                break
        assert states(await outbox(db, "p")) == {"acked": N_DUE}
        assert {k[0] for k in fake.written()} == {E2}


async def test_a_rejected_chunk_is_split_until_the_refused_records_are_alone(db: str) -> None:
    await seed(db)
    clock, registry, fake = FakeClock(NOW), CollectorRegistry(), FakeAdapter()
    fake.refuse = {POWER}
    async with fake_target(db, fake, clock, registry) as stage:
        assert await stage.step() is False
    rows = await outbox(db, "p")
    refused = [r for r in rows if r["code"] == POWER]
    assert len(refused) == 6 and states(rows) == {"acked": N_DUE - 6, "rejected": 6}
    assert all(r["rejected_status"] == 400 and r["rejected_message"] == "dataCode refused"
               and r["attempts"] == 1 for r in refused)
    # Every record was accepted or refused exactly once: no neighbour was sent twice
    # after being accepted, and each refused record ended in a chunk of its own.
    accepted = [r.key for _, chunk, ok in fake.writes if ok for r in chunk]
    assert len(accepted) == len(set(accepted)) == N_DUE - 6
    alone = [chunk[0].key for _, chunk, ok in fake.writes if not ok and len(chunk) == 1]
    assert sorted(alone) == sorted(key(r) for r in refused)
    # The first request of each enterprise carried all its records; each refused chunk
    # of several was sent again as its two halves.
    chunks = [(e, [r.key for r in chunk]) for e, chunk, _ in fake.writes]
    for enterprise in (E1, E2):
        assert next(len(c) for e, c in chunks if e == enterprise) == len(DUE)
    for e, chunk, ok in fake.writes:
        if not ok and len(chunk) > 1:
            mid = len(chunk) // 2
            assert (e, [r.key for r in chunk[:mid]]) in chunks and (e, [r.key for r in chunk[mid:]]) in chunks
    assert count(registry, "nhjc_uplink_rejected_total", target="p") == 6
    assert count(registry, "nhjc_uplink_acked_total", target="p") == N_DUE - 6
    assert count(registry, "nhjc_uplink_sent_total", target="p") == sum(len(c) for _, c, _ in fake.writes)
    assert count(registry, "nhjc_uplink_request_seconds_count", target="p", call="data", outcome="rejected") \
        == sum(not ok for *_, ok in fake.writes)


async def test_a_platform_failure_pauses_the_target_with_its_backoff(db: str) -> None:
    """One request fails with a refused connection: the rest of the round is not
    started, the target pauses for the target's backoff (1 s, then 2 s, with jitter),
    and once it answers, everything goes through."""
    await seed(db)
    clock, registry, fake = FakeClock(NOW), CollectorRegistry(), FakeAdapter()
    fake.fail_write = failing(RetryableError("connect", "refused"))
    async with fake_target(db, fake, clock, registry, concurrency=1) as stage:
        assert stage.delivery is not None
        assert await stage.step() is False
        assert len(fake.writes) == 1  # one failed request, not one per enterprise
        failed = fake.writes[0][0]
        rows = await outbox(db, "p")
        tried = [r for r in rows if r["attempts"]]
        assert len(tried) == len(DUE) and {r["enterprise"] for r in tried} == {failed}
        assert all(r["state"] == "pending" and r["last_error"] == "connect: refused" for r in tried)
        assert all(NOW + timedelta(seconds=0.5) <= r["next_attempt_at"] <= NOW + timedelta(seconds=1) for r in tried)
        assert count(registry, "nhjc_uplink_retries_total", target="p", reason="connect") == len(DUE)
        assert count(registry, "nhjc_uplink_request_seconds_count", target="p", call="data", outcome="down") == 1
        first_pause = stage.delivery.paused_until
        assert first_pause is not None and NOW + timedelta(seconds=0.5) <= first_pause <= NOW + timedelta(seconds=1)

        # Paused: a step sends nothing, though the other enterprise's records are due.
        assert await stage.step() is False
        assert len(fake.writes) == 1

        # After the pause, the platform still refuses: the second pause is 1-2 s.
        clock.set(first_pause)
        assert await stage.step() is False
        assert len(fake.writes) == 2
        second = stage.delivery.paused_until
        assert second is not None and first_pause + timedelta(seconds=1) <= second <= first_pause + timedelta(seconds=2)

        # The platform answers again: everything is acknowledged, the pause is over.
        fake.fail_write = None
        clock.set(second + timedelta(seconds=4))  # past every record's own retry time
        while await stage.step():
            pass
        assert stage.delivery.paused_until is None
        assert states(await outbox(db, "p")) == {"acked": N_DUE}
        assert count(registry, "nhjc_uplink_target_up", target="p") == 1


async def test_retry_after_is_a_floor_for_the_pause_and_the_records(db: str) -> None:
    await seed(db)
    clock, registry, fake = FakeClock(NOW), CollectorRegistry(), FakeAdapter()
    fake.fail_write = failing(RetryableError("http_429", "slow down", retry_after_s=30.0))
    async with fake_target(db, fake, clock, registry, concurrency=1) as stage:
        assert stage.delivery is not None
        await stage.step()
        assert stage.delivery.paused_until == NOW + timedelta(seconds=30)
        tried = [r for r in await outbox(db, "p") if r["attempts"]]
        assert tried and {r["next_attempt_at"] for r in tried} == {NOW + timedelta(seconds=30)}
        assert count(registry, "nhjc_uplink_retries_total", target="p", reason="http_429") == len(tried)


async def test_a_stale_registration_registers_again_and_retries_the_same_request_once(db: str) -> None:
    """The platform says E1's device is not E1's (HTTP 200, a refresh-worthy message):
    in the same round E1 registers and configures again and the same chunk is sent once
    more; the target does not pause and E2 is untouched."""
    await seed(db)
    clock, registry, fake = FakeClock(NOW), CollectorRegistry(), FakeAdapter()
    fake.fail_write = failing(RefreshError("register", "device_mismatch", "序列号与企业统一社会信用代码不符"),
                              times=1, enterprise=E1)
    async with fake_target(db, fake, clock, registry) as stage:
        assert stage.delivery is not None
        await stage.step()
        assert sorted(fake.registered) == [E1, E1, E2]
        assert sorted(e for e, _ in fake.configured) == [E1, E1, E2]
        e1_writes = [(chunk, ok) for e, chunk, ok in fake.writes if e == E1]
        assert [ok for _, ok in e1_writes] == [False, True]
        assert [r.key for r in e1_writes[0][0]] == [r.key for r in e1_writes[1][0]]  # the same request
        assert stage.delivery.paused_until is None
        assert states(await outbox(db, "p")) == {"acked": N_DUE}
        assert count(registry, "nhjc_uplink_refreshes_total", target="p", reason="device_mismatch") == 1
        assert count(registry, "nhjc_uplink_request_seconds_count", target="p", call="data", outcome="refresh") == 1
        assert count(registry, "nhjc_uplink_request_seconds_count", target="p", call="register", outcome="ok") == 3
        assert count(registry, "nhjc_uplink_retries_total", target="p") == 0


async def test_a_refresh_that_fails_again_is_a_rejection_and_never_a_loop(db: str) -> None:
    """The platform keeps saying it cannot decrypt E1's fields: one registration anew,
    one retry, then E1's records are kept as rejected (refresh_failed), counted by that
    reason, and later steps send them no more."""
    await seed(db)
    clock, registry, fake = FakeClock(NOW), CollectorRegistry(), FakeAdapter()
    fake.fail_write = failing(RefreshError("register", "decrypt_failed", "解密失败！"), enterprise=E1)
    async with fake_target(db, fake, clock, registry) as stage:
        await stage.step()
        assert sorted(fake.registered) == [E1, E1, E2]
        assert sum(e == E1 for e, _, _ in fake.writes) == 2
        rows = await outbox(db, "p")
        assert states(rows) == {"acked": len(DUE), "rejected": len(DUE)}
        refused = [r for r in rows if r["state"] == "rejected"]
        assert {r["enterprise"] for r in refused} == {E1}
        assert all(r["rejected_reason"] == "refresh_failed" and r["rejected_status"] == 200
                   and "decrypt_failed again after registering anew" in r["rejected_message"] for r in refused)
        assert count(registry, "nhjc_uplink_rejected_total", target="p", reason="refresh_failed") == len(DUE)
        assert count(registry, "nhjc_uplink_refreshes_total", target="p", reason="decrypt_failed") == 1

        writes, registrations = len(fake.writes), len(fake.registered)
        for _ in range(5):
            clock.advance(seconds=60)
            await stage.step()
        assert len(fake.writes) == writes and len(fake.registered) == registrations  # no loop


async def test_a_refused_registration_makes_the_records_wait(db: str) -> None:
    await seed(db)
    clock, registry, fake = FakeClock(NOW), CollectorRegistry(), FakeAdapter()
    fake.fail_register = RejectedError(403, "enterprise unknown")
    async with fake_target(db, fake, clock, registry) as stage:
        assert stage.delivery is not None
        await stage.step()
        assert not fake.writes and stage.delivery.paused_until is None
        rows = await outbox(db, "p")
        assert states(rows) == {"pending": N_DUE}
        assert all(r["attempts"] == 1 and r["last_error"] == "register: HTTP 403: enterprise unknown"
                   and r["sent_at"] is None for r in rows)
        assert count(registry, "nhjc_uplink_retries_total", target="p", reason="register") == N_DUE
        assert count(registry, "nhjc_uplink_rejected_total", target="p") == 0
        conn = await asyncpg.connect(db)
        try:
            errors = await conn.fetch("SELECT enterprise, last_error FROM uplink_device WHERE target = 'p'")
        finally:
            await conn.close()
        assert {(e["enterprise"], e["last_error"]) for e in errors} == \
            {(E1, "register: HTTP 403: enterprise unknown"), (E2, "register: HTTP 403: enterprise unknown")}

        fake.fail_register = None
        clock.advance(seconds=4)
        await stage.step()
        assert states(await outbox(db, "p")) == {"acked": N_DUE}


async def test_the_runner_counts_an_unexpected_error_and_steps_again(db: str) -> None:
    """Run by its StageRunner: a bug in a step (here in reading the enterprise registry,
    which every enterprise of the round needs, so it is no one enterprise's fault) is
    counted and paused on by the runner (uplink.pause_min_s), and delivery goes on once
    it is gone."""
    await seed(db)
    registry, fake = CollectorRegistry(), FakeAdapter()
    pool = await asyncpg.create_pool(db, min_size=1, max_size=4)
    try:
        settings = UplinkSettings(targets={"p": target("http://platform.invalid")}, interval_ms=20,
                                  pause_min_s=0.01, pause_max_s=0.02)
        up = Uplink(pool, settings, zone=TZ, clock=FakeClock(NOW), registry=registry,
                    health=DatabaseHealth(registry), events=RunnerEvents(registry), adapters={"p": fake})
        directory = up.stages["p"]._directory
        lookup, bugs = directory.lookup, [RuntimeError("a bug"), RuntimeError("a bug")]

        async def buggy_lookup(codes: list[str]) -> Any:
            if bugs:
                raise bugs.pop()
            return await lookup(codes)

        directory.lookup = buggy_lookup  # type: ignore[method-assign]
        async with running(up):
            async def delivered() -> bool:
                return states(await outbox(db, "p")) == {"acked": N_DUE}

            await wait_until(delivered, "delivery after the bug")
        errors = count(registry, "nhjc_stage_errors_total", stage="uplink p", error_type="RuntimeError")
        assert 1 <= errors <= 2
        assert count(registry, "nhjc_stage_recoveries_total", stage="uplink p") == 1
    finally:
        await pool.close()


async def test_an_adapter_for_a_target_that_does_not_exist_is_refused() -> None:
    settings = UplinkSettings(targets={"p": target("http://platform.invalid")})
    registry = CollectorRegistry()
    with pytest.raises(ValueError, match="unknown uplink targets: q"):
        Uplink(None, settings, zone=TZ, registry=registry, health=DatabaseHealth(registry),
               events=RunnerEvents(registry), adapters={"q": FakeAdapter()})
