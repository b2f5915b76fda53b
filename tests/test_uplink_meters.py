"""Measuring instruments reaching the platforms that take them, over real HTTP from a
real database: Yunnan's gaugeConfigure (add, update quoting the dataIndex, delete),
gaugeVerifyConfigure and gaugeReplaceConfigure; gbt37947's centerMeteringDataUrl, and
nothing (visibly) when the register reply has none; Shandong nothing.  An outage costs
nothing and delivers once; a refusal is kept until the operator's resend; a restart
sends only what was not acknowledged."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from datetime import date
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from ingest.meters import upsert_meters
from ingest.meterspec import parse_meters_file_bytes
from tests.meter_rows import add_meter, add_replacement, add_verification
from tests.test_uplink_delivery import NOW, count, uplink_for
from tests.test_uplink_rejected import nhjc
from tests.test_uplink_stage import FakeAdapter, fake_target
from tests.test_uplink_support import (
    E1,
    E2,
    GAS,
    POWER,
    control,
    get_json,
    loops,
    running,
    wait_until,
)
from tools.clock import FakeClock
from tools.platform.mock import MockPlatform, Mode
from tools.platform.targets import local, target
from uplink.adapters import Enterprise, Registration
from uplink.adapters.meters import MeterCall, MeterKind, MeterReply, operation
from uplink.rejected import meter_rejections, resend

pytestmark = pytest.mark.asyncio(loop_scope="session")

M1_OBJECT = {
    "serNo": "M1", "meterName": "1# 主变进线电能表", "meterType": "电能表", "meterLevel": 1, "dataCode": POWER,
    "reportRatio": 1, "precisionLevel": "0.5S", "manufacturer": "威胜", "model": "DTSD341",
    "installPlace": "1# 配电室", "alignState": "检定", "alignCycle": 12, "lastAlignDate": "2026-03-01",
    "nextAlignDate": "2027-02-28", "alignOrg": "安徽省计量科学研究院",
}


@pytest.fixture
async def conn(db: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(db)
    try:
        yield c
    finally:
        await c.close()


async def two_meters(conn: asyncpg.Connection, enterprise: str = E1) -> None:
    await add_meter(conn, enterprise, "M1", data_codes=[POWER])
    await add_meter(conn, enterprise, "M2", meter_name="天然气总表", meter_type="流量计", data_codes=[GAS],
                    align_state="none", align_cycle=None, last_align_date=None, next_align_date=None)


async def rows(db: str, target_name: str) -> dict[tuple[str, str, str, str], asyncpg.Record]:
    c = await asyncpg.connect(db)
    try:
        found = await c.fetch("SELECT * FROM uplink_meter_outbox WHERE target = $1", target_name)
    finally:
        await c.close()
    return {(r["enterprise"], r["ser_no"], r["kind"], r["ref"]): r for r in found}


async def settled(db: str, target_name: str, n: int, state: str = "acked") -> bool:
    found = await rows(db, target_name)
    return len(found) == n and all(r["state"] == state for r in found.values())


def calls(p: MockPlatform) -> list[tuple[Any, ...]]:
    """(call, operation, serNo, dataIndex) of every instrument call the platform took."""
    return [(c["call"], c["operation"], c["data"]["serNo"], c["dataIndex"]) for c in p.state.meter_calls]


async def test_yunnan_add_update_verify_replace_delete(db: str, conn: asyncpg.Connection) -> None:
    await two_meters(conn)
    clock, registry = FakeClock(NOW), CollectorRegistry()
    async with MockPlatform(name="y", flavour="yunnan") as p, \
            uplink_for(db, {"y": target(p.url, flavour="yunnan")}, clock, registry) as up, running(up):
        await wait_until(functools.partial(settled, db, "y", 2), "two instruments added", clock=clock)
        held = (await get_json(p.url, "/_meters"))["gauges"][E1]
        index = {g["serNo"]: i for i, g in held.items()}
        assert held[index["M1"]] == M1_OBJECT
        assert held[index["M2"]]["alignState"] == "未检定" and held[index["M2"]]["lastAlignDate"] is None
        assert {k[1]: r["data_index"] for k, r in (await rows(db, "y")).items()} == index
        assert sorted(calls(p)) == [("gauge", "add", "M1", None), ("gauge", "add", "M2", None)]

        # A changed record goes as update, quoting the dataIndex; an unchanged one not at all.
        await add_meter(conn, E1, "M1", data_codes=[POWER], model="DTSD341-MB3")
        await wait_until(lambda: _has(p, ("gauge", "update", "M1", index["M1"])), "the update", clock=clock)
        await wait_until(functools.partial(settled, db, "y", 2), "the update acknowledged", clock=clock)

        # A new verification period, then a replacement of M2 by M3 (recorded in one
        # transaction, as the registry's load does).
        await add_verification(conn, E1, "M1", date(2027, 3, 1), date(2028, 2, 29), align_org="云南省计量院")
        async with conn.transaction():
            await add_meter(conn, E1, "M3", meter_name="天然气总表(新)", data_codes=[GAS])
            await conn.execute("UPDATE meters SET retired_at = $1 WHERE ser_no = 'M2'", local(2026, 11, 20, 10))
            await add_replacement(conn, E1, GAS, local(2026, 11, 20, 10), old_ser_no="M2", new_ser_no="M3",
                                  old_final=1234.5, new_initial=0.25)
        await wait_until(functools.partial(settled, db, "y", 5), "verification, M3, replacement", clock=clock)
        index["M3"] = next(i for i, g in p.state.gauges[E1].items() if g["serNo"] == "M3")
        later = calls(p)[3:]
        assert sorted(later) == [("gauge", "add", "M3", None), ("gauge_replace", None, "M3", index["M3"]),
                                 ("gauge_verify", None, "M1", index["M1"])]
        # the replacement quotes M3's dataIndex: it waited for M3's add
        assert later.index(("gauge", "add", "M3", None)) < later.index(("gauge_replace", None, "M3", index["M3"]))
        assert p.state.meter_calls[3 + later.index(("gauge_replace", None, "M3", index["M3"]))]["operation"] is None
        replace = next(c["data"] for c in p.state.meter_calls if c["call"] == "gauge_replace")
        assert replace == {"serNo": "M3", "oldSerNo": "M2", "newSerNo": "M3", "dataCode": GAS,
                           "replaceTime": "2026-11-20 10:00:00", "oldFinalValue": 1234.5, "newInitialValue": 0.25}
        verify = next(c["data"] for c in p.state.meter_calls if c["call"] == "gauge_verify")
        assert (verify["lastAlignDate"], verify["nextAlignDate"], verify["alignOrg"]) == (
            "2027-03-01", "2028-02-29", "云南省计量院")

        # Retired with no replacement: delete, quoting the dataIndex; the platform forgets it.
        await conn.execute("UPDATE meters SET retired_at = $1 WHERE ser_no = 'M1'", local(2026, 11, 28))
        await wait_until(lambda: _has(p, ("gauge", "delete", "M1", index["M1"])), "the delete", clock=clock)
        await wait_until(functools.partial(settled, db, "y", 5), "the delete acknowledged", clock=clock)
        assert (await rows(db, "y"))[(E1, "M1", "gauge", "")]["data_index"] is None
        assert set(p.state.gauges[E1]) == {index["M2"], index["M3"]}  # M2 was replaced, not deleted
        await loops(up)
        assert len(calls(p)) == 7  # nothing twice
        assert count(registry, "nhjc_uplink_meter_acked_total", target="y") == 7
        assert count(registry, "nhjc_uplink_meter_acked_total", target="y", kind="gauge") == 5


async def _has(p: MockPlatform, call: tuple[Any, ...]) -> bool:
    return call in calls(p)


async def test_outage_then_recovery_delivers_once(db: str, conn: asyncpg.Connection) -> None:
    await two_meters(conn)
    await two_meters(conn, E2)
    clock, registry = FakeClock(NOW), CollectorRegistry()
    async with MockPlatform(name="y", flavour="yunnan", mode=Mode(down=True)) as p, \
            uplink_for(db, {"y": target(p.url, flavour="yunnan")}, clock, registry) as up, running(up):
        async def failing() -> bool:
            found = await rows(db, "y")
            return len(found) == 4 and all(r["attempts"] > 0 and r["last_error"] for r in found.values())

        await wait_until(failing, "every row failing while the platform is down", clock=clock)
        assert count(registry, "nhjc_uplink_meter_retries_total", target="y", reason="connect") >= 4
        await control(p.url, down=False)
        await wait_until(functools.partial(settled, db, "y", 4), "every instrument after the outage", clock=clock)
        await loops(up)
        assert sorted(calls(p)) == sorted(("gauge", "add", s, None) for s in ("M1", "M1", "M2", "M2"))
        assert {e: len(g) for e, g in p.state.gauges.items()} == {E1: 2, E2: 2}


async def test_refusal_kept_until_resend(db: str, conn: asyncpg.Connection) -> None:
    await two_meters(conn)
    clock, registry = FakeClock(NOW), CollectorRegistry()
    async with MockPlatform(name="y", flavour="yunnan", mode=Mode(reject_meters=["M2"])) as p, \
            uplink_for(db, {"y": target(p.url, flavour="yunnan")}, clock, registry) as up, running(up):
        async def refused() -> bool:
            found = await rows(db, "y")
            return (found.get((E1, "M2", "gauge", "")) is not None and found[(E1, "M2", "gauge", "")]["state"]
                    == "rejected" and found[(E1, "M1", "gauge", "")]["state"] == "acked")

        await wait_until(refused, "M2 refused, M1 added", clock=clock)
        listed = await meter_rejections(conn, target="y", limit=10)
        assert [(r.ser_no, r.kind, r.status, r.reason) for r in listed] == [("M2", "gauge", 400, "http_4xx")]
        assert "refused by the platform" in listed[0].message
        assert count(registry, "nhjc_uplink_meter_rejected_total", target="y", reason="http_4xx") == 1
        taken = p.state.requests["gauge"]
        await loops(up)
        clock.advance(seconds=600)
        await loops(up)
        assert p.state.requests["gauge"] == taken  # not sent again on its own
        await control(p.url, reject_meters=[])
        assert await resend(conn, target="y", enterprise=E1) == 1
        await wait_until(functools.partial(settled, db, "y", 2), "M2 after the resend", clock=clock)
        assert sorted(calls(p)) == [("gauge", "add", "M1", None), ("gauge", "add", "M2", None)]


async def test_restart_sends_only_what_was_not_acknowledged(db: str, conn: asyncpg.Connection) -> None:
    await two_meters(conn)
    clock = FakeClock(NOW)
    async with MockPlatform(name="y", flavour="yunnan") as p:
        settings = {"y": target(p.url, flavour="yunnan")}
        async with uplink_for(db, settings, clock) as up, running(up):
            await wait_until(functools.partial(settled, db, "y", 2), "two instruments added", clock=clock)
        await add_meter(conn, E1, "M3", data_codes=[GAS])
        await add_verification(conn, E1, "M1", date(2027, 3, 1), date(2028, 2, 29))
        async with uplink_for(db, settings, clock) as up, running(up):
            await wait_until(functools.partial(settled, db, "y", 4), "what changed while stopped", clock=clock)
            await loops(up)
        m1 = (await rows(db, "y"))[(E1, "M1", "gauge", "")]["data_index"]
        # instrument records go first in a round: M3's add, then M1's new period
        assert calls(p)[2:] == [("gauge", "add", "M3", None), ("gauge_verify", None, "M1", m1)]
        assert sorted(calls(p)[:2]) == [("gauge", "add", "M1", None), ("gauge", "add", "M2", None)]
        assert p.state.tokens_issued == 2  # one token per process: the second one did register


async def test_gbt37947_metering_url_takes_the_instrument_object(db: str, conn: asyncpg.Connection) -> None:
    await two_meters(conn)
    await add_verification(conn, E1, "M1", date(2027, 3, 1), date(2028, 2, 29))
    await conn.execute("UPDATE meters SET retired_at = now() WHERE ser_no = 'M2'")  # no call for this
    clock, registry = FakeClock(NOW), CollectorRegistry()
    async with MockPlatform(name="a") as p, uplink_for(db, {"a": target(p.url)}, clock, registry) as up, \
            running(up):
        await wait_until(functools.partial(settled, db, "a", 2), "both instruments settled", clock=clock)
        await loops(up)
        assert [(c["call"], c["data"]) for c in p.state.meter_calls] == [("metering", M1_OBJECT)]
        assert {k[2] for k in await rows(db, "a")} == {"gauge"}  # verifications ride on the object
        assert (await rows(db, "a"))[(E1, "M1", "gauge", "")]["data_index"] is not None
        assert count(registry, "nhjc_uplink_meter_acked_total", target="a") == 1


async def test_gbt37947_without_metering_url_sends_nothing_visibly(db: str, conn: asyncpg.Connection) -> None:
    await two_meters(conn)
    clock, registry = FakeClock(NOW), CollectorRegistry()
    async with MockPlatform(name="a", mode=Mode(metering_url=False)) as p, \
            uplink_for(db, {"a": target(p.url)}, clock, registry) as up, running(up):
        await wait_until(functools.partial(settled, db, "a", 2, "rejected"), "both kept as not taken", clock=clock)
        await loops(up)
        assert p.state.meter_calls == [] and "metering" not in p.state.requests
        listed = await meter_rejections(conn, target="a", limit=10)
        assert {(r.ser_no, r.status, r.reason) for r in listed} == {("M1", 0, "not_taken"), ("M2", 0, "not_taken")}
        assert "centerMeteringDataUrl" in listed[0].message
        assert count(registry, "nhjc_uplink_meter_rejected_total", target="a", reason="not_taken") == 2
    # The command lists them as a second table after the (empty) records one.
    r = nhjc(db, "uplink", "rejected")
    assert r.returncode == 0, r.stderr
    records, meters = r.stdout.split("\n\n")
    assert len(records.splitlines()) == 1  # the header only: no record was refused
    header, *lines = meters.splitlines()
    assert header.split("\t") == ["target", "enterprise", "serNo", "kind", "ref", "rejected", "status", "reason",
                                   "message"]
    assert sorted(tuple(line.split("\t")[:5]) + tuple(line.split("\t")[6:8]) for line in lines) == [
        ("a", E1, "M1", "gauge", "-", "0", "not_taken"), ("a", E1, "M2", "gauge", "-", "0", "not_taken")]


async def test_shandong_takes_no_instruments(db: str, conn: asyncpg.Connection) -> None:
    await two_meters(conn)
    clock = FakeClock(NOW)
    async with MockPlatform(name="s", flavour="shandong") as p, \
            uplink_for(db, {"s": target(p.url, flavour="shandong")}, clock) as up, running(up):
        await loops(up, 3)
        assert await rows(db, "s") == {} and p.state.meter_calls == []


async def test_yunnan_token_refused_registers_again_and_sends_once(db: str, conn: asyncpg.Connection) -> None:
    await two_meters(conn)
    clock, registry = FakeClock(NOW), CollectorRegistry()
    async with MockPlatform(name="y", flavour="yunnan") as p, \
            uplink_for(db, {"y": target(p.url, flavour="yunnan")}, clock, registry) as up, running(up):
        await wait_until(functools.partial(settled, db, "y", 2), "two instruments added", clock=clock)
        index = (await rows(db, "y"))[(E1, "M1", "gauge", "")]["data_index"]
        p.expire_tokens()  # the token the uplink holds is refused from now on
        await add_meter(conn, E1, "M1", data_codes=[POWER], install_place="2# 配电室")
        await wait_until(lambda: _has(p, ("gauge", "update", "M1", index)), "the update, with a new token",
                         clock=clock)
        await wait_until(functools.partial(settled, db, "y", 2), "the update acknowledged", clock=clock)
        assert p.state.tokens_issued == 2
        assert count(registry, "nhjc_uplink_refreshes_total", target="y", reason="token_refused") == 1
        assert [c for c in calls(p) if c[1] == "update"] == [("gauge", "update", "M1", index)]


@pytest.mark.parametrize(("retired", "data_index", "expected"), [
    (False, None, "add"), (False, "G1", "update"), (True, "G1", "delete"), (True, None, None)])
async def test_yunnan_operation(retired: bool, data_index: str | None, expected: str | None) -> None:
    assert operation("gauge", retired=retired, data_index=data_index) == expected
    assert operation("verify", retired=retired, data_index=data_index) is None


def _file(*entries: dict[str, Any]) -> bytes:
    return json.dumps(list(entries), ensure_ascii=False).encode()


_M1 = {"enterprise": E1, "serNo": "M1", "meterName": "1# 主变进线电能表", "meterLevel": 1, "dataCode": POWER,
       "precisionLevel": "0.5S", "alignState": "verified", "alignCycle": 12, "lastAlignDate": "2026-03-01",
       "nextAlignDate": "2027-02-28", "alignOrg": "云南省计量院"}
_M2 = {"enterprise": E1, "serNo": "M2", "meterName": "天然气总表", "meterLevel": 1, "dataCode": GAS,
       "alignState": "none"}


async def test_through_the_registry_loader(db: str, conn: asyncpg.Connection) -> None:
    """The registry's own loader writes the tables; Yunnan gets what each load changed."""
    await upsert_meters(conn, parse_meters_file_bytes(_file(_M1, _M2)), "first.json")
    clock = FakeClock(NOW)
    async with MockPlatform(name="y", flavour="yunnan") as p, \
            uplink_for(db, {"y": target(p.url, flavour="yunnan")}, clock) as up, running(up):
        await wait_until(functools.partial(settled, db, "y", 3), "two instruments and M1's period", clock=clock)
        index = {k[1]: r["data_index"] for k, r in (await rows(db, "y")).items() if k[2] == "gauge"}
        assert calls(p) == [("gauge", "add", "M1", None), ("gauge", "add", "M2", None),
                            ("gauge_verify", None, "M1", index["M1"])]
        # Verified again, and M2 replaced by M3: one load, all or nothing.
        m1 = {**_M1, "lastAlignDate": "2027-02-20", "nextAlignDate": "2028-02-19"}
        m3 = {**_M2, "serNo": "M3", "replaces": {"serNo": "M2", "time": "2026-11-20T10:00:00+08:00",
                                                 "oldFinal": 1234.5, "newInitial": 0.25}}
        await upsert_meters(conn, parse_meters_file_bytes(_file(m1, m3)), "second.json")
        await wait_until(functools.partial(settled, db, "y", 6), "what the second load changed", clock=clock)
        await loops(up)
        index["M3"] = (await rows(db, "y"))[(E1, "M3", "gauge", "")]["data_index"]
        assert sorted(calls(p)[3:]) == [("gauge", "add", "M3", None), ("gauge", "update", "M1", index["M1"]),
                                        ("gauge_replace", None, "M3", index["M3"]),
                                        ("gauge_verify", None, "M1", index["M1"])]
        assert set(p.state.gauges[E1]) == {index["M1"], index["M2"], index["M3"]}  # replaced, not deleted
        assert p.state.gauges[E1][index["M1"]]["nextAlignDate"] == "2028-02-19"


class MeterFake(FakeAdapter):
    """The in-memory platform, taking instrument records; a bug met with one enterprise."""

    meter_kinds: frozenset[MeterKind] = frozenset({"gauge"})

    def __init__(self, broken: str) -> None:
        super().__init__()
        self.broken = broken
        self.meters: list[tuple[str, str]] = []

    async def send_meter(self, enterprise: Enterprise, registration: Registration, call: MeterCall) -> MeterReply:
        if enterprise.code == self.broken:
            raise KeyError("a bug met with this enterprise's instruments")
        self.meters.append((enterprise.code, call.ser_no))
        return MeterReply(data_index=f"i-{call.ser_no}")


async def test_a_bug_with_one_enterprise_costs_that_enterprise_alone(db: str, conn: asyncpg.Connection) -> None:
    await two_meters(conn)
    await two_meters(conn, E2)
    clock, registry, fake = FakeClock(NOW), CollectorRegistry(), MeterFake(broken=E2)
    async with fake_target(db, fake, clock, registry) as stage:
        await stage.step()
        found = await rows(db, "p")
        assert sorted(fake.meters) == [(E1, "M1"), (E1, "M2")]
        assert {k[1]: r["state"] for k, r in found.items() if k[0] == E1} == {"M1": "acked", "M2": "acked"}
        broken = [r for k, r in found.items() if k[0] == E2]
        assert len(broken) == 2 and all(r["state"] == "pending" and "internal" in r["last_error"] for r in broken)
        assert count(registry, "nhjc_uplink_meter_retries_total", target="p", reason="internal") == 2
