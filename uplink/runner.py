"""The uplink runner: one task per target, each owning its outbox, schedule, retries and
metrics; adapters (:mod:`uplink.adapters`) only speak their protocol.

A target's loop, every ``interval_s`` while idle (immediately again while busy):

1. **plan**: periods that closed since the last look go into the outbox with their
   due time (:mod:`uplink.schedule`); rows whose consumption revision moved after they
   were enqueued (late data) become pending again;
2. **send**: due rows are read with their current value, grouped by enterprise,
   registered and configured once per enterprise and process, and written in chunks,
   a few requests at a time.  A rejected chunk of several records is split in halves
   until the records the platform refuses are alone, so one bad record never holds
   back its neighbours;
3. **record**: acks, retries (jittered exponential backoff per record) and rejections
   go back to the outbox in one transaction.

A time-out, a refused connection, a 5xx, 408 or 429 (or refused credentials) pauses
the whole target (the requests not yet started in that round are left untouched) with
the same backoff, so an outage costs one failed request per pause, not one per record.  Targets share
nothing but the database pool, so one platform's outage never delays another.

Time comes from an injected ``clock`` (aware datetimes): schedules, due times and
backoffs all follow it, so tests move time instead of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import random
import time as _time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
from prometheus_client import CollectorRegistry

from config.settings import TargetSettings, secret_value
from runtime.backoff import backoff_delay
from runtime.dberrors import DatabaseHealth, is_retryable
from uplink.adapters import FLAVOURS, Adapter, Registration, make_adapter
from uplink.errors import RejectedError, RetryableError
from uplink.http import client_ssl_context
from uplink.metrics import UplinkMetrics
from uplink.outbox import DueRow, ItemRow, Outbox, Outcomes
from uplink.records import TOTAL_CODE, ItemConfig, Record, energy_of, scope_of
from uplink.schedule import (
    STAT_TYPES,
    enqueue_limit,
    initial_through,
    next_start,
    period_start,
)

__all__ = ["Clock", "TargetRunner", "Uplink", "utc_now"]

log = logging.getLogger("nhjc.uplink")

Clock = Callable[[], datetime]
_BACKLOG_EVERY_S = 5.0
_PRUNE_EVERY_S = 3600.0
_TOTAL_NAME = "综合能耗"
# The most a single enqueue statement covers, per statType (months and years are few).
_MAX_SPAN = {0: timedelta(hours=6), 1: timedelta(days=31)}


def utc_now() -> datetime:
    return datetime.now(UTC)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))


def _parse_time(text: str) -> time:
    h, m, s = (int(x) for x in text.split(":"))
    return time(h, m, s)


class TargetRunner:
    """Delivery to one target.  ``loops`` counts finished loop iterations (tests use it
    to know the runner has looked at the world since they changed it)."""

    def __init__(self, name: str, settings: TargetSettings, *, pool: asyncpg.Pool, tz: ZoneInfo,
                 metrics: UplinkMetrics, clock: Clock, interval_s: float, settle_s: float,
                 rng: random.Random, health: DatabaseHealth | None = None) -> None:
        self.name = name
        self._health = health if health is not None else DatabaseHealth()
        self.settings = settings
        self.loops = 0
        self._tz = tz
        self._metrics = metrics
        self._clock = clock
        self._interval_s = interval_s
        self._settle_s = settle_s
        self._rng = rng
        self._delay = timedelta(seconds=settings.realtime_delay_s)
        self.outbox = Outbox(pool, name, timezone=tz.key, realtime_delay=self._delay,
                             upload_time=_parse_time(settings.upload_time))
        # Configuration faults (a missing certificate file, an unknown flavour) surface
        # here, at construction, not later inside one target's task.
        if settings.flavour not in FLAVOURS:
            raise ValueError(f"uplink target {name}: unknown flavour {settings.flavour!r}")
        self._ssl = (client_ssl_context(settings.ca_file, settings.cert_file, settings.key_file)
                     if settings.url.startswith("https:") else None)
        self._adapter: Adapter | None = None
        self._windows: dict[int, tuple[datetime, datetime]] = {}
        self._seen = 0     # revisions up to here were fed once
        self._cursor = 0   # ... and up to here fed again after settling (persisted)
        self._marks: deque[tuple[float, int, datetime]] = deque()  # (monotonic, last revision, db clock)
        self._registrations: dict[str, Registration] = {}
        self._configured: dict[str, tuple[str, frozenset[str]]] = {}  # hash, data codes
        self._failures = 0
        self._paused_until: datetime | None = None
        self._trouble: RetryableError | None = None  # a failure pausing the target, this round
        self._next_backlog = 0.0
        self._next_prune = 0.0
        self._started = False

    # -- lifecycle -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else True, limit=s.concurrency)
        timeout = aiohttp.ClientTimeout(total=s.timeout_s)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                         headers={"User-Agent": "nhjc-uplink/1"}) as session:
            self._adapter = make_adapter(s.flavour, session, s.url, tz=self._tz,
                                         password=secret_value(s.password),
                                         sm4_key=secret_value(s.sm4_key))
            log.info("uplink %s: delivering to %s (%s)", self.name, s.url, s.flavour)
            while not stop.is_set():
                busy = False
                try:
                    if not self._started:
                        await self._start()
                    await self._plan()
                    busy = await self._send_round(stop)
                    await self._housekeeping()
                except Exception as exc:
                    # The database away (also inside a round's task group): one line per
                    # outage from health; the outbox keeps every row for the next loop.
                    if is_retryable(exc):
                        self._health.failed(f"uplink {self.name}", exc)
                    else:  # a bug must not silence the target for good
                        log.exception("uplink %s: unexpected error, trying again", self.name)
                else:
                    self._health.succeeded(f"uplink {self.name}")
                self.loops += 1
                if not busy:
                    await _sleep_or_stop(stop, self._interval_s)
        log.info("uplink %s: stopped", self.name)

    async def _start(self) -> None:
        now = self._clock()
        backfill = timedelta(days=self.settings.backfill_days)
        initial = {s: initial_through(s, now, self._tz, backfill=backfill, realtime_delay=self._delay)
                   for s in STAT_TYPES}
        self._windows = await self.outbox.load_windows(initial)
        self._cursor = await self.outbox.load_cursor(await self.outbox.last_revision())
        self._seen = self._cursor
        self._started = True

    # -- plan ----------------------------------------------------------------------------

    async def _plan(self) -> None:
        now = self._clock()
        for s in STAT_TYPES:
            limit = enqueue_limit(s, now, self._tz, self._delay)
            while limit > (through := self._windows[s][1]):
                # After a long stop, catch up in slices: each statement stays small.
                end = limit
                if s in _MAX_SPAN:
                    end = min(limit, max(period_start(s, through + _MAX_SPAN[s], self._tz),
                                         next_start(s, through, self._tz)))
                n = await self.outbox.enqueue(s, through, end, now)
                self._windows[s] = (self._windows[s][0], end)
                self._metrics.queued(self.name, "schedule", n)
        # Late data: the fast path looks at revisions handed out since the last look...
        last, read_at = await self.outbox.revision_mark()
        if last > self._seen:
            n = await self.outbox.feed(self._seen, last, self._windows, now)
            self._seen = last
            self._metrics.queued(self.name, "revision", n)
        # ... and once a revision has settled (its transaction surely finished), its
        # range is looked at once more: a transaction that took revision 100 may commit
        # after one that took 101 was seen.  Settled means settle_s old and no
        # transaction open that began before it was seen: a database stall longer than
        # settle_s holds a transaction open that long, and its revisions must not be
        # passed over.
        mono = _time.monotonic()
        if not self._marks or self._marks[-1][1] < last:
            self._marks.append((mono, last, read_at))
        settled = None
        if self._marks and self._marks[0][0] <= mono - self._settle_s:
            oldest = await self.outbox.oldest_open_transaction()
            while (self._marks and self._marks[0][0] <= mono - self._settle_s
                   and (oldest is None or oldest > self._marks[0][2])):
                settled = self._marks.popleft()[1]
        if settled is not None and settled > self._cursor:
            n = await self.outbox.feed(self._cursor, settled, self._windows, now)
            self._metrics.queued(self.name, "revision", n)
            self._cursor = settled
            await self.outbox.save_cursor(settled)

    # -- send ----------------------------------------------------------------------------

    async def _send_round(self, stop: asyncio.Event) -> bool:
        """One round of sending; True when there may be more due right now."""
        now = self._clock()
        if self._paused_until is not None and now < self._paused_until:
            return False
        s = self.settings
        limit = s.batch_size * s.concurrency
        rows = await self.outbox.fetch_due(now, limit)
        if not rows:
            return False
        out = Outcomes()
        await self.outbox.forget([r.key for r in rows if r.value is None])
        by_enterprise: dict[str, list[Record]] = {}
        for row in rows:
            if row.value is None:
                continue
            record = self._record(row)
            if not math.isfinite(record.value):
                out.rejected.append((record, 0, "value is not a finite number (not sent)"))
                continue
            by_enterprise.setdefault(row.enterprise, []).append(record)
        items = await self.outbox.items(list(by_enterprise))
        self._trouble = None
        sem = asyncio.Semaphore(s.concurrency)
        async with asyncio.TaskGroup() as tg:
            for enterprise, records in by_enterprise.items():
                tg.create_task(self._deliver_enterprise(enterprise, records, items[enterprise], out, sem, stop))
        await self.outbox.record(out, self._clock())
        if self._trouble is not None:
            self._failures += 1
            pause = backoff_delay(self._failures, s.backoff_min_s, s.backoff_max_s, self._rng)
            pause = max(pause, self._trouble.retry_after_s or 0.0)
            self._paused_until = self._clock() + timedelta(seconds=pause)
            log.warning("uplink %s: %s; pausing %.1fs (failure %d in a row)",
                        self.name, self._trouble, pause, self._failures)
            return False
        if self._failures:
            log.info("uplink %s: target answers again after %d failed rounds", self.name, self._failures)
        self._failures, self._paused_until = 0, None
        return len(rows) == limit and not stop.is_set()

    def _record(self, row: DueRow) -> Record:
        assert row.value is not None and row.revision is not None
        total = row.code == TOTAL_CODE
        return Record(
            enterprise=row.enterprise, code=row.code,
            data_code=self.settings.total_code if total else row.code,
            stat_type=row.stat_type, period_start=row.period_start, value=float(row.value),
            valid=bool(row.valid), scope=1 if total else (row.scope or scope_of(row.code)),
            input_type=row.input_type or 4, revision=row.revision, attempts=row.attempts)

    def _halted(self, stop: asyncio.Event) -> bool:
        """No new request: stopping, or the target failed in a way that pauses it."""
        return stop.is_set() or self._trouble is not None

    async def _deliver_enterprise(self, enterprise: str, records: list[Record], items: list[ItemRow],
                                  out: Outcomes, sem: asyncio.Semaphore, stop: asyncio.Event) -> None:
        if self._halted(stop):
            return
        stage = "register"
        try:
            registration = await self._registration(enterprise, sem)
            stage = "config"
            await self._configure(enterprise, registration, records, items, sem)
        except RetryableError as exc:
            await self._device_error(enterprise, f"{stage}: {exc}")
            self._retry(records, exc, out, sent=False)
            return
        except RejectedError as exc:
            # A refused registration or configuration is not the records' fault: they wait.
            await self._device_error(enterprise, f"{stage}: {exc}")
            self._retry(records, RetryableError(stage, str(exc)), out, sent=False)
            return
        n = self._adapter.records_per_call if self._adapter and self._adapter.records_per_call else \
            self.settings.batch_size
        async with asyncio.TaskGroup() as tg:
            for i in range(0, len(records), n):
                tg.create_task(self._deliver_chunk(enterprise, registration, records[i:i + n], out, sem, stop))

    async def _deliver_chunk(self, enterprise: str, registration: Registration, chunk: Sequence[Record],
                             out: Outcomes, sem: asyncio.Semaphore, stop: asyncio.Event) -> None:
        assert self._adapter is not None
        async with sem:
            if self._halted(stop):
                return  # abandoned before it started: the rows stay due, untouched
            uploaded_at = self._clock()
            t0 = _time.monotonic()
            try:
                await self._adapter.write(enterprise, registration, chunk, uploaded_at)
            except RetryableError as exc:
                self._observe("data", exc, t0, len(chunk))
                self._retry(chunk, exc, out, sent=True)
                if exc.reason in ("response_code", "bad_reply"):
                    # Perhaps the platform forgot our device: register and configure anew.
                    self._registrations.pop(enterprise, None)
                    self._configured.pop(enterprise, None)
                return
            except RejectedError as exc:
                self._observe("data", exc, t0, len(chunk))
                rejection = exc
            else:
                self._observe("data", None, t0, len(chunk))
                out.acked.extend((r, uploaded_at) for r in chunk)
                self._metrics.acked(self.name, len(chunk))
                return
        if len(chunk) > 1:  # find the records the platform refuses
            mid = len(chunk) // 2
            await self._deliver_chunk(enterprise, registration, chunk[:mid], out, sem, stop)
            await self._deliver_chunk(enterprise, registration, chunk[mid:], out, sem, stop)
            return
        record = chunk[0]
        out.rejected.append((record, rejection.status, rejection.message))
        self._metrics.rejected(self.name, 1)
        log.warning("uplink %s: rejected %s %s statType %d %s: HTTP %d %s", self.name, enterprise,
                    record.data_code, record.stat_type, record.period_start.astimezone(self._tz),
                    rejection.status, rejection.message)

    def _observe(self, call: str, exc: Exception | None, t0: float, n_records: int) -> None:
        if isinstance(exc, RetryableError):
            outcome = "down" if exc.transport else "retry"
        else:
            outcome = "rejected" if exc is not None else "ok"
        self._metrics.request(self.name, call, outcome, _time.monotonic() - t0)
        if call == "data":
            self._metrics.sent(self.name, n_records)

    def _retry(self, records: Sequence[Record], exc: RetryableError, out: Outcomes, *, sent: bool) -> None:
        now = self._clock()
        s = self.settings
        for r in records:
            delay = backoff_delay(r.attempts + 1, s.backoff_min_s, s.backoff_max_s, self._rng)
            delay = max(delay, exc.retry_after_s or 0.0)
            out.retried.append((r, now + timedelta(seconds=delay), str(exc)[:500], sent))
        self._metrics.retried(self.name, exc.reason, len(records))
        if exc.pauses_target and self._trouble is None:
            self._trouble = exc

    # -- registration and item configuration ---------------------------------------------

    async def _registration(self, enterprise: str, sem: asyncio.Semaphore) -> Registration:
        assert self._adapter is not None
        registration = self._registrations.get(enterprise)
        if registration is not None:
            return registration
        region = self.settings.region or enterprise[2:8]
        async with sem:
            t0 = _time.monotonic()
            try:
                registration = await self._adapter.register(enterprise, region)
            except (RetryableError, RejectedError) as exc:
                self._observe("register", exc, t0, 0)
                raise
            self._observe("register", None, t0, 0)
        self._registrations[enterprise] = registration
        await self.outbox.save_registration(enterprise, registration, self._clock())
        return registration

    async def _configure(self, enterprise: str, registration: Registration, records: Sequence[Record],
                         items: Sequence[ItemRow], sem: asyncio.Semaphore) -> None:
        assert self._adapter is not None
        cached = self._configured.get(enterprise)
        wanted = {r.data_code for r in records} | (set(cached[1]) if cached else set())
        configs = self._item_configs(items, wanted)
        digest = hashlib.sha256(json.dumps([c.to_wire() for c in configs], sort_keys=True,
                                           ensure_ascii=False).encode()).hexdigest()
        if cached is not None and cached[0] == digest:
            return
        async with sem:
            t0 = _time.monotonic()
            try:
                await self._adapter.configure(enterprise, registration, configs)
            except (RetryableError, RejectedError) as exc:
                self._observe("config", exc, t0, 0)
                raise
            self._observe("config", None, t0, 0)
        self._configured[enterprise] = (digest, frozenset(c.data_code for c in configs))
        await self.outbox.save_config(enterprise, digest, len(configs), self._clock())

    def _item_configs(self, items: Sequence[ItemRow], wanted: set[str]) -> list[ItemConfig]:
        """The enterprise's items, its total, and any code being sent that the items
        registry does not know (the platform wants every data code configured)."""
        total = self.settings.total_code
        configs = {total: ItemConfig(total, _TOTAL_NAME, "0000", 1, 4, "cumulative")}
        for it in items:
            code = total if it.code == TOTAL_CODE else it.code
            if code != total:
                configs[code] = ItemConfig(code, it.name or code, it.energy, it.scope, it.input_type,
                                           it.kind, it.min, it.max)
        for code in sorted(wanted - configs.keys()):
            configs[code] = ItemConfig(code, code, energy_of(code), scope_of(code), 4)
        return [configs[c] for c in sorted(configs)]

    async def _device_error(self, enterprise: str, error: str) -> None:
        log.warning("uplink %s: %s: %s", self.name, enterprise, error)
        await self.outbox.save_device_error(enterprise, error[:500], self._clock())

    # -- housekeeping --------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        mono = _time.monotonic()
        if mono >= self._next_backlog:
            self._next_backlog = mono + _BACKLOG_EVERY_S
            await self.refresh_backlog()
        if mono >= self._next_prune:
            self._next_prune = mono + _PRUNE_EVERY_S
            await self.outbox.prune(self._clock() - timedelta(days=self.settings.keep_days))

    async def refresh_backlog(self) -> int:
        """Count what is due and unacknowledged; update the gauges; return the count."""
        now = self._clock()
        b = await self.outbox.backlog(now)
        oldest = max(0.0, (now - b.oldest).total_seconds()) if b.oldest else 0.0
        self._metrics.backlog(self.name, due=b.due, waiting=b.waiting, oldest_s=oldest, rejected=b.rejected)
        return b.due


class Uplink:
    """Forwards ``consumption`` periods to every enabled target, each in its own task."""

    def __init__(self, pool: asyncpg.Pool, targets: dict[str, TargetSettings], *, timezone: str,
                 registry: CollectorRegistry | None = None, clock: Clock = utc_now,
                 interval_s: float = 1.0, settle_s: float = 60.0,
                 rng: random.Random | None = None, health: DatabaseHealth | None = None) -> None:
        tz = ZoneInfo(timezone)
        self.metrics = UplinkMetrics(registry if registry is not None else CollectorRegistry())
        rng = rng or random.Random()
        self.runners: dict[str, TargetRunner] = {
            name: TargetRunner(name, t, pool=pool, tz=tz, metrics=self.metrics, clock=clock,
                               interval_s=interval_s, settle_s=settle_s, rng=rng, health=health)
            for name, t in targets.items() if t.enabled
        }

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set; then each target finishes its in-flight requests
        (bounded by its timeout), records what it learned, and returns."""
        async with asyncio.TaskGroup() as tg:
            for name, runner in self.runners.items():
                tg.create_task(runner.run(stop), name=f"uplink-{name}")

    async def backlog(self) -> dict[str, int]:
        """Records due and not yet acknowledged, per target (also refreshes the gauges)."""
        return {name: await r.refresh_backlog() for name, r in self.runners.items()}
