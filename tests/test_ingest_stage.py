"""The ingest stage on the stage runner, against a real database that refuses a commit
for a while: the refused batch is tried again, first, until it is committed, and only
then anything gathered after it; nothing is acknowledged before its commit, and an
older value never overwrites a newer one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import asyncpg
from prometheus_client import CollectorRegistry

from ingest.collector import Message
from ingest.metrics import IngestMetrics
from ingest.stage import IngestStage
from ingest.store import Store
from runtime.dberrors import DatabaseHealth
from runtime.runner import RunnerEvents, StageRunner
from tests.test_poison import CODE, NOW_S, AckLog, batcher_for, frame, message
from tools.gateway import enterprise_code


async def until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.01)


async def test_a_refused_commit_is_retried_first_and_nothing_later_overtakes_it(db: str) -> None:
    ent = enterprise_code(808)
    topic = f"nhjc/v1/{ent}/gw-1/readings"
    # A lock held elsewhere and a short lock_timeout: each commit meets the lock and fails
    # with LockNotAvailableError, one of the database's retryable refusals.
    pool = await asyncpg.create_pool(db, server_settings={"lock_timeout": "100"})
    locker = await asyncpg.connect(db)
    registry = CollectorRegistry()
    metrics = IngestMetrics(registry)
    health = DatabaseHealth(registry)
    queue: asyncio.Queue[Message] = asyncio.Queue()
    acks = AckLog()
    stage = IngestStage(collector=acks, batcher=await batcher_for(None, queue, {ent: frozenset({CODE})}, metrics),  # type: ignore[arg-type]
                        store=Store(pool), metrics=metrics)
    runner = StageRunner(stage, interval_s=0.05, pause_min_s=0.05, pause_max_s=0.1, health=health,
                         events=RunnerEvents(registry))

    def retries() -> float:
        return registry.get_sample_value("nhjc_write_retries_total") or 0.0

    def reading(value: float, minute: int = 0) -> bytes:
        return frame([{"code": CODE, "ts": NOW_S + 60 * minute, "value": value}])

    running: asyncio.Task[None] | None = None
    try:
        lock = locker.transaction()
        await lock.start()
        await locker.execute("LOCK TABLE readings IN EXCLUSIVE MODE")  # reads go on, writes wait
        queue.put_nowait(message(topic, reading(1.0), 1))
        running = asyncio.create_task(runner.run(stage.finished))
        await until(lambda: retries() >= 1, 10, "the first commit refused")
        # Gathered while the first batch waits: a newer value of the same reading, and another.
        queue.put_nowait(message(topic, reading(2.0), 2))
        queue.put_nowait(message(topic, reading(3.0, minute=1), 3))
        await until(lambda: retries() >= 4, 10, "the refused batch tried again")
        # Reported as a retry of the stage (a lock is contention, not an outage).
        assert runner.failures >= 1
        assert (registry.get_sample_value("nhjc_database_retries_total", {"stage": "ingest"}) or 0) >= 1
        assert acks.acked == []  # nothing acknowledged before its commit
        assert await pool.fetchval("SELECT count(*) FROM readings") == 0
        await lock.rollback()
        await until(lambda: acks.acked == [1, 2, 3], 10, "everything committed")
        rows = await pool.fetch("SELECT ts, value FROM readings ORDER BY ts")
        assert [r["value"] for r in rows] == [2.0, 3.0]  # the older 1.0 came first, and was overwritten
        assert health.up is True and acks.forgotten == []
        stage.stop()
        await asyncio.wait_for(running, 5)
        assert stage.finished.is_set() and runner.failures == 0
        assert registry.get_sample_value("nhjc_readings_accepted_total") == 3
    finally:
        if running is not None and not running.done():
            running.cancel()
        await locker.close()
        await pool.close()
