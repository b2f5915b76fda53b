"""Ownership of singular work (runtime/ownership.py) against a real PostgreSQL: one owner
at a time, a lost connection stops the owner's step in progress before anyone else can
take the job, and the database frees the job of an owner that went silent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from runtime.ownership import OwnedStage, Ownership, OwnershipEvents, lock_key
from tests.adversity import TcpProxy
from tools.guest import ADMIN_DSN

JOB = "uplink provincial"


def make(dsn: str, name: str, *, release_after_s: int = 20, deadline_s: float = 1.0) -> tuple[Ownership, CollectorRegistry]:
    registry = CollectorRegistry()
    own = Ownership(dsn, application_name=f"nhjc-owner {name}", heartbeat_s=0.5, deadline_s=deadline_s,
                    release_after_s=release_after_s, events=OwnershipEvents(registry))
    return own, registry


def changes(registry: CollectorRegistry, change: str, job: str = JOB) -> float:
    return registry.get_sample_value("nhjc_ownership_changes_total", {"work": job, "change": change}) or 0.0


class Work:
    """A stage whose step runs until cancelled; says whether it is running."""

    name = JOB

    def __init__(self) -> None:
        self.running = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.steps = 0

    async def step(self) -> bool:
        self.steps += 1
        self.running.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return False


@pytest.fixture
async def pair(db: str) -> AsyncIterator[tuple[Ownership, Ownership]]:
    a, _ = make(db, "a")
    b, _ = make(db, "b")
    yield a, b
    await a.close()
    await b.close()


async def terminate(application_name: str) -> int:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        return int(await admin.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = $1", application_name))
    finally:
        await admin.close()


async def wait_until(cond: object, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not cond():  # type: ignore[operator]
            await asyncio.sleep(0.05)


def test_lock_keys_are_fixed_signed_32_bit() -> None:
    # Every instance and version must compute the same key for a job.
    assert lock_key("completeness") == lock_key("completeness")
    assert lock_key(JOB) != lock_key("uplink national")
    for job in ("completeness", JOB, "quality", "x" * 300):
        assert -(1 << 31) <= lock_key(job) < 1 << 31


async def test_one_owner_and_the_other_takes_over_when_its_connection_ends(db: str) -> None:
    a, ra = make(db, "a")
    b, rb = make(db, "b")
    work_a, work_b = Work(), Work()
    owned_a, owned_b = a.owned(work_a), b.owned(work_b)
    try:
        await a.step()
        await b.step()
        assert a.held == [JOB] and b.held == []
        assert await owned_b.step() is False and work_b.steps == 0  # not the owner: idle
        step_a = asyncio.create_task(owned_a.step())
        await asyncio.wait_for(work_a.running.wait(), 5)
        assert ra.get_sample_value("nhjc_owned", {"work": JOB}) == 1
        # The owner's lock connection is cut: its step in progress is cancelled at once
        # (before anyone could take the job), and the job is free for the other.
        assert await terminate("nhjc-owner a") == 1
        assert await asyncio.wait_for(step_a, 5) is False
        assert work_a.cancelled.is_set()
        assert a.held == [] and changes(ra, "lost") == 1
        await b.step()
        assert b.held == [JOB] and changes(rb, "acquired") == 1
        # The first owner comes back (its next step reconnects) and does not get it.
        await a.step()
        assert a.held == []
    finally:
        await a.close()
        await b.close()


async def test_close_releases_for_the_next_heartbeat_of_another(pair: tuple[Ownership, Ownership]) -> None:
    a, b = pair
    a.want("completeness")
    b.want("completeness")
    await a.step()
    await b.step()
    assert a.held == ["completeness"] and b.held == []
    await a.close()
    await b.step()
    assert b.held == ["completeness"]


async def test_an_owner_whose_check_is_overdue_stops_its_work(db: str) -> None:
    # No check answered for heartbeat_s + deadline_s (1.5 s here): the event loop was
    # blocked, the process frozen and thawed.  The owner gives up by itself and cancels
    # its step, whatever the check would have said.
    a, ra = make(db, "a")
    work = Work()
    owned = a.owned(work)
    try:
        await a.step()
        step = asyncio.create_task(owned.step())
        await asyncio.wait_for(work.running.wait(), 5)
        assert await asyncio.wait_for(step, 5) is False and work.cancelled.is_set()
        assert a.held == [] and changes(ra, "lost") == 1
    finally:
        await a.close()


async def test_the_database_frees_the_job_of_an_owner_that_stopped_checking(db: str) -> None:
    # A frozen owner (or one whose host vanished) sends no check: its session ends after
    # release_after_s of silence, on the server's side, and the other takes the job.
    a, _ = make(db, "a", release_after_s=4)
    b, _ = make(db, "b", release_after_s=4)
    a.want(JOB)
    b.want(JOB)
    try:
        await a.step()
        assert a.held == [JOB]
        assert a._expiry is not None
        a._expiry.cancel()  # frozen: not even its own timer runs
        conn = a._conn  # the test looks at the session's settings
        assert conn is not None
        assert await conn.fetchval("SHOW idle_session_timeout") == "4s"
        assert await conn.fetchval("SHOW tcp_user_timeout") == "4000"  # ms
        loop = asyncio.get_running_loop()
        silent_since = loop.time()
        while not b.held:
            await asyncio.sleep(0.25)
            await b.step()
            assert loop.time() - silent_since < 15, "the job was never freed"
        took = loop.time() - silent_since
        print(f"a silent owner's job was free after {took:.1f} s (release_after_s 4)")
        assert took >= 3.5  # not before the owner was silent that long
    finally:
        await a.close()
        await b.close()


async def test_an_unanswered_check_stops_the_owner_before_the_database_frees_the_job(db: str) -> None:
    # The path to the database hangs (bytes held, connection open): the owner's check
    # gets no answer within deadline_s, so it stops its work; the job is not free yet.
    parts = urlsplit(db)
    with TcpProxy(parts.port or 5432) as proxy:
        netloc = parts.netloc.replace(f":{parts.port}", f":{proxy.port}")
        a, ra = make(urlunsplit(parts._replace(netloc=netloc)), "a", deadline_s=1.0)
        b, _ = make(db, "b")
        work = Work()
        owned = a.owned(work)
        b.want(JOB)
        try:
            await a.step()
            step = asyncio.create_task(owned.step())
            await asyncio.wait_for(work.running.wait(), 5)
            proxy.stall()
            with pytest.raises(TimeoutError):
                await a.step()
            assert await asyncio.wait_for(step, 5) is False and work.cancelled.is_set()
            assert a.held == [] and changes(ra, "lost") == 1
            # The stalled session still holds the lock on the server: nobody works on the
            # job until the server ends it (release_after_s), never two at once.
            await b.step()
            assert b.held == []
        finally:
            proxy.resume()
            await a.close()
            await b.close()


async def test_a_stage_that_loses_its_job_is_told_once(pair: tuple[Ownership, Ownership]) -> None:
    a, b = pair

    class Shows:
        name = "completeness"
        disowned_calls = 0

        async def step(self) -> bool:
            return False

        def disowned(self) -> None:
            self.disowned_calls += 1

    stage = Shows()
    owned = a.owned(stage)
    b.want("completeness")
    await owned.step()
    assert stage.disowned_calls == 0  # never owned: nothing to drop
    await a.step()
    await owned.step()
    assert await terminate("nhjc-owner a") == 1
    await wait_until(lambda: not a.held, 5)
    await b.step()
    assert b.held == ["completeness"]
    await owned.step()
    await owned.step()
    assert stage.disowned_calls == 1


async def test_owned_stage_passes_the_inner_result(pair: tuple[Ownership, Ownership]) -> None:
    a, _ = pair

    class Busy:
        name = "quality"

        async def step(self) -> bool:
            return True

    owned = a.owned(Busy())
    assert isinstance(owned, OwnedStage) and owned.name == "quality"
    assert await owned.step() is False  # no heartbeat yet: not owned
    await a.step()
    assert await owned.step() is True


async def test_a_peers_lock_is_borrowed_only_once_it_is_free_and_given_back(pair: tuple[Ownership, Ownership],
                                                                           db: str) -> None:
    # The adoption of MQTT sessions: b tries a's session lock; it gets it only once a is
    # gone, holds it (listed, lost with its connection like the jobs), and gives it back.
    a, b = pair
    session = "mqtt session a"
    a.want(session)
    await a.step()
    await b.step()  # b's connection is up
    assert a.holds(session)
    assert not await b.try_borrow(session)
    await a.close()
    assert await b.try_borrow(session)
    assert b.holds(session) and session in b.held
    assert not await b.try_borrow(session)  # held here already: never taken twice
    fresh, _ = make(db, "a again")
    try:
        fresh.want(session)
        await fresh.step()
        assert not fresh.holds(session)  # the returning owner waits while it is borrowed
        await b.give_back(session)
        assert not b.holds(session)
        await fresh.step()
        assert fresh.holds(session)
    finally:
        await fresh.close()


async def test_a_borrowed_lock_is_lost_with_the_connection(pair: tuple[Ownership, Ownership]) -> None:
    a, b = pair
    await a.step()
    assert await a.try_borrow("mqtt session gone")
    lost = a.lost_event
    assert await terminate("nhjc-owner a") == 1
    await asyncio.wait_for(lost.wait(), 5)
    assert not a.holds("mqtt session gone")
    await b.step()
    assert await b.try_borrow("mqtt session gone")
