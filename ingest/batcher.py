"""Gathers decoded messages into batches for the store: up to ``batch_rows`` readings
or ``batch_messages`` messages, ``batch_ms`` after the first message, or once no message
came for ``batch_idle_ms``, whichever comes first.  The last two matter for a backlog of
small frames: the broker sends only so many unacknowledged messages (1000 in the
shipped settings), and nothing is acknowledged before its batch is committed, so a
batch waiting out ``batch_ms`` for more would wait for messages that cannot come, and a
batch of the whole window would leave nothing to receive while it commits.

Every message ends as a batch part carrying its handle, whatever its content: an error
while decoding or validating it becomes a ``decode_failed`` quarantine row, items the
database refuses a ``bad_item`` row.  Only the database being away holds a message up
(the stage hands in database calls that retry until it answers); nothing a gateway
sends stops the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from config.settings import IngestSettings
from ingest.batch import Quarantined, ReadingBatch, Source, error_detail
from ingest.collector import Message
from ingest.frames import FrameLimits, decode_readings
from ingest.items import ItemsError, ItemSpec, parse_items_payload
from ingest.metrics import IngestMetrics
from ingest.topics import Topic, TopicError, parse_topic

__all__ = ["Batcher", "RegistryCache"]

log = logging.getLogger("nhjc.batcher")


class RegistryCache:
    """enterprise -> registered item codes, reloaded from the database on demand (at
    most every ``min_reload_s``) so items loaded by another instance or by ``nhjc items
    load`` are seen before a reading is called unknown."""

    def __init__(self, load: Callable[[], Awaitable[dict[str, frozenset[str]]]], min_reload_s: float = 2.0) -> None:
        self._load = load
        self._min_reload_s = min_reload_s
        self._codes: dict[str, frozenset[str]] = {}
        self._loaded_at = float("-inf")

    def codes(self, enterprise: str) -> frozenset[str]:
        return self._codes.get(enterprise, frozenset())

    async def reload(self, force: bool = False) -> bool:
        if not force and time.monotonic() - self._loaded_at < self._min_reload_s:
            return False
        self._codes = await self._load()
        self._loaded_at = time.monotonic()
        return True

    def add(self, items: list[ItemSpec]) -> None:
        for item in items:
            self._codes[item.enterprise] = self._codes.get(item.enterprise, frozenset()) | {item.code}


class Batcher:
    """Takes messages from ``queue`` (the collector's) and makes batches of them, as
    ``settings`` say: their size, and the frame limits decoding applies."""

    def __init__(
        self,
        settings: IngestSettings,
        *,
        queue: asyncio.Queue[Message],
        registry: RegistryCache,
        apply_items: Callable[[list[ItemSpec], str], Awaitable[object]],
        metrics: IngestMetrics,
    ) -> None:
        self._queue = queue
        self._registry = registry
        self._apply_items = apply_items  # all of one message's items in one transaction
        self._metrics = metrics
        self._limits = FrameLimits.of(settings)
        self._batch_rows = settings.batch_rows
        self._batch_s = settings.batch_ms / 1000
        self._idle_s = settings.batch_idle_ms / 1000
        self._batch_messages = settings.batch_messages

    async def next_batch(self, stop: asyncio.Event) -> ReadingBatch | None:
        """The next batch; None once ``stop`` is set and nothing is waiting."""
        parts: list[ReadingBatch] = []
        rows = 0
        deadline: float | None = None
        loop = asyncio.get_running_loop()
        while rows < self._batch_rows and len(parts) < self._batch_messages:
            if self._queue.empty():
                if stop.is_set():
                    break
                timeout = None if deadline is None else min(self._idle_s, deadline - loop.time())
                if timeout is not None and timeout <= 0.0:
                    break
                msg = await self._get(stop, timeout)
                if msg is None:
                    if deadline is not None:  # idle, or batch_ms is over: commit what is in hand
                        break
                    continue
            else:
                msg = self._queue.get_nowait()
            if deadline is None:
                deadline = loop.time() + self._batch_s
            part = await self.decode(msg)
            parts.append(part)
            rows += len(part.rows)
        return ReadingBatch.concat(parts) if parts else None

    async def _get(self, stop: asyncio.Event, timeout: float | None) -> Message | None:
        getter = asyncio.ensure_future(self._queue.get())
        stopper = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({getter, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if getter not in done:
            # The getter may have taken a message just as we gave up: never drop it.
            getter.cancel()
            await asyncio.wait({getter})
        return None if getter.cancelled() else getter.result()

    async def decode(self, msg: Message) -> ReadingBatch:
        """One message into a batch part (rows and/or quarantine), carrying its handle."""
        try:
            part = await self._decode(msg)
        except Exception as exc:  # a fault of this message's content (or of our decoder)
            part = self._failed(msg, exc)
        part.handles.append(msg.handle)
        part.sources.append(Source(msg.topic, _enterprise_of(msg.topic), msg.received_at_us, msg.payload,
                                   len(part.rows), len(part.quarantine), part.frames))
        return part

    def _failed(self, msg: Message, exc: Exception) -> ReadingBatch:
        self._metrics.message_failed("decode", msg.topic, exc)
        q = Quarantined(msg.received_at_us, msg.topic, _enterprise_of(msg.topic), "decode_failed",
                        error_detail(exc), msg.payload)
        return ReadingBatch.empty([q], frames=1)

    async def _decode(self, msg: Message) -> ReadingBatch:
        try:
            topic = parse_topic(msg.topic)
        except TopicError as exc:
            q = Quarantined(msg.received_at_us, msg.topic, exc.enterprise, exc.reason, str(exc), msg.payload)
            return ReadingBatch.empty([q], frames=1)
        if topic.kind == "items":
            return await self._items(msg, topic.enterprise)
        if topic.kind != "readings":
            return ReadingBatch.empty()
        part = self._readings(msg, topic)
        if any(q.reason == "unknown_item" for q in part.quarantine) and await self._reload():
            part = self._readings(msg, topic)  # the registry may have grown elsewhere
        return part

    async def _reload(self) -> bool:
        try:
            return await self._registry.reload()
        except Exception as exc:  # not the message's fault: judge it by the registry in hand
            log.error("registry reload failed (%s); using the registry in memory", type(exc).__name__)
            return False

    def _readings(self, msg: Message, topic: Topic) -> ReadingBatch:
        return decode_readings(
            msg.topic, topic, msg.payload, msg.received_at_us,
            known_codes=self._registry.codes(topic.enterprise), limits=self._limits,
        )

    async def _items(self, msg: Message, enterprise: str) -> ReadingBatch:
        part = ReadingBatch.empty()
        if not msg.payload:  # a retained items message being cleared: nothing to apply
            return part
        try:
            items, bad = parse_items_payload(msg.payload, enterprise)
        except ItemsError as exc:
            part.quarantine.append(
                Quarantined(msg.received_at_us, msg.topic, enterprise, exc.reason, str(exc), msg.payload)
            )
            return part
        if items:
            # Applied at once, before the readings that follow it in the stream are judged;
            # all of the message's items or none of them.
            source = f"mqtt:{msg.topic}"
            try:
                await self._apply_items(items, source)
            except Exception as exc:  # the database refuses this content (e.g. a NUL in a name)
                self._metrics.message_failed("items", msg.topic, exc)
                part.quarantine.append(Quarantined(
                    msg.received_at_us, msg.topic, enterprise, "bad_item",
                    f"{len(items)} item(s) not applied, refused by the database: {error_detail(exc)}",
                    msg.payload, "item"))
            else:
                self._registry.add(items)
        for i, why, raw in bad:
            part.quarantine.append(
                Quarantined(msg.received_at_us, msg.topic, enterprise, "bad_item", f"items[{i}]: {why}", raw, "item")
            )
        return part


def _enterprise_of(topic: str) -> str | None:
    """The enterprise a topic names, when it is a valid one (a guard's best effort)."""
    try:
        return parse_topic(topic).enterprise
    except Exception:
        return None
