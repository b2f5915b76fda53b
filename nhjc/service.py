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
from collections.abc import Coroutine
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry

from config.settings import Settings, secret_value
from ingest.batch import Quarantined, ReadingBatch, error_detail
from ingest.batcher import Batcher, RegistryCache
from ingest.collector import Collector
from ingest.frames import FrameLimits
from ingest.items import ItemSpec
from ingest.metrics import IngestMetrics
from nhjc.http import HttpEndpoint
from nhjc.startup import describe
from processing.aggregator import Aggregator
from processing.completeness import CompletenessUpdater
from processing.dberrors import RETRYABLE
from processing.migrate import available
from processing.registry import known_codes, upsert_items
from processing.store import Store
from uplink import Uplink

__all__ = ["SchemaError", "Service", "main_run"]

log = logging.getLogger("nhjc.service")

SHUTDOWN_GRACE_S = 10.0
COMPLETENESS_INTERVAL_S = 60.0


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
        self._db_ok = False

    # --- readiness -----------------------------------------------------------------
    def ready(self) -> dict[str, bool]:
        return {"broker": bool(self.collector and self.collector.connected), "database": self._db_ok}

    def _db_state(self, ok: bool) -> None:
        self._db_ok = ok
        self.metrics.database_up.set(1 if ok else 0)

    async def _watch_database(self) -> None:
        assert self.pool is not None
        while not self._stopping.is_set():
            try:
                await self.pool.fetchval("SELECT 1", timeout=5)
                self._db_state(True)
            except (*RETRYABLE, asyncpg.PostgresError):
                self._db_state(False)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 5)

    # --- ingest ----------------------------------------------------------------------
    async def _apply_items(self, items: list[ItemSpec], source: str) -> None:
        """One message's items, in one transaction (all or none).  Errors go to the
        batcher, which retries the database's and quarantines the message for the rest."""
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
        delay = 0.2
        give_up_at: float | None = None
        while True:
            try:
                written = await store.write(batch)
                self._db_state(True)
                return written
            except RETRYABLE as exc:
                self._db_state(False)
                self.metrics.write_retries.inc()
                log.warning("batch of %d readings not committed (%s); retrying", len(batch), exc)
            if self._stopping.is_set():
                give_up_at = give_up_at or time.monotonic() + SHUTDOWN_GRACE_S
                if time.monotonic() > give_up_at:
                    return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _reject(self, batch: ReadingBatch, store: Store, exc: Exception) -> bool:
        """The store refused one message's content: keep the message whole in quarantine
        instead.  Should even that row be refused, a minimal one (ASCII text, the raw bytes
        as bytea); should that be refused too, the message stays unacknowledged (the broker
        redelivers it on the next start) and ingestion goes on: never a loop."""
        detail = f"the store refused it: {error_detail(exc)}"
        src = batch.sources[0] if batch.sources else None
        if src is None:  # a batch not from the batcher: nothing to quarantine it as
            self.metrics.message_failed("store", "(unknown)", exc, "left unacknowledged")
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
        # Listen first: a metrics port in use stops the start before anything connects.
        self.http = HttpEndpoint(host=s.metrics.host, port=s.metrics.port,
                                 registry=self.registry, ready=self.ready)
        await self.http.listen()
        try:
            self.pool = await asyncpg.create_pool(
                s.database.dsn(), min_size=1, max_size=s.database.pool_size,
                command_timeout=s.database.command_timeout_s,
            )
        except BaseException:
            await self.http.close()
            raise
        try:
            await check_schema(self.pool)
            self._db_state(True)
            registry_cache = RegistryCache(lambda: known_codes(self.pool))  # type: ignore[arg-type]
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
                self.collector.queue, registry=registry_cache, apply_items=self._apply_items,
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
                for name, coro in self._more_stages(stop):
                    tg.create_task(coro, name=name)
                await stop.wait()
                log.info("stopping: no new messages; committing what is in hand")
                self.collector.pause()
                self._stopping.set()
                try:
                    await asyncio.wait_for(self._ingest_done.wait(), SHUTDOWN_GRACE_S)
                except TimeoutError:
                    # The database is stuck: leave the batch unacknowledged; the broker
                    # redelivers it to the next run.
                    log.warning("commit did not finish in %.0fs; leaving it to redelivery", SHUTDOWN_GRACE_S)
                    ingest.cancel()
                http_stop.set()
        finally:
            await self.http.close()  # already closed unless the start failed
            await self.pool.close()
            self._finished.set()

    def _more_stages(self, stop: asyncio.Event) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        """Stages downstream of the readings: aggregation, completeness and uplink.
        They read their work from the database, so stopping them loses nothing."""
        assert self.pool is not None
        s = self.settings
        p = s.processing
        aggregator = Aggregator(self.pool, timezone=p.timezone, max_gap_s=p.max_gap_s,
                                stuck_after_s=p.stuck_after_s, registry=self.registry)
        completeness = CompletenessUpdater(self.pool, self.registry, timezone=p.timezone)
        stages: list[tuple[str, Coroutine[Any, Any, None]]] = [
            ("aggregator", aggregator.run(stop, p.interval_ms / 1000)),
            ("completeness", completeness.run(stop, COMPLETENESS_INTERVAL_S)),
        ]
        targets = {name: t for name, t in s.uplink.targets.items() if t.enabled}
        if targets:
            self.uplink = Uplink(self.pool, targets, timezone=p.timezone, registry=self.registry,
                                 interval_s=s.uplink.interval_ms / 1000, settle_s=s.uplink.settle_s)
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
