"""The ingest stage: messages from the broker, decoded into batches, committed to the
store, then acknowledged, in the order they came.  Run by ``runtime.runner.StageRunner``.

One commit is in flight while the next batch is gathered and decoded, so the database
and the decoding work at the same time; commits, and so acknowledgements, stay in order.

A commit the database fails (an outage, a cut connection) raises out of the step: the
runner pauses with its backoff and reports the outage, and the next step tries the same
batch again before anything gathered after it, so an older value never overwrites a
newer one.  Nothing is acknowledged meanwhile.

Any other error of the store is a fault of some message's content: the batch is split
in halves, each committed on its own, down to the one message at fault, which is kept
whole in quarantine (``store_rejected``).  Bisecting finds one bad message among n in
about 2·log2(n) commits instead of n, and a batch that fails only as a whole (its
messages each fine) is simply committed in parts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from config.settings import IngestSettings, MqttSettings
from ingest.batch import Quarantined, ReadingBatch, error_detail
from ingest.batcher import Batcher
from ingest.collector import Collector
from ingest.lookups import ItemsWriter, registry_cache, until_database
from ingest.metrics import IngestMetrics
from ingest.store import Store
from runtime.dberrors import DatabaseHealth, is_retryable

__all__ = ["IngestStage"]

log = logging.getLogger("nhjc.ingest")


@dataclass(slots=True)
class _InHand:
    """A batch not yet committed.  ``refused``: the store refused this one message (its
    quarantine row is what is committed instead); ``attempt``: which quarantine row
    is tried next (the full one, then a minimal one)."""

    batch: ReadingBatch
    refused: Exception | None = None
    attempt: int = 0


class IngestStage:
    """Owns the collector (the broker connection), the batcher and the store.

    ``step`` commits the batch in hand while it gathers the next.  ``stop`` begins the
    shutdown: nothing more is read from the broker, what is in hand is committed and
    acknowledged by the following steps, then ``finished`` is set (run the stage with
    ``finished`` as the runner's stop, and the collector until it too)."""

    name = "ingest"

    def __init__(self, *, collector: Collector, batcher: Batcher, store: Store, metrics: IngestMetrics) -> None:
        self._collector = collector
        self._batcher = batcher
        self._store = store
        self._metrics = metrics
        self._stopping = asyncio.Event()  # stop reading; commit what is in hand
        self.finished = asyncio.Event()  # everything in hand committed and acknowledged
        self._held: deque[_InHand] = deque()  # to commit, in this order, before anything else
        self._next: ReadingBatch | None = None  # gathered while the last commit ran
        self._committing: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, settings: IngestSettings, mqtt: MqttSettings, *, pool: asyncpg.Pool,
                   metrics: IngestMetrics, health: DatabaseHealth,
                   gate: Callable[[], Awaitable[None]] | None = None, adopt: bool = False) -> IngestStage:
        """The stage as the settings describe it, the items registry read (retried
        while the database is away).  ``gate`` and ``adopt``: see ``Collector``; an
        adopting stage (a gone peer's session, drained) leaves the broker state and the
        window gauges to the instance's own."""
        if adopt:
            collector = Collector(mqtt, adopt=True)
        else:
            collector = Collector(mqtt, on_state=metrics.broker_changed, gate=gate)
            metrics.collector_started(collector)
        registry = registry_cache(pool, settings=settings, health=health)
        await registry.reload(force=True)
        batcher = Batcher(settings, queue=collector.queue, registry=registry,
                          apply_items=until_database("items", ItemsWriter(pool), settings=settings, health=health),
                          metrics=metrics)
        return cls(collector=collector, batcher=batcher, store=Store(pool), metrics=metrics)

    # --- what the composition root drives -------------------------------------------
    @property
    def collector(self) -> Collector:
        return self._collector

    @property
    def idle(self) -> bool:
        """Nothing in hand: every message received is committed and acknowledged."""
        return self._collector.unacked == 0 and not self._held and self._next is None

    @property
    def connected(self) -> bool:
        """Connected to the broker, and subscribed: a message published now reaches us.
        Ready only then, or a gateway told "ready" could publish into a new session's
        gap between CONNACK and SUBACK, where the broker keeps nothing for us."""
        return self._collector.connected and self._collector.subscribed

    async def run_collector(self) -> None:
        """Stay connected to the broker until ``finished``; then disconnect, keeping the
        session (the broker keeps what was not acknowledged)."""
        await self._collector.run(self.finished)

    def stop(self) -> None:
        """Read no more from the broker; the next steps commit what is in hand."""
        self._collector.pause()
        self._stopping.set()

    def abandon(self) -> None:
        """Shutdown's grace is over (the database does not answer): the commit in flight
        is cancelled and what is in hand stays unacknowledged; the broker delivers it
        again to the next run.  Cancel the runner's task too."""
        if self._committing is not None:
            self._committing.cancel()
        self.finished.set()

    # --- the step ------------------------------------------------------------------
    async def step(self) -> bool:
        if self._held:
            # A commit failed (the database away): what it left goes first, in order,
            # and alone, before the batch gathered meanwhile.
            await self._commit_held()
            return True
        if self._next is None:
            self._next = await self._batcher.next_batch(self._stopping)
            if self._next is None:  # stopping, and nothing left in hand
                self.finished.set()
                return False
        self._held.append(_InHand(self._next))
        self._next = None
        committing = self._committing = asyncio.create_task(self._commit_held(), name="ingest-commit")
        try:
            self._next = await self._batcher.next_batch(self._stopping)
            await committing  # a failure leaves its batch first in _held, _next after it
        except asyncio.CancelledError:
            committing.cancel()  # shutdown gave up: nothing more is acknowledged
            raise
        except Exception:
            if not committing.done():  # gathering failed: the commit still ends with the step
                await asyncio.wait([committing])
            if not committing.cancelled():
                committing.exception()  # said by the step's own error
            raise
        finally:
            self._committing = None
        if self._next is None:  # stopping, and everything committed
            self.finished.set()
            return False
        return True

    async def commit(self, batch: ReadingBatch) -> None:
        """Commit ``batch`` now (after anything still held), acknowledging its messages;
        raises while the database is away, the batch kept to be tried first again."""
        self._held.append(_InHand(batch))
        await self._commit_held()

    # --- committing ------------------------------------------------------------------
    async def _commit_held(self) -> None:
        """Commit the held batches in order, each removed only once it is done with."""
        while self._held:
            item = self._held[0]
            if item.refused is not None:
                await self._quarantine(item)
                self._held.popleft()
                continue
            started = time.perf_counter()
            try:
                written = await self._store.write(item.batch)
            except Exception as exc:
                if is_retryable(exc):
                    self._metrics.commit_retried()
                    raise  # the runner pauses; the batch stays first in line
                self._held.popleft()
                if item.batch.messages > 1:
                    first, second = item.batch.halves()
                    self._held.extendleft([_InHand(second), _InHand(first)])
                else:
                    self._refused(item, exc)
                continue
            self._held.popleft()
            self._committed(item.batch, written, time.perf_counter() - started)

    def _refused(self, item: _InHand, exc: Exception) -> None:
        """The store refused one message's content: keep the message whole in quarantine
        instead (next in line)."""
        src = item.batch.sources[0] if item.batch.sources else None
        if src is None:  # a batch not from the batcher: nothing to quarantine it as
            self._metrics.message_failed("store", "(unknown)", exc, "left unacknowledged")
            self._collector.forget(item.batch.handles)
            return
        self._metrics.message_failed("store", src.topic, exc)
        self._held.appendleft(_InHand(item.batch, refused=exc))

    async def _quarantine(self, item: _InHand) -> None:
        """Store the quarantine row of a refused message.  Should even that row be
        refused, a minimal one (ASCII text, the raw bytes as bytea); should that be
        refused too, the message stays unacknowledged (its place in the window freed;
        the broker delivers it again on the next connection) and ingestion goes on:
        never a loop.  Raises while the database is away (the item keeps its place)."""
        batch, src, refused = item.batch, item.batch.sources[0], item.refused
        assert refused is not None
        detail = f"the store refused it: {error_detail(refused)}"
        while item.attempt < 2:
            if item.attempt == 0:
                q = Quarantined(src.received_at_us, src.topic, src.enterprise, "store_rejected", detail, src.payload)
            else:
                q = Quarantined(time.time_ns() // 1000, ascii(src.topic[:200]), None, "store_rejected", detail,
                                src.payload)
            row = ReadingBatch.empty([q], frames=src.frames)
            row.handles = list(batch.handles)
            started = time.perf_counter()
            try:
                written = await self._store.write(row)
            except Exception as again:
                if is_retryable(again):
                    self._metrics.commit_retried()
                    raise
                self._metrics.message_failed("store", src.topic, again, "quarantine row refused")
                item.attempt += 1
                continue
            self._committed(row, written, time.perf_counter() - started)
            return
        log.error("message on %s could not be stored nor quarantined; left unacknowledged", ascii(src.topic[:200]))
        self._collector.forget(batch.handles)

    def _committed(self, batch: ReadingBatch, written: int, seconds: float) -> None:
        self._collector.ack(batch.handles)
        now_us = time.time_ns() // 1000
        rows = batch.rows
        self._metrics.batch_committed(
            frames=batch.frames,
            accepted=len(rows),
            quarantine_reasons=[(q.reason, q.level) for q in batch.quarantine],
            seconds=seconds,
            reading_lag_s=(now_us - int(rows["ts"].max())) / 1e6 if len(rows) else None,
            receive_lag_s=(now_us - int(rows["received_at"].min())) / 1e6 if len(rows) else None,
        )
        log.debug("committed %d readings (%d new or changed), %d quarantined", len(rows), written,
                  len(batch.quarantine))
