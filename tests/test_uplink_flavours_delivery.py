"""The whole uplink (``Uplink``, a real database) delivering to a mock platform of each
flavour over real HTTP: every due period after an outage, a Shandong key rotated
mid-run, and records a platform refuses kept as rejections without looping."""

from __future__ import annotations

import functools

import pytest
from prometheus_client import CollectorRegistry

from tests.test_uplink_delivery import DUE, NOW, count, has, seed, uplink_for, wire_key
from tests.test_uplink_support import E1, E2, GAS, control, loops, outbox, running, wait_until
from tools.clock import FakeClock
from tools.platform.mock import FLAVOURS, MockPlatform, Mode
from tools.platform.targets import target

pytestmark = pytest.mark.asyncio(loop_scope="session")

EXPECTED = {wire_key(e, c, st, t) for e in (E1, E2) for c, st, t, _ in DUE}


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_every_period_arrives_after_an_outage(db: str, flavour: str) -> None:
    await seed(db)
    clock, registry = FakeClock(NOW), CollectorRegistry()
    async with MockPlatform(name="p", flavour=flavour, mode=Mode(down=True)) as p, \
            uplink_for(db, {"p": target(p.url, flavour=flavour)}, clock, registry) as up, running(up):
        await wait_until(lambda: count_failed(p, "down"), "the outage seen", clock=clock)
        await control(p.url, down=False)
        await wait_until(functools.partial(has, p.url, EXPECTED), "everything due, after the outage", clock=clock)
        await loops(up)
        stats = p.stats()
        assert stats["records"] == len(EXPECTED) and stats["rejected_requests"] == 0


async def count_failed(p: MockPlatform, kind: str) -> bool:
    return bool(p.stats()["failed"].get(kind, 0) > 0)


async def test_shandong_key_rotated_mid_run(db: str) -> None:
    await seed(db)
    clock, registry = FakeClock(NOW), CollectorRegistry()
    async with MockPlatform(name="p", flavour="shandong", mode=Mode(fail_after=3)) as p, \
            uplink_for(db, {"p": target(p.url, flavour="shandong")}, clock, registry) as up, running(up):
        await wait_until(lambda: count_failed(p, "down"), "three records, then down", clock=clock)
        p.rotate_keys()
        await control(p.url, down=False)
        await wait_until(functools.partial(has, p.url, EXPECTED), "everything, under the new key", clock=clock)
        assert p.stats()["keys_issued"] == 4  # two enterprises, each key replaced once
        assert count(registry, "nhjc_uplink_rejected_total", target="p") == 0


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("how", ["refuse_codes", "reject_codes"])
async def test_refused_records_do_not_loop(db: str, flavour: str, how: str) -> None:
    await seed(db)
    clock, registry = FakeClock(NOW), CollectorRegistry()
    mode = Mode()
    mode.update({how: [GAS]})
    async with MockPlatform(name="p", flavour=flavour, mode=mode) as p, \
            uplink_for(db, {"p": target(p.url, flavour=flavour, batch_size=1)}, clock, registry) as up, \
            running(up):
        others = {k for k in EXPECTED if k[1] != GAS}
        await wait_until(functools.partial(has, p.url, others), "every other record", clock=clock)
        await loops(up)
        data_calls = p.stats()["requests"]["data"]
        await loops(up)
        clock.advance(seconds=600)
        await loops(up)
        assert p.stats()["requests"]["data"] == data_calls  # the refused ones are not sent again
        rows = [r for r in await outbox(db, "p") if r["state"] == "rejected"]
        assert rows and {r["code"] for r in rows} == {GAS}
