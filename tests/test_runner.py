"""The one stage runner: steps, idle sleeps, the pause after an error, and what it tells
the database's health state.  No services: a stage here is a few lines of Python."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import CollectorRegistry

from runtime.dberrors import DatabaseHealth
from runtime.runner import RunnerEvents, StageRunner


class Scripted:
    """A stage whose steps do what a script says: True/False returned, an exception raised."""

    name = "scripted"

    def __init__(self, script: list[bool | BaseException], stop: asyncio.Event) -> None:
        self.script = list(script)
        self.stop = stop
        self.calls = 0

    async def step(self) -> bool:
        self.calls += 1
        if not self.script:
            self.stop.set()
            return False
        what = self.script.pop(0)
        if isinstance(what, BaseException):
            raise what
        return what


def _runner(stage: Scripted, registry: CollectorRegistry, health: DatabaseHealth, *,
            probes_database: bool = False) -> StageRunner:
    return StageRunner(stage, interval_s=0.01, pause_min_s=0.01, pause_max_s=0.02, health=health,
                       events=RunnerEvents(registry), probes_database=probes_database)


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_errors_are_counted_paused_after_and_the_stage_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    stop, registry = asyncio.Event(), CollectorRegistry()
    health = DatabaseHealth(registry)
    health.succeeded("start")
    stage = Scripted([True, KeyError("bug"), KeyError("bug"), ConnectionResetError("cut"), False], stop)
    runner = _runner(stage, registry, health)
    with caplog.at_level(logging.INFO):
        await asyncio.wait_for(runner.run(stop), 5)
    assert stage.calls == 6 and runner.steps == 6 and runner.failures == 0
    assert _value(registry, "nhjc_stage_errors_total", stage="scripted", error_type="KeyError") == 2
    assert _value(registry, "nhjc_stage_errors_total", stage="scripted", error_type="ConnectionResetError") == 1
    assert _value(registry, "nhjc_stage_recoveries_total", stage="scripted") == 1
    # The database error went to the health state, which said the outage once and its end once.
    assert _value(registry, "nhjc_database_retries_total", stage="scripted") == 1
    assert health.up is True
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1, "only the first error of a streak carries its traceback"


async def test_an_idle_step_does_not_say_the_database_is_back() -> None:
    """Another part found the database away; a step that did not touch it proves nothing."""
    stop, registry = asyncio.Event(), CollectorRegistry()
    health = DatabaseHealth(registry)
    health.failed("probe", ConnectionRefusedError("refused"))
    await asyncio.wait_for(_runner(Scripted([False, False], stop), registry, health).run(stop), 5)
    assert health.up is False
    # A probe's good step does say so.
    stop.clear()
    probe_metrics = CollectorRegistry()  # one set of runner metrics per registry
    await asyncio.wait_for(_runner(Scripted([False], stop), probe_metrics, health, probes_database=True).run(stop), 5)
    assert health.up is True


async def test_pauses_grow_with_the_backoff_and_stop_cuts_them_short() -> None:
    stop, registry = asyncio.Event(), CollectorRegistry()
    health = DatabaseHealth(registry)
    stage = Scripted([KeyError("bug")] * 100, stop)
    runner = StageRunner(stage, interval_s=0.01, pause_min_s=10.0, pause_max_s=60.0, health=health,
                         events=RunnerEvents(registry))
    task = asyncio.create_task(runner.run(stop))
    await asyncio.sleep(0.2)
    assert stage.calls == 1, "a 10 s pause follows the first failure"
    stop.set()
    await asyncio.wait_for(task, 1)
