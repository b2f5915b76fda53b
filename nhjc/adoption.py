"""The persistent MQTT sessions of instances sharing the readings, and the adoption of a
gone one's.

Mosquitto keeps a shared-subscription member's persistent session in the group after
its instance is killed: the session keeps getting its turn of the messages, and they
wait there (with what was in flight) until the same client id connects again.  So that
the others take over that share without the instance coming back:

* Each instance holds, for as long as it runs, the advisory lock of its own session
  (``mqtt session {client_id}``, a job of :class:`~runtime.ownership.Ownership`: one way
  to hold a lock), and registers the session in ``mqtt_sessions``.  Its collector waits
  for that lock before every connect (see :meth:`Sessions.gate`), so it never connects
  while a peer is draining its session, and drops the connection if the lock is lost.
* Every heartbeat each instance tries the lock of every registered peer of its group
  whose session is not marked drained.  Getting it means the peer's instance is gone
  (its database session ended).  The instance then *adopts* the session: it connects as
  that client id (clean start off), unsubscribes it from everything at once (the broker
  stops giving it a turn of new messages, and still delivers what it holds: queued and
  in flight), stores what comes through an ingest stage of its own (the same code:
  commit, quarantine, acknowledge after commit), and once nothing has come for
  ``mqtt.adopt_settle_s`` it disconnects ending the session at the broker, marks it
  drained and releases the lock.
* Unsubscribing first, not after the quiet: under steady publishing a session still in
  the group would never be quiet.
* An adoption whose lock is lost (the adopter's database connection gone) stops at once,
  unacknowledged messages left in the session; an adopter killed mid-way leaves the
  lock free and the session unmarked: another instance adopts it at its next heartbeat.
* An instance that comes back takes its lock (after any adoption in progress), clears
  the mark and subscribes again, as on any start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge

from config.settings import IngestSettings, MqttSettings
from ingest.metrics import IngestMetrics
from ingest.stage import IngestStage
from runtime.dberrors import DatabaseHealth
from runtime.ownership import Ownership
from runtime.runner import RunnerEvents, StageRunner

__all__ = ["SessionEvents", "Sessions", "session_job"]

log = logging.getLogger("nhjc.sessions")

# How often an adoption looks whether it is drained (or its lock lost).
WATCH_S = 0.1
# An adoption's shutdown: the disconnect, and the commit of what is in hand.
FINISH_S = 10.0
# An adoption whose session the broker does not take (refused: an ACL tying client ids
# to users; unreachable) fails after this long, releasing the lock for the session's
# owner to come back; that peer is not tried again for RETRY_FAILED_S.
CONNECT_LIMIT_S = 30.0
RETRY_FAILED_S = 60.0


def session_job(client_id: str) -> str:
    """The name of the lock held for the MQTT session of ``client_id``."""
    return f"mqtt session {client_id}"


class SessionEvents:
    """``nhjc_sessions_adopted_total{outcome}``, ``nhjc_sessions_drained_messages_total``,
    ``nhjc_session_adopting`` and ``nhjc_session_waiting``, with a log line each."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._adopted = Counter("nhjc_sessions_adopted_total",
                                "Adoptions of a gone peer's MQTT session that ended: drained, interrupted "
                                "(the lock lost or shutdown), failed", ["outcome"], registry=registry)
        self._messages = Counter("nhjc_sessions_drained_messages_total",
                                 "Messages received through adopted sessions (a gone peer's backlog)",
                                 registry=registry)
        self._adopting = Gauge("nhjc_session_adopting", "1 while this instance drains a gone peer's session",
                               registry=registry)
        self._waiting = Gauge("nhjc_session_waiting",
                              "1 while this instance waits for the lock of its own MQTT session", registry=registry)
        for outcome in ("drained", "interrupted", "failed"):
            self._adopted.labels(outcome)

    def adopting(self, peer: str) -> None:
        self._adopting.set(1)
        log.warning("adopting the MQTT session of %s: its instance is gone", peer)

    def adopted(self, peer: str, outcome: str, messages: int, seconds: float) -> None:
        self._adopting.set(0)
        self._adopted.labels(outcome).inc()
        self._messages.inc(messages)
        line = "adoption of the MQTT session of %s %s after %.1f s: %d messages received"
        log.log(logging.INFO if outcome == "drained" else logging.WARNING, line, peer, outcome, seconds, messages)

    def waiting(self, on: bool) -> None:
        self._waiting.set(1 if on else 0)
        if on:
            log.info("waiting for the lock of this instance's own MQTT session (a peer may be draining it)")


class Sessions:
    """The stage ``sessions`` (stepped every ownership heartbeat) and the collector's
    gate.  Only with ``mqtt.shared_group``; ``main`` is the instance's own ingest."""

    name = "sessions"

    def __init__(self, mqtt: MqttSettings, ingest: IngestSettings, *, pool: asyncpg.Pool, ownership: Ownership,
                 metrics: IngestMetrics, health: DatabaseHealth, events: RunnerEvents,
                 registry: CollectorRegistry) -> None:
        self._mqtt = mqtt
        self._ingest = ingest
        self._pool = pool
        self._ownership = ownership
        self._metrics = metrics
        self._health = health
        self._runner_events = events
        self._events = SessionEvents(registry)
        self._own = session_job(mqtt.client_id)
        ownership.want(self._own)
        self.main: IngestStage | None = None
        self.waiting = False
        self.adopting: str | None = None
        self._adoption: asyncio.Task[None] | None = None
        self._failed: dict[str, float] = {}  # peer -> not tried again before (monotonic)

    # --- this instance's own session ------------------------------------------------
    async def gate(self) -> None:
        """Return once this instance holds its session's lock and has registered the
        session (never raises: the collector's loop awaits it)."""
        said = False
        while True:
            if self._ownership.holds(self._own):
                try:
                    await self._pool.execute(
                        "INSERT INTO mqtt_sessions (client_id, shared_group) VALUES ($1, $2) "
                        "ON CONFLICT (client_id) DO UPDATE SET shared_group = excluded.shared_group, "
                        "registered_at = now(), drained_at = NULL, drained_by = NULL",
                        self._mqtt.client_id, self._mqtt.shared_group)
                    break
                except Exception as exc:  # the database away: said by the health state
                    log.debug("cannot register the MQTT session yet: %s", type(exc).__name__)
            elif not said:
                said = self.waiting = True
                self._events.waiting(True)
            await asyncio.sleep(WATCH_S * 2)
        if said:
            self.waiting = False
            self._events.waiting(False)

    # --- the stage --------------------------------------------------------------------
    async def step(self) -> bool:
        if not self._ownership.holds(self._own):
            # Our lock lost (the ownership connection gone): a peer may adopt our session
            # now; stop using it until the lock is ours again (the gate).
            if self.main is not None and self.main.collector.connected:
                log.warning("lost the lock of this instance's MQTT session: disconnecting until it is back")
                self.main.collector.drop()
            return False
        if self._adoption is not None and not self._adoption.done():
            return False  # one at a time
        peers = await self._pool.fetch(
            "SELECT client_id FROM mqtt_sessions WHERE shared_group = $1 AND client_id <> $2 "
            "AND drained_at IS NULL ORDER BY registered_at", self._mqtt.shared_group, self._mqtt.client_id)
        now = time.monotonic()
        for row in peers:
            peer = row["client_id"]
            if self._failed.get(peer, 0.0) > now:
                continue
            if await self._ownership.try_borrow(session_job(peer)):
                self.adopting = peer
                self._adoption = asyncio.create_task(self._adopt(peer), name=f"adopt {peer}")
                break
        return False

    async def run(self, stop: asyncio.Event, *, interval_s: float) -> None:
        """Step every ``interval_s`` until ``stop``; an adoption in progress then ends
        (its session keeps what was not stored: another instance adopts it)."""
        try:
            await StageRunner(self, interval_s=interval_s, pause_min_s=interval_s, pause_max_s=interval_s,
                              health=self._health, events=self._runner_events).run(stop)
        finally:
            if self._adoption is not None and not self._adoption.done():
                self._adoption.cancel()
                with contextlib.suppress(BaseException):
                    await self._adoption

    # --- an adoption --------------------------------------------------------------------
    async def _adopt(self, peer: str) -> None:
        job = session_job(peer)
        started = time.monotonic()
        self._events.adopting(peer)
        outcome, messages = "failed", 0
        stage: IngestStage | None = None
        tasks: list[asyncio.Task[None]] = []
        try:
            mqtt = self._mqtt.model_copy(update={"client_id": peer})
            stage = await IngestStage.open(self._ingest, mqtt, pool=self._pool, metrics=self._metrics,
                                           health=self._health, adopt=True)
            runner = StageRunner(stage, interval_s=self._ingest.batch_ms / 1000, pause_min_s=self._ingest.pause_min_s,
                                 pause_max_s=self._ingest.pause_max_s, health=self._health,
                                 events=self._runner_events)
            tasks = [asyncio.create_task(stage.run_collector(), name=f"adopt {peer} collector"),
                     asyncio.create_task(runner.run(stage.finished), name=f"adopt {peer} ingest")]
            outcome = "interrupted"
            if not await self._drained(stage, job):
                return
            collector = stage.collector
            collector.discard_session = True  # nothing left in it: the broker forgets it
            stage.stop()
            await asyncio.wait_for(asyncio.gather(*tasks), FINISH_S)
            if self._ownership.holds(job):
                await self._pool.execute("UPDATE mqtt_sessions SET drained_at = now(), drained_by = $2 "
                                         "WHERE client_id = $1", peer, self._mqtt.client_id)
                outcome = "drained"
        except asyncio.CancelledError:
            outcome = "interrupted"  # shutdown
        except Exception as exc:
            self._failed[peer] = time.monotonic() + RETRY_FAILED_S
            log.warning("adopting the MQTT session of %s failed: %s: %s (tried again in %.0f s)", peer,
                        type(exc).__name__, exc, RETRY_FAILED_S)
        finally:
            if stage is not None:
                messages = stage.collector.received
                if not stage.finished.is_set():
                    stage.abandon()  # what is not acknowledged stays in the session
                    for t in tasks[1:]:
                        t.cancel()  # the ingest step may be waiting for a message
                for t in tasks:
                    with contextlib.suppress(BaseException):
                        await asyncio.wait_for(t, FINISH_S)
            await self._ownership.give_back(job)
            self.adopting = None
            self._events.adopted(peer, outcome, messages, time.monotonic() - started)

    async def _drained(self, stage: IngestStage, job: str) -> bool:
        """Wait until the session is unsubscribed, everything received is committed and
        acknowledged, and nothing came for ``adopt_settle_s``; False when the lock is lost
        first (the step in progress is cut short: its messages stay in the session)."""
        collector = stage.collector
        settle_us = int(self._mqtt.adopt_settle_s * 1e6)
        confirmed_us = 0
        waiting_since = time.monotonic()
        while True:
            await asyncio.sleep(WATCH_S)
            if not self._ownership.holds(job):
                return False
            now_us = time.time_ns() // 1000
            if not (collector.connected and collector.subscribed):
                confirmed_us = 0
                if time.monotonic() - waiting_since > CONNECT_LIMIT_S:
                    raise RuntimeError(f"the broker did not take the session within {CONNECT_LIMIT_S:g} s")
                continue
            waiting_since = time.monotonic()
            confirmed_us = confirmed_us or now_us
            quiet_since = max(confirmed_us, collector.last_message_us)
            if stage.idle and collector.queue.empty() and now_us - quiet_since >= settle_us:
                return True
