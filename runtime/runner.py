"""The one stage runner.  A stage exposes one step; the runner owns the loop around it:
the sleep while idle, the pause after an error (the one backoff), the count of failures
in a row, and the named events that say so (Telegraf's ``running_output`` is the model:
plugins know their work, one wrapper knows how to keep running it).

A step returns True when more work is waiting now (the runner steps again at once) and
False when it is idle (the runner sleeps ``interval_s``).  A step that raises is not the
end of the stage:

* an error that :func:`~runtime.dberrors.is_retryable` calls the infrastructure's (the
  database away, a connection cut) goes to the :class:`~runtime.dberrors.DatabaseHealth`,
  which says the outage once;
* anything else is a bug or a fault of some input: counted by its class and logged, with
  its traceback for the first of a streak, so a crash loop cannot flood the log;

then the runner pauses with the backoff and steps again.  A step must therefore leave
nothing half done that a second call would not finish: what it works on is read again
from the database, or kept by the stage until a step succeeds with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter

from runtime.backoff import Backoff
from runtime.dberrors import DatabaseHealth, describe, is_retryable

__all__ = ["RunnerEvents", "Stage", "StageRunner", "sleep_or_stop"]

log = logging.getLogger("nhjc.runner")


class Stage(Protocol):
    """What the runner needs of a stage: its name (a metrics label and the log's word for
    it: a fixed word, or a word and a configured target name) and one step."""

    name: str

    async def step(self) -> bool: ...


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less when ``stop`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))


class RunnerEvents:
    """The runner's named events, each logged and counted together.  Labels: the stage's
    name and an exception class, never a message."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._errors = Counter(
            "nhjc_stage_errors_total",
            "Steps of a stage that failed, by stage and exception class (database outages "
            "included; they are also in nhjc_database_retries_total)",
            ["stage", "error_type"], registry=registry)
        self._recovered = Counter(
            "nhjc_stage_recoveries_total", "Times a stage succeeded again after failed steps",
            ["stage"], registry=registry)

    def step_failed(self, stage: str, exc: BaseException, *, failures: int, pause_s: float,
                    health: DatabaseHealth) -> None:
        self._errors.labels(stage, _error_type(exc)).inc()
        if is_retryable(exc):
            health.failed(stage, exc)  # one line per outage, said there
        elif failures == 1:
            log.error("%s: step failed, trying again in %.1fs", stage, pause_s, exc_info=exc)
        else:
            log.warning("%s: step failed again (%d in a row): %s; next try in %.1fs",
                        stage, failures, describe(exc), pause_s)

    def recovered(self, stage: str, failures: int, *, database_failed: bool,
                  health: DatabaseHealth) -> None:
        # Only a stage that found the database away says it is back: a step that did not
        # touch the database (an idle one) proves nothing about it.
        if database_failed:
            health.succeeded(stage)
        if failures:
            self._recovered.labels(stage).inc()
            log.info("%s: working again after %d failed step(s)", stage, failures)


def _error_type(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return type(exc).__name__


class StageRunner:
    """Runs one stage until ``stop`` is set.  ``steps`` counts finished steps, failed or
    not (tests use it to know the stage has looked at the world since they changed it)."""

    def __init__(self, stage: Stage, *, interval_s: float, pause_min_s: float, pause_max_s: float,
                 health: DatabaseHealth, events: RunnerEvents, rng: random.Random | None = None,
                 probes_database: bool = False) -> None:
        if interval_s <= 0:
            raise ValueError(f"{stage.name}: interval_s must be positive")
        self.stage = stage
        self.steps = 0
        self._interval_s = interval_s
        self._backoff = Backoff(pause_min_s, pause_max_s, rng)
        self._health = health
        self._events = events
        # A readiness probe's every good step says the database answers; any other
        # stage's says so only after the stage itself found it away.
        self._probes_database = probes_database

    @property
    def failures(self) -> int:
        """Failed steps in a row (0 once a step succeeds)."""
        return self._backoff.failures

    async def run(self, stop: asyncio.Event) -> None:
        name = self.stage.name
        database_failed = False  # a step of this streak failed for the database
        while not stop.is_set():
            try:
                busy = await self.stage.step()
            except Exception as exc:
                database_failed = database_failed or is_retryable(exc)
                pause = self._backoff.next_delay()
                self._events.step_failed(name, exc, failures=self._backoff.failures, pause_s=pause,
                                         health=self._health)
                self.steps += 1
                await sleep_or_stop(stop, pause)
                continue
            self._events.recovered(name, self._backoff.failures, database_failed=database_failed or self._probes_database,
                                   health=self._health)
            database_failed = False
            self._backoff.reset()
            self.steps += 1
            if not busy:
                await sleep_or_stop(stop, self._interval_s)
