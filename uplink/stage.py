"""The uplink as stages: one :class:`TargetStage` per enabled target, each run by its own
:class:`~runtime.runner.StageRunner`; :class:`Uplink` builds and runs them.

A target's step:

1. **plan** (:mod:`uplink.planner`): periods that closed go into the outbox with their
   due time; rows whose consumption changed after they were enqueued become pending
   again;
2. **send** (:mod:`uplink.delivery`): one round of due records through the target's
   adapter, unless the platform's failures paused the target; what was learned goes
   back to the outbox;
   the same round carries the measuring instruments whose records changed (planned
   just before from the instrument tables, :mod:`uplink.meter_outbox`);
3. **housekeeping**: the backlog gauges every few seconds, old acknowledged rows
   pruned every hour.

The runner owns the rest: the idle sleep (``uplink.interval_ms``), and the pause after a
database error or a bug (``uplink.pause_min_s``/``pause_max_s``) with its log lines and
counts.  The platform's own failures are not errors of the step: they pause the target
through the target's backoff (``backoff_min_s``/``backoff_max_s``), following the
injected clock.  Targets share nothing but the database pool, so one platform's outage
never delays another.

An adapter can be handed in per target (``adapters={name: adapter}``), the way httpx
takes a ``MockTransport``: then no HTTP session is opened for that target, and tests
drive retries, pauses, splitting and registration with an adapter in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time as _time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import time, timedelta
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
from prometheus_client import CollectorRegistry

from config.settings import TargetSettings, UplinkSettings, secret_value
from runtime.dberrors import DatabaseHealth
from runtime.runner import RunnerEvents, Stage, StageRunner
from uplink.adapters import FLAVOURS, Adapter, make_adapter
from uplink.adapters.meters import FLAVOUR_METER_KINDS, MeterKind, MeterSender
from uplink.delivery import Delivery
from uplink.enterprises import EnterpriseDirectory
from uplink.http import client_ssl_context
from uplink.meter_outbox import MeterOutbox
from uplink.metrics import UplinkMetrics
from uplink.outbox import Outbox
from uplink.planner import Planner
from uplink.schedule import Clock, utc_now

__all__ = ["TargetStage", "Uplink"]

_BACKLOG_EVERY_S = 5.0
_PRUNE_EVERY_S = 3600.0


def _parse_time(text: str) -> time:
    h, m, s = (int(x) for x in text.split(":"))
    return time(h, m, s)


class TargetStage:
    """Delivery to one target, as a stage: ``name`` and :meth:`step`.  It steps only
    inside :meth:`open`, which gives it its adapter (an HTTP session, unless an adapter
    was handed in) and the event that says the service is stopping."""

    def __init__(self, target: str, settings: TargetSettings, *, settle_s: float, pool: asyncpg.Pool,
                 zone: ZoneInfo, metrics: UplinkMetrics, clock: Clock, rng: random.Random,
                 adapter: Adapter | None = None) -> None:
        self.target = target
        self.name = f"uplink {target}"
        self.settings = settings
        self._zone = zone
        self._metrics = metrics
        self._clock = clock
        self._rng = rng
        self._given = adapter
        delay = timedelta(seconds=settings.realtime_delay_s)
        self.outbox = Outbox(pool, target, zone=zone, realtime_delay=delay,
                             upload_time=_parse_time(settings.upload_time),
                             resend_quiet=timedelta(seconds=settings.resend_quiet_s),
                             resend_max_wait=timedelta(seconds=settings.resend_max_wait_s))
        kinds: frozenset[MeterKind] = frozenset()
        if settings.meters:
            kinds = (adapter.meter_kinds if isinstance(adapter, MeterSender) else frozenset()) if adapter is not None \
                else FLAVOUR_METER_KINDS.get(settings.flavour, frozenset())
        self.meter_outbox = MeterOutbox(pool, target, kinds=kinds, zone=zone.key)
        self._planner = Planner(self.outbox, zone=zone, realtime_delay=delay,
                                backfill=timedelta(days=settings.backfill_days), settle_s=settle_s,
                                metrics=metrics, clock=clock)
        # Configuration faults (a missing certificate file, an unknown flavour) surface
        # here, at construction, not later inside one target's task.
        if adapter is None and settings.flavour not in FLAVOURS:
            raise ValueError(f"uplink target {target}: unknown flavour {settings.flavour!r}")
        self._ssl = (client_ssl_context(settings.ca_file, settings.cert_file, settings.key_file,
                                        pkcs12_file=settings.pkcs12_file,
                                        pkcs12_password=secret_value(settings.pkcs12_password),
                                        min_version=settings.tls_min_version, ciphers=settings.tls_ciphers)
                     if adapter is None and settings.url.startswith("https:") else None)
        self._directory = EnterpriseDirectory(pool, target, settings, metrics=metrics)
        self.delivery: Delivery | None = None
        self._stop = asyncio.Event()
        self._next_backlog = 0.0
        self._next_prune = 0.0

    @contextlib.asynccontextmanager
    async def open(self, stop: asyncio.Event) -> AsyncIterator[None]:
        """Ready to step until ``stop`` is set: a round then starts no new request,
        lets the ones in flight finish (at most the target's ``timeout_s``) and records
        their outcome."""
        self._stop = stop
        s = self.settings
        async with contextlib.AsyncExitStack() as stack:
            adapter = self._given
            if adapter is None:
                connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else True,
                                                 limit=s.concurrency)
                session = await stack.enter_async_context(aiohttp.ClientSession(
                    connector=connector, timeout=aiohttp.ClientTimeout(total=s.timeout_s),
                    headers={"User-Agent": "nhjc-uplink/1"}))
                adapter = make_adapter(s, session, tz=self._zone)
            self.delivery = Delivery(s, adapter=adapter, outbox=self.outbox, directory=self._directory,
                                     zone=self._zone, metrics=self._metrics, clock=self._clock, rng=self._rng,
                                     meter_outbox=self.meter_outbox)
            self._metrics.started(self.target, s.url, s.flavour)
            try:
                yield
            finally:
                self.delivery = None
                self._metrics.stopped(self.target)

    async def step(self) -> bool:
        if self.delivery is None:
            raise RuntimeError(f"{self.name}: step() outside open()")
        await self._planner.plan()
        self._metrics.meter_queued(self.target, await self.meter_outbox.plan(self._clock()))
        busy = await self.delivery.round(self._stop)
        await self._housekeeping()
        return busy

    def disowned(self) -> None:
        """Another instance owns this target now (runtime.ownership): drop our gauges,
        and refresh them at once should the target come back to us."""
        self._metrics.disowned(self.target)
        self._next_backlog = 0.0

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
        self._metrics.backlog(self.target, due=b.due, waiting=b.waiting, oldest_s=oldest, rejected=b.rejected)
        meter_due, meter_rejected = await self.meter_outbox.backlog(now)
        self._metrics.meter_backlog(self.target, due=meter_due, rejected=meter_rejected)
        return b.due


class Uplink:
    """Forwards ``consumption`` periods to every enabled target, each its own stage on
    its own runner.  ``adapters`` replaces the HTTP adapter of the targets it names."""

    def __init__(self, pool: asyncpg.Pool, settings: UplinkSettings, *, zone: ZoneInfo,
                 registry: CollectorRegistry, health: DatabaseHealth, events: RunnerEvents,
                 clock: Clock = utc_now, rng: random.Random | None = None,
                 adapters: Mapping[str, Adapter] | None = None,
                 owned: Callable[[Stage], Stage] | None = None) -> None:
        adapters = adapters or {}
        # owned: each target's sender is singular among instances (runtime.ownership);
        # without it (one instance, tests) every target steps here.
        own: Callable[[Stage], Stage] = owned or (lambda stage: stage)
        if unknown := set(adapters) - set(settings.targets):
            raise ValueError(f"adapters for unknown uplink targets: {', '.join(sorted(unknown))}")
        self.metrics = UplinkMetrics(registry)
        rng = rng or random.Random()
        self.stages: dict[str, TargetStage] = {
            name: TargetStage(name, t, settle_s=settings.settle_s, pool=pool, zone=zone, metrics=self.metrics,
                              clock=clock, rng=rng, adapter=adapters.get(name))
            for name, t in settings.targets.items() if t.enabled
        }
        self.runners: dict[str, StageRunner] = {
            name: StageRunner(own(stage), interval_s=settings.interval_ms / 1000, pause_min_s=settings.pause_min_s,
                              pause_max_s=settings.pause_max_s, health=health, events=events, rng=rng)
            for name, stage in self.stages.items()
        }

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set; then each target finishes its in-flight requests
        (bounded by its timeout), records what it learned, and returns."""
        async with contextlib.AsyncExitStack() as stack:
            for stage in self.stages.values():
                await stack.enter_async_context(stage.open(stop))
            async with asyncio.TaskGroup() as tg:
                for name, runner in self.runners.items():
                    tg.create_task(runner.run(stop), name=f"uplink-{name}")

    async def backlog(self) -> dict[str, int]:
        """Records due and not yet acknowledged, per target (also refreshes the gauges)."""
        return {name: await stage.refresh_backlog() for name, stage in self.stages.items()}
