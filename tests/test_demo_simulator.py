"""The demo's end when its simulator has failed: whatever the simulator raised, the
demo goes on to stop the service (which commits what it has in hand) and print its
summary.  It used to await the simulator's task bare in its clean-up, so any failure
but a PublishError escaped from there and the service was never stopped."""

from __future__ import annotations

import asyncio
import logging

import pytest

from nhjc.demo import finish_simulator, simulator_state
from tools.sim import Counters, PublishError


async def _failing(exc: BaseException) -> Counters:
    raise exc


async def _ended(coro: object) -> asyncio.Task[Counters]:
    task: asyncio.Task[Counters] = asyncio.create_task(coro)  # type: ignore[arg-type]
    await asyncio.wait([task])
    return task


@pytest.mark.parametrize("exc", [OSError("network is unreachable"), RuntimeError("bug in a fault")])
async def test_an_unexpected_simulator_failure_is_logged_not_raised(exc: BaseException,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    task = await _ended(_failing(exc))
    assert simulator_state(task) == f"failed: {exc}"
    with caplog.at_level(logging.ERROR, logger="nhjc.demo"):
        await finish_simulator(task)  # returns: the caller stops the service next
    assert "simulator failed" in caplog.text
    assert str(exc) in caplog.text


async def test_a_publish_failure_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    task = await _ended(_failing(PublishError("cannot connect to the broker")))
    with caplog.at_level(logging.WARNING, logger="nhjc.demo"):
        await finish_simulator(task)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "cannot connect to the broker" in caplog.text


async def test_states_of_a_finished_and_a_cancelled_simulator() -> None:
    finished = await _ended(asyncio.sleep(0, Counters()))
    assert simulator_state(finished) == "caught up with now (finished)"
    await finish_simulator(finished)
    cancelled = asyncio.create_task(asyncio.sleep(60))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.wait([cancelled])
    assert simulator_state(cancelled) == "stopped"  # type: ignore[arg-type]
