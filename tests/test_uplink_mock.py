"""The mock platform over real HTTP: what it accepts, what it refuses and why, how it
counts resends, and how it can be told to misbehave."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.services import ROOT
from tests.test_uplink_support import E1, E2, GAS, POWER, control, get_json
from tools.platform.mock import MockPlatform
from tools.platform.targets import PIN, SECRET
from uplink.sm4 import encrypt_field, yunnan_password

# The fixtures live in the session's loop (asyncio_default_fixture_loop_scope); so do the tests.
pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
async def platform() -> AsyncIterator[MockPlatform]:
    async with MockPlatform(name="test") as p:
        yield p


def parts(code: str) -> dict[str, str]:
    pp, uu, eq, ce, dd = code.split("-")
    return {"processCode": pp, "processUnitCode": uu, "equipmentCode": eq[:2], "equipmentUnitCode": eq[2:],
            "energyClassCode": ce[:2], "energyTypeCode": ce[2:], "dataUsageCode": dd}


def profile(enterprise: str) -> dict[str, Any]:
    return {"code": enterprise, "corporationCode": enterprise, "name": "测试企业", "regionCode": "340100",
            "address": "合肥市"}


async def post(url: str, body: Any, **kw: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.post(url, json=body, **kw) as r:
        return r.status, await r.json(content_type=None)


def rec(**over: Any) -> dict[str, Any]:
    r = {"dataCode": POWER, "dataValue": 1234.5, "inputType": 4, "statType": 0,
         "statDate": "2026-11-28 12:00:00", "uploadDate": "2026-11-28 12:16:02", "scope": 2, "valid": True}
    r.update(over)
    return r


async def registered(p: MockPlatform, enterprise: str = E1) -> dict[str, Any]:
    status, reply = await post(p.url + "/register", {"enterpriseCode": enterprise, "region": "340100"})
    assert status == 200 and reply["responseCode"] == "0", reply
    items = [{"dataCode": POWER, "name": "电", **parts(POWER), "scope": 2, "inputType": 4,
              "statType": 0, "dataValueMax": 500.0, "dataValueMin": 0, "collectSystemName": "nhjc"},
             {"dataCode": GAS, "name": "气", **parts(GAS), "scope": 1, "inputType": 4,
              "statType": 0, "collectSystemName": "nhjc"}]
    status, ok = await post(reply["centerInfoURL"], {"enterpriseCode": enterprise, "deviceId": reply["deviceId"],
                                                      "collectItemConfig": items, "enterprise": profile(enterprise)})
    assert status == 200 and ok["responseCode"] == "0", ok
    assert isinstance(reply, dict)
    return reply


async def test_register_gives_device_urls_and_upload_time(platform: MockPlatform) -> None:
    status, reply = await post(platform.url + "/register", {"enterpriseCode": E1, "region": "340100"})
    assert status == 200
    assert reply["responseCode"] == "0" and reply["responseMessage"] == "RECEIVE SUCCESS"
    assert reply["deviceId"] and reply["uploadTime"] == "00:10:00"
    assert reply["centerInfoURL"] == platform.url + "/config"
    assert reply["centerDataURL"] == platform.url + "/data"
    assert len(reply["deviceId"]) == 32 and int(reply["deviceId"], 16) >= 0
    assert (reply["loadDicVersionURL"], reply["centerMeteringDataUrl"]) == (
        platform.url + "/dicVersion", platform.url + "/metering")
    assert (reply["centerInfoDownloadURL"], reply["downloadBaseDataURL"]) == (
        platform.url + "/download/config", platform.url + "/download/base")
    for bad in ({"enterpriseCode": E1[:-1] + "0", "region": "340100"}, {"enterpriseCode": E1, "region": "34"}):
        status, reply = await post(platform.url + "/register", bad)
        assert status == 400 and reply["responseMessage"]


async def test_data_is_stored_once_and_resends_counted(platform: MockPlatform) -> None:
    reg = await registered(platform)
    batch = {"enterpriseCode": E1, "deviceId": reg["deviceId"],
             "data": [rec(), rec(dataCode=GAS, scope=1, statType=1, statDate="2026-11-27 00:00:00")]}
    for _ in range(2):
        status, reply = await post(reg["centerDataURL"], batch)
        assert (status, reply["responseCode"]) == (200, "0")
    batch["data"] = [rec(dataValue=1300.0)]  # a corrected value for the same period
    assert (await post(reg["centerDataURL"], batch))[0] == 200
    stats = await get_json(platform.url, "/_stats")
    assert (stats["records"], stats["received"], stats["resends"], stats["changed"]) == (2, 5, 3, 1)
    records = await get_json(platform.url, "/_records")
    power = next(r for r in records if r["dataCode"] == POWER)
    assert power["dataValue"] == 1300.0 and power["count"] == 3


async def test_a_record_in_two_requests_at_once_is_an_overlap(platform: MockPlatform) -> None:
    # Two senders at work on one period at the same time: what ownership must prevent.
    reg = await registered(platform)
    batch = {"enterpriseCode": E1, "deviceId": reg["deviceId"], "data": [rec()]}
    await post(reg["centerDataURL"], batch)
    await post(reg["centerDataURL"], batch)  # a resend after the reply: no overlap
    assert (await get_json(platform.url, "/_stats"))["overlaps"] == 0
    await control(platform.url, slow_s=0.3)
    other = {**batch, "data": [rec(dataCode=GAS, scope=1, statType=1, statDate="2026-11-27 00:00:00")]}
    replies = await asyncio.gather(post(reg["centerDataURL"], batch), post(reg["centerDataURL"], batch),
                                   post(reg["centerDataURL"], other))
    assert [status for status, _ in replies] == [200, 200, 200]
    stats = await get_json(platform.url, "/_stats")
    assert stats["overlaps"] == 1 and stats["resends"] == 3


@pytest.mark.parametrize(("change", "named"), [
    ({"dataCode": "01-00-0000-2330-01"}, "dataCode"),
    ({"dataCode": "01-00-0000-023300-01", "scope": 1}, "scope 1"),
    ({"statType": 4}, "statType"),
    ({"statType": "0"}, "statType"),
    ({"statDate": "2026-11-28 12:07:00"}, "not the start of a 15-minute period"),
    ({"statDate": "2026-11-28T12:00:00"}, "statDate"),
    ({"statType": 1, "statDate": "2026-11-28 12:00:00"}, "not the start of a day"),
    ({"statType": 2, "statDate": "2026-11-02 00:00:00"}, "not the start of a month"),
    ({"statType": 3, "statDate": "2026-02-01 00:00:00"}, "not the start of a year"),
    ({"uploadDate": "2026/11/28 12:16:02"}, "uploadDate"),
    ({"uploadDate": "2026-11-28 12:10:00"}, "before the period"),
    ({"dataValue": "12.5"}, "dataValue"),
    ({"dataValue": True}, "dataValue"),
    ({"inputType": 6}, "inputType"),
    ({"valid": "yes"}, "valid"),
    ({"scope": 5}, "scope"),
])
async def test_bad_records_are_refused_whole_batch_with_the_reason(
        platform: MockPlatform, change: dict[str, Any], named: str) -> None:
    reg = await registered(platform)
    batch = {"enterpriseCode": E1, "deviceId": reg["deviceId"], "data": [rec(dataCode=GAS, scope=1), rec(**change)]}
    status, reply = await post(reg["centerDataURL"], batch)
    assert status == 400, reply
    assert reply["responseMessage"].startswith("data[1]: ") and named in reply["responseMessage"]
    stats = await get_json(platform.url, "/_stats")
    assert stats["records"] == 0 and stats["rejected_requests"] == 1  # the good one was not kept either


async def test_not_a_number_and_missing_fields(platform: MockPlatform) -> None:
    reg = await registered(platform)
    raw = (f'{{"enterpriseCode": "{E1}", "deviceId": "{reg["deviceId"]}",'
           f' "data": [{{"dataCode": "{POWER}", "dataValue": NaN}}]}}')
    async with aiohttp.ClientSession() as s, s.post(reg["centerDataURL"], data=raw) as r:
        assert r.status == 400 and "NaN" in (await r.json())["responseMessage"]
    status, reply = await post(reg["centerDataURL"], {"enterpriseCode": E1, "deviceId": reg["deviceId"],
                                                       "data": [{"dataCode": POWER}]})
    assert status == 400 and "missing dataValue" in reply["responseMessage"]


async def test_data_needs_registration_and_configuration(platform: MockPlatform) -> None:
    status, reply = await post(platform.url + "/data", {"enterpriseCode": E2, "deviceId": "nope", "data": [rec()]})
    # unknown device: the live platforms' words, which ask for a new registration
    assert (status, reply) == (200, {"responseCode": "1", "responseMessage": "序列号与企业统一社会信用代码不符"})
    _, reg = await post(platform.url + "/register", {"enterpriseCode": E2, "region": "340200"})
    status, reply = await post(reg["centerDataURL"], {"enterpriseCode": E2, "deviceId": reg["deviceId"],
                                                      "data": [rec()]})
    assert status == 200 and reply["responseCode"] == "3" and "not configured" in reply["responseMessage"]


async def test_configuration_checks_the_profile_and_code_parts(platform: MockPlatform) -> None:
    _, reg = await post(platform.url + "/register", {"enterpriseCode": E1, "region": "340100"})
    item = {"dataCode": POWER, "name": "电", **parts(POWER), "scope": 2, "inputType": 4, "statType": 0,
            "collectSystemName": "nhjc"}
    body = {"enterpriseCode": E1, "deviceId": reg["deviceId"], "collectItemConfig": [item],
            "enterprise": profile(E1)}
    for change, named in (({"enterprise": None}, "enterprise is not"),
                          ({"enterprise": {**profile(E1), "code": E2, "corporationCode": E2}}, "enterprise.code"),
                          ({"enterprise": {**profile(E1), "regionCode": "34"}}, "regionCode"),
                          ({"collectItemConfig": [{**item, "equipmentCode": "01"}]}, "equipmentCode"),
                          ({"collectItemConfig": [{**item, "collectSystemName": ""}]}, "collectSystemName")):
        status, reply = await post(reg["centerInfoURL"], {**body, **change})
        assert status == 400 and named in reply["responseMessage"], (change, reply)
    assert (await post(reg["centerInfoURL"], body))[1]["responseCode"] == "0"
    configs = await get_json(platform.url, "/_configs")
    assert configs[E1]["enterprise"]["address"] == "合肥市"


async def test_dictionary_version_changes_through_control(platform: MockPlatform) -> None:
    _, reg = await post(platform.url + "/register", {"enterpriseCode": E1, "region": "340100"})
    status, reply = await post(reg["loadDicVersionURL"], {"deviceId": reg["deviceId"]})
    assert (status, reply["responseCode"], reply["regVersion"], reply["dicVersion"]) == (200, "0", "1", "1")
    await control(platform.url, dic_version="2")
    assert (await post(reg["loadDicVersionURL"], {"deviceId": reg["deviceId"]}))[1]["dicVersion"] == "2"
    assert (await post(reg["loadDicVersionURL"], {"deviceId": "nope"}))[0] == 400


async def test_shandong_over_http() -> None:
    async with MockPlatform(name="sd", flavour="shandong") as p:
        status, reg = await post(p.url + "/enterprise/register", {"enterpriseCode": E1, "region": "340100"})
        assert (status, reg["responseCode"]) == (200, "0") and "centerInfoURL" not in reg
        assert reg["centerDataURL"] == p.url + "/enterprise/uploadData" and len(reg["secretKey"]) == 32
        key = bytes.fromhex(reg["secretKey"])
        fields = {k: encrypt_field(key, str(v).lower() if isinstance(v, bool) else str(v))
                  for k, v in rec(valid="0").items()}
        body = {"deviceId": reg["deviceId"], "enterpriseCode": E1, "data": [fields]}
        assert (await post(reg["centerDataURL"], body))[1]["responseCode"] == "0"
        (stored,) = await get_json(p.url, "/_records")
        assert stored == {**rec(valid="0"), "enterpriseCode": E1, "count": 1, "changed": 0}
        decrypt_failed = {"responseCode": "1", "responseMessage": "解密失败！"}
        for broken in ({**fields, "dataValue": "zz"}, {**fields, "scope": fields["scope"][:-2]}):
            assert await post(reg["centerDataURL"], {**body, "data": [broken]}) == (200, decrypt_failed)
        assert (await post(reg["centerDataURL"], {**body, "data": [fields, fields]}))[0] == 400
        # A rotated key: the old one no longer decrypts; the next registration gives the new one.
        await control(p.url, rotate_keys=True)
        assert await post(reg["centerDataURL"], body) == (200, decrypt_failed)
        _, again = await post(p.url + "/enterprise/register", {"enterpriseCode": E1, "region": "340100"})
        assert again["secretKey"] != reg["secretKey"]
        new = {k: encrypt_field(bytes.fromhex(again["secretKey"]), sm4_text) for k, sm4_text in
               (("dataCode", POWER), ("dataValue", "1300.0"), ("inputType", "4"), ("statType", "0"),
                ("statDate", "2026-11-28 12:00:00"), ("uploadDate", "2026-11-28 12:16:02"), ("scope", "2"),
                ("valid", "0"))}
        assert (await post(reg["centerDataURL"], {**body, "data": [new]}))[1]["responseCode"] == "0"
        assert (await get_json(p.url, "/_stats"))["changed"] == 1


async def test_yunnan_over_http() -> None:
    async with MockPlatform(name="yn", flavour="yunnan", pins={E2: "8642"}) as p:
        def ak(enterprise: str, pin: str) -> dict[str, str]:
            return {"enterpriseCode": enterprise, "password": yunnan_password(SECRET, enterprise, pin)}

        wrong = await post(p.url + "/requestAK", ak(E1, "999999"))
        assert wrong == (401, {"responseCode": "401", "responseMessage": "密码错误"})
        assert (await post(p.url + "/requestAK", ak(E2, PIN)))[1]["responseCode"] == "401"  # E2 has its own PIN
        status, reply = await post(p.url + "/requestAK", ak(E1, PIN))
        assert (status, reply["responseCode"]) == (200, "200")
        assert set(reply["data"]) == {"token", "akExpiresIn", "akValidAt", "enterpriseUploadTime", "platformURL"}
        assert reply["data"]["akExpiresIn"] == 7200
        bearer = {"Authorization": f"Bearer {reply['data']['token']}"}
        body = {"enterpriseCode": E1, "data": [rec()]}
        assert (await post(p.url + "/uploadData", body))[0] == 401
        assert (await post(p.url + "/uploadData", {**body, "enterpriseCode": E2}, headers=bearer))[0] == 401
        status, ok = await post(p.url + "/uploadData", body, headers=bearer)
        assert (status, ok["responseCode"]) == (200, "200")
        await control(p.url, expire_tokens=True)
        assert (await post(p.url + "/uploadData", body, headers=bearer))[0] == 401
        assert (await post(p.url + "/requestAK", ak(E2, "8642")))[1]["responseCode"] == "200"


async def test_injected_failures(platform: MockPlatform) -> None:
    body = {"enterpriseCode": E1, "region": "340100"}
    await control(platform.url, down=True)
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(platform.url + "/register", body)
    await control(platform.url, down=False, fail_status=503)
    assert (await post(platform.url + "/register", body))[0] == 503
    await control(platform.url, fail_status=None, fail_code="7")
    status, reply = await post(platform.url + "/register", body)
    assert (status, reply["responseCode"]) == (200, "7")
    for flag, message in (("busy", "系统繁忙，请稍后再试"), ("mismatch", "序列号与企业统一社会信用代码不符"),
                          ("decrypt_failure", "解密失败！")):
        await control(platform.url, fail_code=None, **{flag: True})
        assert await post(platform.url + "/register", body) == (200, {"responseCode": "1",
                                                                      "responseMessage": message})
        await control(platform.url, **{flag: False})
    await control(platform.url, fail_code=None, slow_s=30.0)
    with pytest.raises(TimeoutError):
        await post(platform.url + "/register", body, timeout=aiohttp.ClientTimeout(total=0.2))
    await control(platform.url, slow_s=0.0)
    assert (await post(platform.url + "/register", body))[0] == 200
    stats = await get_json(platform.url, "/_stats")
    assert stats["failed"] == {"down": 1, "status": 1, "code": 4, "slow": 1}
    async with aiohttp.ClientSession() as s, s.post(platform.url + "/_control", json={"nonsense": 1}) as r:
        assert r.status == 400


async def test_refused_data_code_answers_200(platform: MockPlatform) -> None:
    reg = await registered(platform)
    await control(platform.url, refuse_codes=[GAS])
    batch = {"enterpriseCode": E1, "deviceId": reg["deviceId"], "data": [rec(), rec(dataCode=GAS, scope=1)]}
    status, reply = await post(reg["centerDataURL"], batch)
    assert (status, reply["responseCode"]) == (200, "1") and GAS in reply["responseMessage"]
    assert (await get_json(platform.url, "/_stats"))["records"] == 0


async def test_fail_after_goes_down_after_n_data_requests(platform: MockPlatform) -> None:
    reg = await registered(platform)
    await control(platform.url, fail_after=1)
    batch = {"enterpriseCode": E1, "deviceId": reg["deviceId"], "data": [rec()]}
    assert (await post(reg["centerDataURL"], batch))[0] == 200
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(reg["centerDataURL"], batch)
    assert (await get_json(platform.url, "/_control"))["down"] is True


async def test_command_line_runs_a_platform_until_sigterm() -> None:
    # As a context manager Popen closes its stdout pipe when done (left open, the file
    # object is only closed when collected, with a ResourceWarning).
    with subprocess.Popen(
            [sys.executable, "-m", "tools.platform.mock", "--port", "0", "--name", "cli", "--flavour", "yunnan",
             "--fail-status", "503",
             "--reject-code", POWER],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)}) as proc:
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
            assert line.startswith("mock-platform cli listening on http://127.0.0.1:"), line
            url = line.split()[-1]
            stats = await get_json(url, "/_stats")
            assert (stats["name"], stats["flavour"]) == ("cli", "yunnan")
            assert stats["mode"]["fail_status"] == 503 and stats["mode"]["reject_codes"] == [POWER]
        finally:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 20) == 0
