"""``Simulator``: paces a :class:`~tools.sim.scenario.Scenario` on a real or accelerated
clock and publishes it, counting what it sent.

The work runs in one thread (numpy generation, JSON, paho publishing with back-pressure);
``run`` wraps it for asyncio so the demo can run it beside the pipeline and stop it with an
``asyncio.Event``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from tools.sim.counters import Counters
from tools.sim.enterprises import Enterprise, items_records, pilot_enterprises
from tools.sim.faults import FaultSpec
from tools.sim.frames import CST, DEFAULT_LIMITS, Limits
from tools.sim.instruments import AppliedReplacement, PlannedReplacement
from tools.sim.publisher import MqttPublisher, NullPublisher, Publisher
from tools.sim.scenario import FaultEvent, Message, Scenario

__all__ = ["Simulator", "parse_time"]

log = logging.getLogger("nhjc.simulate")

_DAY_S = 86400.0


def parse_time(value: datetime | float | str) -> float:
    """Unix seconds from a datetime, a number, or ISO 8601 text (no offset means +08:00)."""
    if isinstance(value, (int, float)):
        return float(value)
    dt = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=CST)
    return dt.timestamp()


@dataclass(frozen=True, slots=True)
class _Expect:
    """Ingest's thresholds the counters judge readings by (its settings' defaults)."""

    early_tolerance_s: float = 300.0
    late_horizon_s: float = 7 * _DAY_S


class Simulator:
    """Realistic readings of pilot enterprises over MQTT, optionally with faults.

    ``start``: simulated start (default: now; with ``speed`` > 1 and a ``duration``, now -
    duration, so an accelerated run replays the recent past instead of running into the
    future).  ``duration``, ``backfill`` and ``interval`` are simulated seconds; ``speed`` is
    simulated seconds per real second (``math.inf``: as fast as possible).  ``rate`` caps
    published readings per real second.
    """

    def __init__(
        self,
        *,
        url: str = "mqtt://127.0.0.1:1883",
        enterprises: int | Sequence[Enterprise] = 30,
        items: int | None = None,
        seed: int = 0,
        start: datetime | float | str | None = None,
        duration: float | None = None,
        interval: int = 60,
        speed: float = 1.0,
        backfill: float = 0.0,
        faults: FaultSpec | str | None = None,
        fault_rate: float | None = None,
        rate: float | None = None,
        limits: Limits = DEFAULT_LIMITS,
        early_tolerance_s: float = 300.0,
        late_horizon_s: float = 7 * _DAY_S,
        username: str | None = None,
        password: str | None = None,
        ca_file: Path | str | None = None,
        cert_file: Path | str | None = None,
        key_file: Path | str | None = None,
        connections: int = 64,
        client_id: str = "nhjc-sim",
        dry_run: bool = False,
        clock: Callable[[], float] = time.time,
        replacement: PlannedReplacement | None = None,
    ) -> None:
        if not speed > 0:
            raise ValueError("speed must be positive (math.inf: as fast as possible)")
        if duration is not None and duration < 0:
            raise ValueError("duration must not be negative")
        if backfill < 0:
            raise ValueError("backfill must not be negative")
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive")
        if interval < 1:
            raise ValueError("interval must be at least 1 s")
        self.url = url
        self.enterprises: tuple[Enterprise, ...] = (
            pilot_enterprises(enterprises, seed=seed, items=items) if isinstance(enterprises, int)
            else tuple(enterprises))
        self.seed = seed
        self.start = None if start is None else parse_time(start)
        self.duration = duration
        self.interval = int(interval)
        self.speed = speed
        self.backfill = backfill
        self.faults = faults if isinstance(faults, FaultSpec) else FaultSpec.parse(faults, fault_rate)
        self.rate = rate
        self.limits = limits
        self._expect = _Expect(early_tolerance_s, late_horizon_s)
        self._mqtt = dict(username=username, password=password, ca_file=ca_file,
                          cert_file=cert_file, key_file=key_file, connections=connections,
                          client_id=client_id)
        self.dry_run = dry_run
        self.replacement = replacement
        self._clock = clock
        self._lock = threading.Lock()
        self._counters = Counters(
            enterprises=len(self.enterprises),
            gateways=sum(len(e.gateways) for e in self.enterprises),
            items=sum(len(e.items) for e in self.enterprises))
        self._halt = threading.Event()
        self._ran = False
        self.scenario: Scenario | None = None

    # ------------------------------------------------------------------ what it simulates

    def items_records(self) -> list[dict[str, object]]:
        """All items in the ``nhjc items load FILE`` format."""
        return items_records(self.enterprises)

    @property
    def counters(self) -> Counters:
        """A consistent copy of the counters (safe to read while running)."""
        with self._lock:
            c = self._counters.snapshot()
            if self.scenario is not None:
                c.generated = dict(self.scenario.stats)
            return c

    @property
    def events(self) -> list[FaultEvent]:
        """Gaps, resets, spikes and rollovers generated so far (the first 100,000)."""
        return list(self.scenario.events) if self.scenario is not None else []

    @property
    def replacements(self) -> list[AppliedReplacement]:
        """The planned meter replacement, once simulated (with the old register's final value)."""
        return list(self.scenario.replacements) if self.scenario is not None else []

    def scenario_for(self, now: float) -> Scenario:
        """The scenario this simulator would run if started at wall time ``now``."""
        return Scenario(self.enterprises, seed=self.seed, start=math.ceil(self._start(now)),
                        interval_s=self.interval, duration_s=self.duration,
                        backfill_s=self.backfill, faults=self.faults, limits=self.limits,
                        live_block=1 if math.isfinite(self.speed) else 60, replacement=self.replacement)

    def _start(self, now: float) -> float:
        if self.start is not None:
            return self.start
        if self.speed > 1 and self.duration is not None:
            return now - self.duration
        return now

    # ------------------------------------------------------------------ running

    def stop(self) -> None:
        """Ask a running simulator to stop (held frames and ``offline`` are still sent)."""
        self._halt.set()

    async def run(self, stop: asyncio.Event | None = None) -> Counters:
        """Run in a worker thread until the duration is over or ``stop`` is set."""
        watcher = asyncio.create_task(self._watch(stop)) if stop is not None else None
        work = asyncio.ensure_future(asyncio.to_thread(self.run_blocking))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            self._halt.set()
            await asyncio.wait([work])
            raise
        finally:
            if watcher is not None:
                watcher.cancel()

    async def _watch(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._halt.set()

    def run_blocking(self, stop: threading.Event | None = None) -> Counters:
        """Run in this thread until the duration is over or ``stop`` (or ``self.stop()``)."""
        with self._lock:
            if self._ran:
                raise RuntimeError("a Simulator runs once; make a new one")
            self._ran = True
        halt = self._halt
        done = threading.Event()
        if stop is not None:
            def relay() -> None:
                while not done.is_set():
                    if stop.wait(0.2):
                        halt.set()
                        return
            threading.Thread(target=relay, daemon=True, name="nhjc-sim-stop").start()
        try:
            return self._run(halt)
        finally:
            done.set()

    def _run(self, halt: threading.Event) -> Counters:
        began = time.monotonic()
        now = self._clock()
        scenario = self.scenario = self.scenario_for(now)
        sink: Publisher = NullPublisher() if self.dry_run else MqttPublisher(
            self.url, abort=halt, **self._mqtt)  # type: ignore[arg-type]
        log.info("simulating %d enterprises, %d gateways, %d items from %s, every %d s%s%s",
                 self._counters.enterprises, self._counters.gateways, self._counters.items,
                 datetime.fromtimestamp(scenario.begin, CST).isoformat(), self.interval,
                 f", backfill {scenario.backfill_ticks} ticks" if scenario.backfill_ticks else "",
                 f", faults {dict(self.faults.rates)}" if self.faults else "")
        sink.connect([scenario.status_will(n) for n in range(len(scenario.gateways))])
        with self._lock:
            self._counters.connections = sink.connections
        pacer = _Pacer(self._clock, self.speed, halt, self.rate)
        if self.start is None and self.speed == 1:
            pacer.anchor(sim=now, wall=now)  # real time: a reading leaves when its time comes
        try:
            for m in scenario.opening():
                self._send(sink, m)
            last = float(scenario.begin)
            held: list[Message] = []
            for block in scenario.blocks():
                for n, m in enumerate(block):
                    if "backfill" not in m.tags:
                        pacer.wait_until(m.send_at, start=scenario.start)
                    pacer.take(len(m.ts))
                    if halt.is_set():
                        # Late frames already released count as still held: they go below.
                        held = [h for h in block[n:] if "late" in h.tags]
                        break
                    self._send(sink, m)
                    last = max(last, m.send_at)
                if halt.is_set():
                    break
            for m in held + scenario.drain(at=last):
                self._send(sink, m)
            for m in scenario.closing(last):
                self._send(sink, m)
            if not sink.flush(30.0):
                log.warning("the broker did not acknowledge everything within 30 s")
        finally:
            sink.close()
            with self._lock:
                self._counters.wall_s = time.monotonic() - began
        c = self.counters
        log.info("published %d frames, %d readings (%d unique), %d expected in quarantine in %.1f s",
                 c.frames, c.readings, c.unique_readings, c.quarantined, c.wall_s)
        return c

    def _send(self, sink: Publisher, m: Message) -> None:
        sink.publish(m.gateway, m.topic, m.payload, m.retain)
        now = self._clock()
        with self._lock:
            c = self._counters
            c.sim_time = m.send_at
            if m.kind == "items":
                c.items_messages += 1
                return
            if m.kind == "status":
                c.status_messages += 1
                return
            c.frames += 1
            c.bytes += len(m.payload)
            for tag in m.tags:
                c.tagged_frames[tag] = c.tagged_frames.get(tag, 0) + 1
            for reason, n in m.quarantine:
                c.quarantine[reason] = c.quarantine.get(reason, 0) + n
            if not len(m.ts):
                return
            ts = m.ts
            # Judged as ingest will judge them on arrival (about now).
            ahead = int(np.count_nonzero(ts > now + _DAY_S))
            if ahead:
                c.quarantine["bad_timestamp"] = c.quarantine.get("bad_timestamp", 0) + ahead
            early = int(np.count_nonzero((ts > now + self._expect.early_tolerance_s) & (ts <= now + _DAY_S)))
            late = int(np.count_nonzero(ts < now - self._expect.late_horizon_s))
            if early:
                c.flags["early"] = c.flags.get("early", 0) + early
            if late:
                c.flags["late"] = c.flags.get("late", 0) + late
            ok = len(ts) - ahead
            c.readings += ok
            if "duplicate" in m.tags:
                c.duplicate_readings += ok
            if "backfill" in m.tags:
                c.backfill_readings += ok
            if "late" in m.tags:
                c.late_readings += ok


class _Pacer:
    """Maps simulated time to wall time (speed) and caps readings per second (rate)."""

    def __init__(self, clock: Callable[[], float], speed: float, halt: threading.Event,
                 rate: float | None) -> None:
        self._clock = clock
        self._speed = speed
        self._halt = halt
        self._anchor: tuple[float, float] | None = None
        self._rate = rate
        self._tokens = rate or 0.0
        self._filled = time.monotonic()

    def anchor(self, *, sim: float, wall: float) -> None:
        self._anchor = (sim, wall)

    def wait_until(self, sim_time: float, *, start: float) -> None:
        if not math.isfinite(self._speed):
            return
        if self._anchor is None:  # the live phase begins now, at its start
            self._anchor = (float(start), self._clock())
        sim0, wall0 = self._anchor
        delay = wall0 + (sim_time - sim0) / self._speed - self._clock()
        if delay > 0:
            self._halt.wait(delay)

    def take(self, readings: int) -> None:
        """Wait until ``readings`` may go out under the rate cap (a one-second bucket)."""
        if self._rate is None or readings == 0:
            return
        need = min(float(readings), self._rate)
        while not self._halt.is_set():
            t = time.monotonic()
            self._tokens = min(self._rate, self._tokens + (t - self._filled) * self._rate)
            self._filled = t
            if self._tokens >= need:
                self._tokens -= readings  # may go negative: a big frame borrows ahead
                return
            self._halt.wait((need - self._tokens) / self._rate)
