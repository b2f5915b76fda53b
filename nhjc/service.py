"""``nhjc run``: the composition root.  It builds every stage from the settings, runs
them in one task group, and shuts them down from the source: stop reading the broker,
commit and acknowledge what is in hand, then stop the rest."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Coroutine
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry

from config.settings import Settings
from ingest.metrics import IngestMetrics
from ingest.stage import IngestStage
from nhjc.adoption import Sessions
from nhjc.http import HttpEndpoint
from nhjc.probe import DatabaseProbe
from nhjc.startup import describe
from processing.aggregator import Aggregator
from processing.completeness import CompletenessUpdater
from processing.scorecard import ScorecardJob
from runtime.dberrors import RETRYABLE, DatabaseHealth, is_retryable
from runtime.dbpool import open_pool
from runtime.migrate import available
from runtime.ownership import Ownership, OwnershipEvents
from runtime.runner import RunnerEvents, Stage, StageRunner
from uplink import Uplink

__all__ = ["SchemaError", "Service", "main_run"]

log = logging.getLogger("nhjc.service")

SHUTDOWN_GRACE_S = 10.0
# The readiness probe: SELECT 1 this often, on a connection of its own, each try with
# this deadline; a stall is reported within PROBE_EVERY_S + PROBE_DEADLINE_S.
PROBE_EVERY_S = 1.0
PROBE_DEADLINE_S = 2.0


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
        # What every stage and the probe last found; one log line per change of state.
        self.health = DatabaseHealth(self.registry, on_change=self.metrics.database_changed)
        self.events = RunnerEvents(self.registry)  # every runner's, one set per registry
        self.pool: asyncpg.Pool | None = None
        self.ingest: IngestStage | None = None
        self.http: HttpEndpoint | None = None
        self.uplink: Uplink | None = None
        self.sessions: Sessions | None = None  # with a shared group: the MQTT sessions' locks
        o = settings.ownership
        # Singular work (each uplink target, completeness, the scorecard) runs where its lock is held.
        self.ownership = Ownership(settings.database.dsn(), application_name=f"nhjc-owner {settings.mqtt.client_id}",
                                   heartbeat_s=o.heartbeat_s, deadline_s=o.deadline_s,
                                   release_after_s=o.release_after_s, events=OwnershipEvents(self.registry))

    # --- readiness -----------------------------------------------------------------
    def ready(self) -> dict[str, bool]:
        return {"broker": bool(self.ingest and self.ingest.connected), "database": self.health.up is True}

    def not_ready_reasons(self) -> dict[str, str]:
        """Why the parts that are down are down (for /readyz)."""
        reasons = {}
        if self.health.up is not True:
            reasons["database"] = self.health.reason or "not checked yet"
        if self.sessions is not None and self.sessions.waiting:
            reasons["broker"] = "waiting for the lock of its own MQTT session (a peer draining it, or the database away)"
        elif not (self.ingest and self.ingest.connected):
            reasons["broker"] = "not connected and subscribed"
        return reasons

    def details(self) -> dict[str, object]:
        """What /readyz adds to its body: the singular jobs this instance owns now (and
        the locks of MQTT sessions), and the gone peer's session it is draining."""
        out: dict[str, object] = {"owns": self.ownership.held}
        if self.sessions is not None and self.sessions.adopting is not None:
            out["adopting"] = self.sessions.adopting
        return out

    async def _watch_database(self, stop: asyncio.Event) -> None:
        """The readiness probe, stepped every PROBE_EVERY_S (after a failure too: the
        pause is that long) until ``stop``."""
        probe = DatabaseProbe(self.settings.database, deadline_s=PROBE_DEADLINE_S)
        runner = StageRunner(probe, interval_s=PROBE_EVERY_S, pause_min_s=PROBE_EVERY_S, pause_max_s=PROBE_EVERY_S,
                             health=self.health, events=self.events, probes_database=True)
        try:
            await runner.run(stop)
        finally:
            probe.close()

    # --- lifecycle ---------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        asyncio.get_running_loop().set_exception_handler(_quiet_database_leftovers)
        # Listen first: a metrics port in use stops the start before anything connects.
        self.http = HttpEndpoint(host=s.metrics.host, port=s.metrics.port, registry=self.registry,
                                 ready=self.ready, reasons=self.not_ready_reasons, details=self.details)
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
            self.health.succeeded("start")
            if s.mqtt.shared_group:
                # The collector connects only while this instance holds its session's lock.
                self.sessions = Sessions(s.mqtt, s.ingest, pool=self.pool, ownership=self.ownership,
                                         metrics=self.metrics, health=self.health, events=self.events,
                                         registry=self.registry)
            ingest = self.ingest = await IngestStage.open(
                s.ingest, s.mqtt, pool=self.pool, metrics=self.metrics, health=self.health,
                gate=self.sessions.gate if self.sessions is not None else None)
            if self.sessions is not None:
                self.sessions.main = ingest
            # The ingest step waits on the broker's messages: it is idle only once finished.
            ingest_runner = StageRunner(ingest, interval_s=s.ingest.batch_ms / 1000, pause_min_s=s.ingest.pause_min_s,
                                        pause_max_s=s.ingest.pause_max_s, health=self.health, events=self.events)
            http_stop, probe_stop = asyncio.Event(), asyncio.Event()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.http.run(http_stop), name="http")
                tg.create_task(ingest.run_collector(), name="collector")
                ingesting = tg.create_task(ingest_runner.run(ingest.finished), name="ingest")
                tg.create_task(self._watch_database(probe_stop), name="database-watch")
                downstream = [tg.create_task(coro, name=name) for name, coro in self._more_stages(stop)]
                await stop.wait()
                log.info("stopping: no new messages; committing what is in hand")
                stop_by = asyncio.get_running_loop().time() + SHUTDOWN_GRACE_S
                ingest.stop()
                probe_stop.set()
                gave_up = not await self._finish_ingest(ingest, ingesting)
                stopped = await self._stop_downstream(downstream, stop_by)
                # Only now that no owned step runs: the other instances take the jobs over.
                await self.ownership.close()
                if not stopped or gave_up:
                    # What was cancelled may still wait on the stalled database (a rollback
                    # on the way out): cut every connection; the server rolls back.
                    self.pool.terminate()
                    # A cancellation that met the cut connection can come back as a
                    # database error: cancel until the runner stops.
                    while gave_up and not ingesting.done():
                        ingesting.cancel()
                        await asyncio.wait([ingesting], timeout=0.5)
                http_stop.set()
        finally:
            await self.http.close()  # already closed unless the start failed
            try:  # a graceful close waits on the server: bounded, for a stalled one
                await asyncio.wait_for(self.pool.close(), PROBE_DEADLINE_S)
            except RETRYABLE:  # TimeoutError among them
                self.pool.terminate()

    @staticmethod
    async def _finish_ingest(ingest: IngestStage, ingesting: asyncio.Task[None]) -> bool:
        """Wait SHUTDOWN_GRACE_S for the ingest to commit and acknowledge what is in
        hand; False when it did not (the database is stuck): the batch is left
        unacknowledged, and the broker delivers it again to the next run."""
        try:
            await asyncio.wait_for(ingest.finished.wait(), SHUTDOWN_GRACE_S)
            return True
        except TimeoutError:
            log.warning("commit did not finish in %.0fs; leaving it to redelivery", SHUTDOWN_GRACE_S)
            ingest.abandon()
            ingesting.cancel()
            return False

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
        """Stages downstream of the readings: aggregation, completeness, the scorecard and uplink.
        They read their work from the database, so stopping them loses nothing."""
        assert self.pool is not None
        s = self.settings
        p = s.processing

        def runner(stage: Stage, interval_s: float) -> StageRunner:
            return StageRunner(stage, interval_s=interval_s, pause_min_s=p.pause_min_s,
                               pause_max_s=p.pause_max_s, health=self.health, events=self.events)

        own = self.ownership
        heartbeat = own.heartbeat_s
        # The aggregator is not owned: every instance aggregates, enterprise by enterprise
        # under the aggregator's own locks.  Singular work is wrapped in own.owned(...).
        aggregator = Aggregator(p, pool=self.pool, registry=self.registry)
        completeness = own.owned(CompletenessUpdater(p, pool=self.pool, registry=self.registry))
        scorecard = own.owned(ScorecardJob(p, pool=self.pool, registry=self.registry))
        stages: list[tuple[str, Coroutine[Any, Any, None]]] = [
            ("ownership", StageRunner(own, interval_s=heartbeat, pause_min_s=heartbeat, pause_max_s=heartbeat,
                                      health=self.health, events=self.events).run(stop)),
            ("aggregator", runner(aggregator, p.interval_ms / 1000).run(stop)),
            ("completeness", runner(completeness, p.completeness_interval_s).run(stop)),
            ("scorecard", runner(scorecard, p.scorecard_interval_s).run(stop)),
        ]
        if self.sessions is not None:
            stages.append(("sessions", self.sessions.run(stop, interval_s=heartbeat)))
        if any(t.enabled for t in s.uplink.targets.values()):
            self.uplink = Uplink(self.pool, s.uplink, zone=p.zone, registry=self.registry,
                                 health=self.health, events=self.events, owned=own.owned)
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
