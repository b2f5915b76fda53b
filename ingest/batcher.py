"""Gathers decoded messages into batches for the store: up to ``batch_rows`` readings
or ``batch_messages`` messages, ``batch_ms`` after the first message, or once no message
came for ``batch_idle_ms``, whichever comes first.  The last two matter for a backlog of
small frames: the broker sends only so many unacknowledged messages (``mqtt.receive_maximum``),
and nothing is acknowledged before its batch is committed, so a batch waiting out
``batch_ms`` for more would wait for messages that cannot come, and a batch of the whole
window would leave nothing to receive while it commits.

A batch's accepted readings are gathered as column lists (``frames.Columns``) and made
into one array when it closes: a frame of one reading costs no numpy call of its own.

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
from dataclasses import dataclass, field
from typing import Any

from config.settings import IngestSettings
from ingest.batch import Quarantined, ReadingBatch, Source, error_detail
from ingest.collector import Message
from ingest.frames import Columns, FrameLimits, decode_readings_into
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
        self._topics: dict[str, Topic | TopicError] = {}

    async def next_batch(self, stop: asyncio.Event) -> ReadingBatch | None:
        """The next batch; None once ``stop`` is set and nothing is waiting."""
        g = _Gather()
        deadline: float | None = None
        loop = asyncio.get_running_loop()
        while len(g.cols) < self._batch_rows and len(g.handles) < self._batch_messages:
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
            await self._add(msg, g)
        return g.batch() if g.handles else None

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
        g = _Gather()
        await self._add(msg, g)
        return g.batch()

    async def _add(self, msg: Message, g: _Gather) -> None:
        """One message into the batch being gathered: its rows and quarantine rows, its
        handle and its ``Source``, whatever its content."""
        rows, quarantined = len(g.cols), len(g.quarantine)
        try:
            frames = await self._decode(msg, g)
        except Exception as exc:  # a fault of this message's content (or of our decoder)
            g.cols.truncate(rows)  # nothing of it but the one quarantine row
            del g.quarantine[quarantined:]
            g.quarantine.append(self._failed(msg, exc))
            frames = 1
        g.frames += frames
        g.handles.append(msg.handle)
        g.sources.append(Source(msg.topic, self._enterprise_of(msg.topic), msg.received_at_us, msg.payload,
                                len(g.cols) - rows, len(g.quarantine) - quarantined, frames))

    def _failed(self, msg: Message, exc: Exception) -> Quarantined:
        self._metrics.message_failed("decode", msg.topic, exc)
        return Quarantined(msg.received_at_us, msg.topic, self._enterprise_of(msg.topic), "decode_failed",
                           error_detail(exc), msg.payload)

    def _topic(self, name: str) -> Topic | TopicError:
        """The topic parsed, or why it is none of ours; remembered, since a backlog
        repeats a few thousand topics (every gateway's) over and over."""
        known = self._topics.get(name)
        if known is None:
            try:
                known = parse_topic(name)
            except TopicError as exc:
                known = exc
            if len(self._topics) >= _TOPICS_KEPT:
                self._topics.clear()
            self._topics[name] = known
        return known

    def _enterprise_of(self, name: str) -> str | None:
        """The enterprise a topic names, when it is a valid one (a guard's best effort)."""
        try:
            topic = self._topic(name)
        except Exception:
            return None
        return None if isinstance(topic, TopicError) else topic.enterprise

    async def _decode(self, msg: Message, g: _Gather) -> int:
        """Decodes into ``g``; returns the message's frames count (1 for a readings frame)."""
        topic = self._topic(msg.topic)
        if isinstance(topic, TopicError):
            g.quarantine.append(
                Quarantined(msg.received_at_us, msg.topic, topic.enterprise, topic.reason, str(topic), msg.payload))
            return 1
        if topic.kind == "items":
            g.quarantine.extend(await self._items(msg, topic.enterprise))
            return 0
        if topic.kind != "readings":
            return 0
        rows = len(g.cols)
        quarantine = self._readings(msg, topic, g.cols)
        if any(q.reason == "unknown_item" for q in quarantine) and await self._reload():
            g.cols.truncate(rows)  # the registry may have grown elsewhere: judged again
            quarantine = self._readings(msg, topic, g.cols)
        g.quarantine.extend(quarantine)
        return 1

    async def _reload(self) -> bool:
        try:
            return await self._registry.reload()
        except Exception as exc:  # not the message's fault: judge it by the registry in hand
            log.error("registry reload failed (%s); using the registry in memory", type(exc).__name__)
            return False

    def _readings(self, msg: Message, topic: Topic, cols: Columns) -> list[Quarantined]:
        return decode_readings_into(
            cols, msg.topic, topic, msg.payload, msg.received_at_us,
            known_codes=self._registry.codes(topic.enterprise), limits=self._limits,
        )

    async def _items(self, msg: Message, enterprise: str) -> list[Quarantined]:
        quarantine: list[Quarantined] = []
        if not msg.payload:  # a retained items message being cleared: nothing to apply
            return quarantine
        try:
            items, bad = parse_items_payload(msg.payload, enterprise)
        except ItemsError as exc:
            quarantine.append(
                Quarantined(msg.received_at_us, msg.topic, enterprise, exc.reason, str(exc), msg.payload)
            )
            return quarantine
        if items:
            # Applied at once, before the readings that follow it in the stream are judged;
            # all of the message's items or none of them.
            source = f"mqtt:{msg.topic}"
            try:
                await self._apply_items(items, source)
            except Exception as exc:  # the database refuses this content (e.g. a NUL in a name)
                self._metrics.message_failed("items", msg.topic, exc)
                quarantine.append(Quarantined(
                    msg.received_at_us, msg.topic, enterprise, "bad_item",
                    f"{len(items)} item(s) not applied, refused by the database: {error_detail(exc)}",
                    msg.payload, "item"))
            else:
                self._registry.add(items)
        for i, why, raw in bad:
            quarantine.append(
                Quarantined(msg.received_at_us, msg.topic, enterprise, "bad_item", f"items[{i}]: {why}", raw, "item")
            )
        return quarantine


_TOPICS_KEPT = 100_000  # parsed topics remembered (then forgotten all at once: a bound on memory)


@dataclass(slots=True)
class _Gather:
    """The batch being gathered, message by message."""

    cols: Columns = field(default_factory=Columns)
    quarantine: list[Quarantined] = field(default_factory=list)
    handles: list[Any] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    frames: int = 0

    def batch(self) -> ReadingBatch:
        return ReadingBatch(self.cols.array(), self.quarantine, self.handles, self.frames, self.sources)

