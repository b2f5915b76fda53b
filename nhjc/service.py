"""``nhjc run``: the composition root.  It builds every stage from the settings, runs
them in one task group, and shuts them down from the source: stop reading the broker,
commit and acknowledge what is in hand, then stop the rest."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import asyncpg
from prometheus_client import CollectorRegistry

from config.settings import Settings, secret_value
from ingest.batch import Quarantined, ReadingBatch, error_detail
from ingest.batcher import Batcher, RegistryCache
from ingest.collector import Collector
from ingest.frames import FrameLimits
from ingest.items import ItemSpec
from ingest.metrics import IngestMetrics
from ingest.registry import known_codes, upsert_items
from ingest.store import Store
from nhjc.http import HttpEndpoint
from nhjc.startup import describe
from processing.aggregator import Aggregator
from processing.completeness import CompletenessUpdater
from runtime.dberrors import RETRYABLE, DatabaseHealth, is_retryable
from runtime.dbpool import open_pool
from runtime.migrate import available
from runtime.runner import RunnerEvents, Stage, StageRunner
from uplink import Uplink

__all__ = ["SchemaError", "Service", "main_run"]

log = logging.getLogger("nhjc.service")

SHUTDOWN_GRACE_S = 10.0
COMPLETENESS_INTERVAL_S = 60.0
# The readiness probe: SELECT 1 this often, on a connection of its own, each try with
# this deadline; a stall is reported within PROBE_EVERY_S + PROBE_DEADLINE_S.
PROBE_EVERY_S = 1.0
PROBE_DEADLINE_S = 2.0
RETRY_MIN_S, RETRY_MAX_S = 0.2, 5.0

T = TypeVar("T")


def _quiet_database_leftovers(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncpg returns a connection to its pool in a shielded task: when the connection is
    cut under it (a stall ended by terminating the pool), nobody awaits that task and
    asyncio would log its error with a traceback.  Such an error is the database being
    away, already said once by the health state: keep it to a debug line."""
    exc = context.get("exception")
    if exc is not None and is_retryable(exc):
        log.debug("a background database task ended: %s: %s", type(exc).__name__, exc)
        return
    loop.default_exception_handler(context)


class SchemaError(RuntimeError):
    """The database schema is older than this program."""


async def check_schema(pool: asyncpg.Pool) -> None:
    want = available()[-1][0]
    try:
        have = await pool.fetchval("SELECT max(version) FROM schema_migrations")
    except asyncpg.UndefinedTableError:
        have = None
    if have is None or have < want:
        raise SchemaError(f"database schema is at version {have or 0}, nhjc needs {want}: run `nhjc migrate`")


class Service:
    def __init__(self, settings: Settings, *, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = IngestMetrics(self.registry)
        self.pool: asyncpg.Pool | None = None
        self.collector: Collector | None = None
        self.http: HttpEndpoint | None = None
        self.uplink: Uplink | None = None
        self._stopping = asyncio.Event()  # stop reading; drain what is in hand
        self._ingest_done = asyncio.Event()  # everything in hand committed and acknowledged
        self._finished = asyncio.Event()  # every stage has returned
        # What every stage and the probe last found; one log line per change of state.
        self.health = DatabaseHealth(self.registry, on_change=lambda up: self.metrics.database_up.set(1 if up else 0))
        self.events = RunnerEvents(self.registry)  # the stage runners' events, one set per registry

    # --- readiness -----------------------------------------------------------------
    def ready(self) -> dict[str, bool]:
        return {"broker": bool(self.collector and self.collector.connected), "database": self.health.up is True}

    def not_ready_reasons(self) -> dict[str, str]:
        """Why the parts that are down are down (for /readyz)."""
        reasons = {}
        if self.health.up is not True:
            reasons["database"] = self.health.reason or "not checked yet"
        if not (self.collector and self.collector.connected):
            reasons["broker"] = "not connected"
        return reasons

    def _db_state(self, ok: bool, exc: BaseException | None = None, stage: str = "ingest") -> None:
        if ok:
            self.health.succeeded(stage)
        else:
            self.health.failed(stage, exc or ConnectionError("database unavailable"))

    async def _watch_database(self) -> None:
        """The readiness probe.  Not a wait for a pooled connection (all of them may be
        stuck in a stall): its own connection, reconnected when lost, and a deadline."""
        loop = asyncio.get_running_loop()
        conn: asyncpg.Connection | None = None
        try:
            while not self._stopping.is_set():
                started = loop.time()
                conn, exc = await self._probe(conn)
                if exc is None:
                    self.health.succeeded("probe")
                else:
                    self.health.failed("probe", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), max(0.0, PROBE_EVERY_S - (loop.time() - started)))
        finally:
            if conn is not None:
                conn.terminate()

    async def _probe(self, conn: asyncpg.Connection | None) -> tuple[asyncpg.Connection | None, BaseException | None]:
        """SELECT 1 within PROBE_DEADLINE_S: (the connection to keep, None) or (None, the
        error).  A lost connection (terminated, the server restarted) is replaced at once
        within the same deadline, so it alone never makes the service unready."""
        try:
            async with asyncio.timeout(PROBE_DEADLINE_S):
                while True:
                    reused = conn is not None
                    try:
                        if conn is None:
                            conn = await asyncpg.connect(self.settings.database.dsn(), timeout=PROBE_DEADLINE_S,
                                                         server_settings={"application_name": "nhjc-probe"})
                        await conn.fetchval("SELECT 1")
                        return conn, None
                    except Exception as exc:
                        if conn is not None:
                            conn.terminate()
                            conn = None
                        if isinstance(exc, TimeoutError) or not reused:
                            raise
        except TimeoutError:
            if conn is not None:
                conn.terminate()
            return None, TimeoutError(f"no answer to SELECT 1 within {PROBE_DEADLINE_S:.0f}s")
        except Exception as exc:  # refused, a bad password, anything: not ready, and why
            return None, exc

    def _until_database(self, stage: str, op: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        """op, retried with backoff while the database is away.  For the ingest's own
        look-ups (the items registry): the message in hand stays unacknowledged meanwhile,
        and shutdown's grace period bounds the wait."""
        async def retrying(*args: Any) -> T:
            delay = RETRY_MIN_S
            while True:
                try:
                    result = await op(*args)
                except Exception as exc:
                    if not is_retryable(exc):
                        raise
                    self.health.failed(stage, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                    continue
                self.health.succeeded(stage)
                return result

        return retrying

    # --- ingest ----------------------------------------------------------------------
    async def _apply_items(self, items: list[ItemSpec], source: str) -> None:
        """One message's items, in one transaction (all or none).  Handed to the batcher
        wrapped in ``_until_database``: the database being away is retried there, and any
        other error reaches the batcher, which quarantines the message."""
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            changed = await upsert_items(conn, items, source)
        if changed:
            log.info("items registry: %d item(s) changed from %s", changed, source)

    async def _commit(self, batch: ReadingBatch, store: Store) -> bool:
        """Write the batch and acknowledge its messages, retrying while the database is
        away.  False when shutdown came before the database did (nothing acknowledged:
        the broker redelivers).

        An error that is not the infrastructure's is a fault of some message's content:
        the batch is split in halves, each committed on its own, down to the one message
        at fault, which is quarantined whole (``store_rejected``).  Bisecting finds one bad
        message among n in about 2·log2(n) commits instead of n, and a batch that fails
        only as a whole (its messages each fine) is simply committed in parts."""
        started = time.perf_counter()
        try:
            written = await self._write(batch, store)
        except Exception as exc:  # not retryable: _write retries those
            if batch.messages > 1:
                first, second = batch.halves()
                return await self._commit(first, store) and await self._commit(second, store)
            return await self._reject(batch, store, exc)
        if written is None:
            return False
        self._committed(batch, written, time.perf_counter() - started)
        return True

    async def _write(self, batch: ReadingBatch, store: Store) -> int | None:
        """store.write with retries on the database's errors; None when shutdown gave up."""
        delay = RETRY_MIN_S
        give_up_at: float | None = None
        while True:
            try:
                written = await store.write(batch)
                self._db_state(True)
                return written
            except RETRYABLE as exc:
                self._db_state(False, exc)
                self.metrics.write_retries.inc()
            if self._stopping.is_set():
                give_up_at = give_up_at or time.monotonic() + SHUTDOWN_GRACE_S
                if time.monotonic() > give_up_at:
                    return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    async def _reject(self, batch: ReadingBatch, store: Store, exc: Exception) -> bool:
        """The store refused one message's content: keep the message whole in quarantine
        instead.  Should even that row be refused, a minimal one (ASCII text, the raw bytes
        as bytea); should that be refused too, the message stays unacknowledged (its place
        in the window freed; the broker redelivers it on the next connection) and
        ingestion goes on: never a loop."""
        detail = f"the store refused it: {error_detail(exc)}"
        src = batch.sources[0] if batch.sources else None
        assert self.collector is not None
        if src is None:  # a batch not from the batcher: nothing to quarantine it as
            self.metrics.message_failed("store", "(unknown)", exc, "left unacknowledged")
            self.collector.forget(batch.handles)
            return True
        self.metrics.message_failed("store", src.topic, exc)
        attempts = [
            Quarantined(src.received_at_us, src.topic, src.enterprise, "store_rejected", detail, src.payload),
            Quarantined(time.time_ns() // 1000, ascii(src.topic[:200]), None, "store_rejected", detail, src.payload),
        ]
        for q in attempts:
            row = ReadingBatch.empty([q], frames=src.frames)
            row.handles = list(batch.handles)
            started = time.perf_counter()
            try:
                written = await self._write(row, store)
            except Exception as again:
                self.metrics.message_failed("store", src.topic, again, "quarantine row refused")
                continue
            if written is None:
                return False
            self._committed(row, written, time.perf_counter() - started)
            return True
        log.error("message on %s could not be stored nor quarantined; left unacknowledged", ascii(src.topic[:200]))
        self.collector.forget(batch.handles)
        return True

    def _committed(self, batch: ReadingBatch, written: int, seconds: float) -> None:
        assert self.collector is not None
        self.collector.ack(batch.handles)
        now_us = time.time_ns() // 1000
        rows = batch.rows
        self.metrics.batch_committed(
            frames=batch.frames,
            accepted=len(rows),
            quarantine_reasons=[(q.reason, q.level) for q in batch.quarantine],
            seconds=seconds,
            reading_lag_s=(now_us - int(rows["ts"].max())) / 1e6 if len(rows) else None,
            receive_lag_s=(now_us - int(rows["received_at"].min())) / 1e6 if len(rows) else None,
        )
        log.debug("committed %d readings (%d new or changed), %d quarantined", len(rows), written, len(batch.quarantine))

    async def _ingest(self, batcher: Batcher, store: Store) -> None:
        # One commit in flight while the next batch is gathered and decoded: the database
        # and our decoding work at the same time, and commits (so acks) stay in order.
        committing: asyncio.Task[bool] | None = None
        try:
            while True:
                batch = await batcher.next_batch(self._stopping)
                if committing is not None and not await committing:
                    log.warning("shutting down with a batch uncommitted; the broker keeps it")
                    break
                committing = None
                if batch is None:
                    break
                committing = asyncio.create_task(self._commit(batch, store), name="commit")
            if committing is not None:
                await committing
        finally:
            if committing is not None and not committing.done():
                committing.cancel()
            self._ingest_done.set()

    # --- lifecycle ---------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        asyncio.get_running_loop().set_exception_handler(_quiet_database_leftovers)
        # Listen first: a metrics port in use stops the start before anything connects.
        self.http = HttpEndpoint(host=s.metrics.host, port=s.metrics.port, registry=self.registry,
                                 ready=self.ready, reasons=self.not_ready_reasons)
        await self.http.listen()
        try:
            self.pool = await open_pool(
                s.database.dsn(), max_size=s.database.pool_size,
                command_timeout_s=s.database.command_timeout_s, connect_timeout_s=s.database.connect_timeout_s,
            )
        except BaseException:
            await self.http.close()
            raise
        try:
            try:
                await check_schema(self.pool)
            except TimeoutError:  # asyncpg's says nothing: name what timed out
                raise TimeoutError(f"no answer within {s.database.connect_timeout_s:g}s "
                                   "(database.connect_timeout_s)") from None
            self._db_state(True, stage="start")
            pool = self.pool
            registry_cache = RegistryCache(self._until_database("registry", lambda: known_codes(pool)))
            await registry_cache.reload(force=True)
            m = s.mqtt
            self.collector = Collector(
                url=m.url, client_id=m.client_id, username=m.username, password=secret_value(m.password),
                ca_file=m.ca_file, cert_file=m.cert_file, key_file=m.key_file,
                keepalive_s=m.keepalive_s, receive_maximum=m.receive_maximum,
                session_expiry_s=m.session_expiry_s, reconnect_min_s=m.reconnect_min_s,
                reconnect_max_s=m.reconnect_max_s, share_group=m.share_group,
                on_state=lambda up: self.metrics.broker_up.set(1 if up else 0),
            )
            collector = self.collector
            self.metrics.queue_depth.set_function(collector.queue.qsize)
            self.metrics.unacked.set_function(lambda: collector.unacked)
            self.metrics.unacked_peak.set_function(lambda: collector.peak_unacked)
            self.metrics.window_paused.set_function(lambda: 1 if collector.window_paused else 0)
            i = s.ingest
            batcher = Batcher(
                self.collector.queue, registry=registry_cache,
                apply_items=self._until_database("items", self._apply_items),
                limits=FrameLimits(i.max_frame_bytes, i.max_readings_per_frame,
                                   i.early_tolerance_s, i.late_horizon_s),
                batch_rows=i.batch_rows, batch_ms=i.batch_ms, metrics=self.metrics,
            )
            store = Store(self.pool)
            http_stop = asyncio.Event()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.http.run(http_stop), name="http")
                tg.create_task(self.collector.run(self._ingest_done), name="collector")
                ingest = tg.create_task(self._ingest(batcher, store), name="ingest")
                tg.create_task(self._watch_database(), name="database-watch")
                downstream = [tg.create_task(coro, name=name) for name, coro in self._more_stages(stop)]
                await stop.wait()
                log.info("stopping: no new messages; committing what is in hand")
                stop_by = asyncio.get_running_loop().time() + SHUTDOWN_GRACE_S
                self.collector.pause()
                self._stopping.set()
                gave_up = False
                try:
                    await asyncio.wait_for(self._ingest_done.wait(), SHUTDOWN_GRACE_S)
                except TimeoutError:
                    gave_up = True
                    # The database is stuck: leave the batch unacknowledged; the broker
                    # redelivers it to the next run.
                    log.warning("commit did not finish in %.0fs; leaving it to redelivery", SHUTDOWN_GRACE_S)
                    ingest.cancel()
                if not await self._stop_downstream(downstream, stop_by) or gave_up:
                    # What was cancelled may still wait on the stalled database (a rollback
                    # on the way out): cut every connection; the server rolls back.
                    self.pool.terminate()
                    # A cancellation that met the cut connection can come back as a
                    # database error, which the commit would retry: cancel until it stops.
                    while gave_up and not ingest.done():
                        ingest.cancel()
                        await asyncio.wait([ingest], timeout=0.5)
                http_stop.set()
        finally:
            await self.http.close()  # already closed unless the start failed
            try:  # a graceful close waits on the server: bounded, for a stalled one
                await asyncio.wait_for(self.pool.close(), PROBE_DEADLINE_S)
            except (TimeoutError, *RETRYABLE):
                self.pool.terminate()
            self._finished.set()

    @staticmethod
    async def _stop_downstream(tasks: list[asyncio.Task[None]], stop_by: float) -> bool:
        """Aggregation, completeness and uplink finish their round, until stop_by (at
        least a second): a stalled database would hold them in a statement until its
        time-out.  Then they are cancelled (False); their work stays in the database, so
        that loses nothing (an uplink request cut short is sent again next run)."""
        if not tasks:
            return True
        _, late = await asyncio.wait(tasks, timeout=max(1.0, stop_by - asyncio.get_running_loop().time()))
        if late:
            log.warning("cancelling %s: the database did not answer in time", ", ".join(t.get_name() for t in late))
            for t in late:
                t.cancel()
        return not late

    def _more_stages(self, stop: asyncio.Event) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        """Stages downstream of the readings: aggregation, completeness and uplink.
        They read their work from the database, so stopping them loses nothing."""
        assert self.pool is not None
        s = self.settings
        p = s.processing

        def runner(stage: Stage, interval_s: float) -> StageRunner:
            return StageRunner(stage, interval_s=interval_s, pause_min_s=p.pause_min_s,
                               pause_max_s=p.pause_max_s, health=self.health, events=self.events)

        aggregator = Aggregator(p, pool=self.pool, registry=self.registry)
        completeness = CompletenessUpdater(p, pool=self.pool, registry=self.registry)
        stages: list[tuple[str, Coroutine[Any, Any, None]]] = [
            ("aggregator", runner(aggregator, p.interval_ms / 1000).run(stop)),
            ("completeness", runner(completeness, p.completeness_interval_s).run(stop)),
        ]
        if any(t.enabled for t in s.uplink.targets.values()):
            self.uplink = Uplink(self.pool, s.uplink, zone=p.zone, registry=self.registry,
                                 health=self.health, events=self.events)
            stages.append(("uplink", self.uplink.run(stop)))
        return stages


def main_run(args: argparse.Namespace, settings: Settings) -> int:
    async def _main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await Service(settings).run(stop)
        except Exception as exc:
            # ValueError: an uplink target's flavour or TLS files.  The broker is not
            # here: the collector waits for it (not ready) instead of stopping.
            line = describe(exc, settings.database, plain=(SchemaError, ValueError))
            if line is None:
                raise
            print(f"nhjc run: {line}", file=sys.stderr)
            return 1
        return 0

    return asyncio.run(_main())
