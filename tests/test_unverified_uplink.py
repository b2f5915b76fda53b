"""Verification reaches the platforms: periods resting on readings of an instrument out of
verification go out with ``valid: false``, over real HTTP, from the real database; an item
with no instrument, and an in-date one, go out valid."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from ingest.meters import upsert_meters
from processing.periods import QUARTER
from tests.strategies import at, item
from tests.test_meters_processing import ENT, GAS, meter, quarters
from tests.test_processing_aggregator import add_items, aggregator, connected, drain, store
from tests.test_uplink_delivery import uplink_for
from tests.test_uplink_support import TOTAL_CODE, received, running, wait_until
from tools.clock import FakeClock
from tools.platform.mock import MockPlatform
from tools.platform.targets import local, target

pytestmark = pytest.mark.asyncio(loop_scope="session")

NOW = local(2026, 11, 28, 12, 16, 30)
ELEC = "00-00-0000-023300-01"  # the plant's incoming electricity: whole plant, so in the total
SENT = ("2026-11-28 11:45:00", "2026-11-28 12:00:00")


@pytest.mark.parametrize(("next_align", "elec_valid"), [("2026-11-27", False), ("2027-11-27", True)])
async def test_unverified_periods_reach_the_platform_as_not_valid(db: str, next_align: str,
                                                                  elec_valid: bool) -> None:
    async with connected(db) as pool, pool.acquire() as conn:
        await add_items(conn, [item(ELEC, enterprise=ENT),
                               item(GAS, enterprise=ENT, energy="1500", unit="m3")])
        await upsert_meters(conn, [meter("E-1", ELEC, lastAlignDate="2025-11-28", nextAlignDate=next_align)],
                            "test")
        times = quarters(at(2026, 11, 28, 11), at(2026, 11, 28, 12, 15))
        await store(conn, [(c, t, 10.0 * i) for c in (ELEC, GAS) for i, t in enumerate(times)], enterprise=ENT)
        await drain(aggregator(pool))
    async with MockPlatform(name="provincial") as prov, \
            uplink_for(db, {"provincial": target(prov.url)}, FakeClock(NOW), CollectorRegistry()) as up, \
            running(up):
        wanted = {(ENT, code, QUARTER, when) for code in (ELEC, GAS, TOTAL_CODE) for when in SENT}

        async def all_there() -> bool:
            return wanted <= set(await received(prov.url))

        await wait_until(all_there, "the quarters of both items and the total at the platform")
        got = await received(prov.url)
    for when in SENT:
        assert got[(ENT, ELEC, QUARTER, when)]["valid"] is elec_valid
        assert got[(ENT, GAS, QUARTER, when)]["valid"] is True  # no instrument: reported, not invalidated
        assert got[(ENT, TOTAL_CODE, QUARTER, when)]["valid"] is elec_valid  # the total rests on both
