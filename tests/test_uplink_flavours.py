"""Each flavour's adapter alone, over real HTTP against small aiohttp handlers: the
exact wire format of register, configure and write; Yunnan's token and its renewal;
and how every kind of reply is classified."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from pydantic import SecretStr

from config.settings import TargetSettings
from uplink.adapters import (
    Adapter,
    Enterprise,
    Registration,
    enterprise_from_registry,
    make_adapter,
)
from uplink.errors import RefreshError, RejectedError, RetryableError
from uplink.records import ItemConfig, Record
from uplink.sm4 import yunnan_pin

pytestmark = pytest.mark.asyncio(loop_scope="session")

TZ = ZoneInfo("Asia/Shanghai")
CODE = "91340200MA2N0XYZ0A"
KEY_HEX = "0123456789abcdeffedcba9876543210"
SECRET = "S3cret-from-Yunnan-platform"
PIN = "123456"
ENT = Enterprise(code=CODE, name="芜湖测试钢铁有限公司", region="340207",
                 profile={"address": "芜湖市鸠江区", "industryCode": "C3110", "energyRespName": "张三"},
                 pin=SecretStr(PIN), secret=SecretStr(SECRET))
T0 = datetime(2024, 3, 1, 0, 0, tzinfo=UTC)   # 08:00 in Shanghai
UP = datetime(2024, 3, 1, 1, 2, 3, tzinfo=UTC)
REC = Record(enterprise=CODE, code="01-02-0304-023400-80", data_code="01-02-0304-023400-80", stat_type=0,
             period_start=T0, value=12.5, valid=True, scope=4, input_type=1, revision=1)
ITEM = ItemConfig("01-02-0304-023400-80", "A 相电流", "3400", 4, 1, "cumulative", 0.0, 40.0)

Handler = Callable[[web.Request, dict[str, Any]], Awaitable[web.Response]]


@dataclass
class Platform:
    """An aiohttp app recording every request; routes answer from ``replies``."""

    url: str = ""
    seen: list[tuple[str, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    replies: dict[str, list[Any]] = field(default_factory=dict)

    def answer(self, path: str, *replies: Any) -> None:
        self.replies[path] = list(replies)

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [b for p, b, _ in self.seen if p == path]


@pytest.fixture
async def platform() -> AsyncIterator[Platform]:
    p = Platform()

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        p.seen.append((request.path, body, dict(request.headers)))
        queue = p.replies.get(request.path)
        if not queue:
            return web.json_response({"responseCode": "9", "responseMessage": "no such path"}, status=404)
        reply = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(reply, web.Response):
            return reply
        if callable(reply):
            return web.json_response(reply(body))
        return web.json_response(reply)

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    p.url = f"http://127.0.0.1:{port}"
    yield p
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        yield s


def adapter(platform: Platform, session: aiohttp.ClientSession, flavour: str,
            clock: Callable[[], float] | None = None, **kw: Any) -> Adapter:
    settings = TargetSettings.model_validate({"url": platform.url + "/api", "flavour": flavour, **kw})
    if clock is None:
        return make_adapter(settings, session, tz=TZ)
    return make_adapter(settings, session, tz=TZ, clock=clock)


def gbt_register_reply(platform: Platform) -> dict[str, Any]:
    return {"responseCode": "0", "responseMessage": "RECEIVE SUCCESS", "deviceId": "a" * 32,
            "uploadTime": "01:30:00", "centerInfoURL": platform.url + "/info",
            "centerDataURL": platform.url + "/data", "loadDicVersionURL": platform.url + "/dic",
            "centerMeteringDataUrl": platform.url + "/meter",
            "centerInfoDownloadURL": platform.url + "/down"}


# -- gbt37947 ---------------------------------------------------------------------------

async def test_gbt37947_wire(platform: Platform, session: aiohttp.ClientSession) -> None:
    platform.answer("/api/register", gbt_register_reply(platform))
    platform.answer("/info", {"responseCode": "0"})
    platform.answer("/data", {"responseCode": "0"})
    platform.answer("/dic", {"responseCode": "0", "regVersion": "3", "dicVersion": "17"})
    a = adapter(platform, session, "gbt37947", collect_system_name="MES", config_stat_types=[0, 1])
    reg = await a.register(ENT)
    assert platform.bodies("/api/register") == [{"enterpriseCode": CODE, "region": "340207"}]
    assert (reg.device_id, reg.info_url, reg.data_url, reg.dic_version_url, reg.metering_url) == (
        "a" * 32, platform.url + "/info", platform.url + "/data", platform.url + "/dic", platform.url + "/meter")
    assert reg.url("centerInfoDownloadURL") == platform.url + "/down"
    assert reg.upload_time is not None and reg.upload_time.isoformat() == "01:30:00"

    await a.configure(ENT, reg, [ITEM])
    (config,) = platform.bodies("/info")
    assert config["enterpriseCode"] == CODE and config["deviceId"] == "a" * 32
    assert config["enterprise"] == {"address": "芜湖市鸠江区", "industryCode": "C3110", "energyRespName": "张三",
                                    "code": CODE, "corporationCode": CODE, "name": "芜湖测试钢铁有限公司",
                                    "regionCode": "340207"}
    parts = {"processCode": "01", "processUnitCode": "02", "equipmentCode": "03", "equipmentUnitCode": "04",
             "energyClassCode": "02", "energyTypeCode": "3400", "dataUsageCode": "80"}
    common = {"dataCode": ITEM.data_code, "name": "A 相电流", "scope": 4, "inputType": 1,
              "collectSystemName": "MES", **parts}
    assert config["collectItemConfig"] == [
        {**common, "statType": 0, "dataValueMax": 10.0, "dataValueMin": 0.0},
        {**common, "statType": 1}]

    await a.write(ENT, reg, [REC], UP)
    assert platform.bodies("/data") == [{"enterpriseCode": CODE, "deviceId": "a" * 32, "data": [{
        "dataCode": REC.data_code, "dataValue": 12.5, "inputType": 1, "statType": 0,
        "statDate": "2024-03-01 08:00:00", "uploadDate": "2024-03-01 09:02:03", "scope": 4, "valid": True}]}]
    assert await a.dictionary_version(ENT, reg) == "3/17"
    assert platform.bodies("/dic") == [{"deviceId": "a" * 32}]
    assert await a.dictionary_version(ENT, Registration(device_id="x")) is None


async def test_gbt37947_register_tolerates_absent_urls(platform: Platform, session: aiohttp.ClientSession) -> None:
    reply = gbt_register_reply(platform)
    for k in ("loadDicVersionURL", "centerMeteringDataUrl", "centerInfoDownloadURL"):
        del reply[k]
    platform.answer("/api/register", reply)
    reg = await adapter(platform, session, "gbt37947").register(ENT)
    assert (reg.dic_version_url, reg.metering_url, reg.other_urls) == (None, None, ())
    del reply["centerInfoURL"]
    platform.answer("/api/register", reply)
    with pytest.raises(RetryableError) as e:
        await adapter(platform, session, "gbt37947").register(ENT)
    assert e.value.reason == "bad_reply"


async def test_enterprise_from_registry() -> None:
    s = TargetSettings.model_validate({"url": "http://x", "flavour": "yunnan", "region": "340000",
                                       "pin": "999999", "secret": "t" * 16})
    bare = enterprise_from_registry(CODE, s, "yn")
    assert (bare.name, bare.region, bare.pin, bare.secret) == (CODE, "340000", s.pin, s.secret)
    e = enterprise_from_registry(CODE, s, "yn", name="甲", region="340207", profile={"phone": "1"},
                                 targets={"yn": {"region": "530102"}}, secrets={"yn": {"pin": "1234"}})
    assert (e.name, e.region, dict(e.profile)) == ("甲", "530102", {"phone": "1"})
    assert e.pin is not None and e.pin.get_secret_value() == "1234" and e.secret == s.secret
    assert PIN not in repr(ENT) and SECRET not in repr(ENT)
    no_region = TargetSettings.model_validate({"url": "http://x"})
    assert enterprise_from_registry(CODE, no_region, "a").region == CODE[2:8]


# -- shandong ---------------------------------------------------------------------------

def sm4_ecb_decrypt(key: bytes, hex_text: str) -> str:
    """The test's own decryption with cryptography's decryptor (not uplink.sm4)."""
    assert hex_text == hex_text.lower()
    dec = Cipher(algorithms.SM4(key), modes.ECB()).decryptor()
    plain = dec.update(bytes.fromhex(hex_text)) + dec.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return (unpadder.update(plain) + unpadder.finalize()).decode()


async def test_shandong_wire(platform: Platform, session: aiohttp.ClientSession) -> None:
    platform.answer("/api/enterprise/register", {
        "responseCode": "0", "deviceId": "b" * 32, "centerDataURL": platform.url + "/sd/data",
        "loadDicVersionURL": platform.url + "/sd/dic", "centerInfoDownloadURL": platform.url + "/sd/down",
        "downloadBaseDataURL": platform.url + "/sd/base", "uploadTime": "02:00:00", "secretKey": KEY_HEX})
    platform.answer("/sd/data", {"responseCode": "0"})
    a = adapter(platform, session, "shandong")
    assert a.records_per_call == 1
    reg = await a.register(ENT)
    assert platform.bodies("/api/enterprise/register") == [{"enterpriseCode": CODE, "region": "340207"}]
    assert reg.secret_key == bytes.fromhex(KEY_HEX) and reg.info_url is None
    assert reg.url("downloadBaseDataURL") == platform.url + "/sd/base"
    assert KEY_HEX not in repr(reg)
    await a.configure(ENT, reg, [ITEM])
    assert [p for p, _, _ in platform.seen] == ["/api/enterprise/register"]  # no configuration call

    small = dataclasses.replace(REC, value=1e-05, valid=False)
    for rec in (REC, small):
        await a.write(ENT, reg, [rec], UP)
    first, second = platform.bodies("/sd/data")
    assert set(first) == {"deviceId", "enterpriseCode", "data"}
    assert (first["deviceId"], first["enterpriseCode"]) == ("b" * 32, CODE)
    key = bytes.fromhex(KEY_HEX)
    clear = {k: sm4_ecb_decrypt(key, v) for k, v in first["data"][0].items()}
    assert clear == {"dataCode": REC.data_code, "dataValue": "12.5", "inputType": "1", "statType": "0",
                     "statDate": "2024-03-01 08:00:00", "uploadDate": "2024-03-01 09:02:03", "scope": "4",
                     "valid": "0"}
    clear2 = {k: sm4_ecb_decrypt(key, v) for k, v in second["data"][0].items()}
    assert (clear2["dataValue"], clear2["valid"]) == ("0.00001", "1")
    with pytest.raises(ValueError):
        await a.write(ENT, reg, [REC, REC], UP)


async def test_shandong_valid_style_and_bad_key(platform: Platform, session: aiohttp.ClientSession) -> None:
    platform.answer("/api/enterprise/register", {"responseCode": "0", "deviceId": "b" * 32,
                                                 "centerDataURL": platform.url + "/sd/data", "secretKey": KEY_HEX})
    platform.answer("/sd/data", {"responseCode": "0"})
    a = adapter(platform, session, "shandong", valid_style="one_valid")
    reg = await a.register(ENT)
    await a.write(ENT, reg, [REC], UP)
    (body,) = platform.bodies("/sd/data")
    assert sm4_ecb_decrypt(bytes.fromhex(KEY_HEX), body["data"][0]["valid"]) == "1"
    platform.answer("/api/enterprise/register", {"responseCode": "0", "deviceId": "b" * 32,
                                                 "centerDataURL": platform.url + "/sd/data", "secretKey": "xyz"})
    with pytest.raises(RetryableError) as e:
        await a.register(ENT)
    assert e.value.reason == "bad_reply"


# -- yunnan -----------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ak_reply(token: str, expires_in: float = 7200) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def reply(body: dict[str, Any]) -> dict[str, Any]:
        if yunnan_pin(SECRET, body["enterpriseCode"], body["password"]) != PIN:
            return {"responseCode": "401", "responseMessage": "密码错误"}
        return {"responseCode": "200", "responseMessage": "success", "data": {
            "token": token, "akExpiresIn": expires_in, "akValidAt": "2024-03-01 10:00:00 000",
            "enterpriseUploadTime": "03:00:00", "platformURL": ""}}
    return reply


async def test_yunnan_token_and_data(platform: Platform, session: aiohttp.ClientSession) -> None:
    platform.answer("/api/requestAK", ak_reply("tok-1"))
    platform.answer("/api/uploadData", {"responseCode": "200"})
    clock = Clock()
    a = adapter(platform, session, "yunnan", clock=clock)
    reg = await a.register(ENT)
    (ak,) = platform.bodies("/api/requestAK")
    assert set(ak) == {"enterpriseCode", "password"} and ak["enterpriseCode"] == CODE
    # The test's own CBC decryption: key = the secret's first 16 characters, IV = the credit code's.
    dec = Cipher(algorithms.SM4(SECRET[:16].encode()), modes.CBC(CODE[:16].encode())).decryptor()
    assert dec.update(bytes.fromhex(ak["password"])) + dec.finalize() == b"06123456FFFFFFFF"
    assert (reg.token, reg.token_expires_in, reg.data_url) == ("tok-1", 7200, platform.url + "/api/uploadData")
    assert reg.upload_time is not None and reg.upload_time.isoformat() == "03:00:00"
    assert reg.token_valid_at == datetime(2024, 3, 1, 10, 0, tzinfo=TZ)
    assert "tok-1" not in repr(reg)
    await a.configure(ENT, reg, [ITEM])
    assert await a.dictionary_version(ENT, reg) is None

    await a.write(ENT, reg, [REC], UP)
    (_path, body, headers), = [s for s in platform.seen if s[0] == "/api/uploadData"]
    assert headers["Authorization"] == "Bearer tok-1"
    assert body == {"enterpriseCode": CODE, "data": [{
        "dataCode": REC.data_code, "dataValue": 12.5, "inputType": 1, "statType": 0,
        "statDate": "2024-03-01 08:00:00", "uploadDate": "2024-03-01 09:02:03", "scope": 4, "valid": True}]}

    # Renewed before akExpiresIn runs out: 7200 s less a minute, not after.
    platform.answer("/api/requestAK", ak_reply("tok-2"))
    clock.now += 7200 - 61
    await a.write(ENT, reg, [REC], UP)
    assert len(platform.bodies("/api/requestAK")) == 1
    clock.now += 2
    await a.write(ENT, reg, [REC], UP)
    await a.write(ENT, reg, [REC], UP)
    assert len(platform.bodies("/api/requestAK")) == 2
    tokens = [h["Authorization"] for p, _, h in platform.seen if p == "/api/uploadData"]
    assert tokens == ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2", "Bearer tok-2"]


async def test_yunnan_refusals(platform: Platform, session: aiohttp.ClientSession) -> None:
    platform.answer("/api/requestAK", ak_reply("tok-1"))
    a = adapter(platform, session, "yunnan", clock=Clock())
    wrong = Enterprise(code=CODE, name="x", region="530102", pin=SecretStr("654321"), secret=SecretStr(SECRET))
    with pytest.raises(RejectedError) as rej:
        await a.register(wrong)
    assert rej.value.reason == "unknown_code" and "654321" not in str(rej.value)
    with pytest.raises(RetryableError) as e:
        await a.register(Enterprise(code=CODE, name="x", region="530102"))
    assert e.value.reason == "register"
    reg = await a.register(ENT)
    platform.answer("/api/uploadData", web.json_response({"responseCode": "401"}, status=401))
    with pytest.raises(RefreshError) as r:
        await a.write(ENT, reg, [REC], UP)
    assert (r.value.refresh, r.value.reason) == ("register", "token_refused")


# -- every reply classified -------------------------------------------------------------

@pytest.mark.parametrize(("reply", "status", "expected"), [
    ({"responseCode": "1", "responseMessage": "解密失败！"}, 200, ("refresh", "decrypt_failed")),
    ({"responseCode": "1", "responseMessage": "序列号与企业统一社会信用代码不符"}, 200, ("refresh", "device_mismatch")),
    ({"responseCode": "1", "responseMessage": "系统繁忙，请稍后再试"}, 200, ("retry", "busy")),
    ({"responseCode": "1", "responseMessage": "数据格式错误"}, 200, ("rejected", "unknown_code")),
    ({"responseCode": "7"}, 200, ("rejected", "unknown_code")),
    ({"responseCode": "0"}, 400, ("rejected", "http_4xx")),
    ({"responseCode": "0"}, 503, ("retry", "http_5xx")),
    ({"responseCode": "0"}, 429, ("retry", "http_429")),
    ("not an object", 200, ("retry", "bad_reply")),
])
async def test_reply_classified(platform: Platform, session: aiohttp.ClientSession, reply: Any, status: int,
                                expected: tuple[str, str]) -> None:
    platform.answer("/api/register", gbt_register_reply(platform))
    platform.answer("/data", web.Response(body=json.dumps(reply, ensure_ascii=False).encode(), status=status,
                                          content_type="application/json"))
    a = adapter(platform, session, "gbt37947")
    reg = await a.register(ENT)
    with pytest.raises((RetryableError, RefreshError, RejectedError)) as e:
        await a.write(ENT, reg, [REC], UP)
    err = e.value
    assert isinstance(err, RetryableError | RefreshError | RejectedError)
    kind = {RetryableError: "retry", RefreshError: "refresh", RejectedError: "rejected"}[type(err)]
    assert (kind, err.reason) == expected
    assert len(platform.bodies("/data")) == 1  # never resent by the adapter


async def test_success_code_per_flavour(platform: Platform, session: aiohttp.ClientSession) -> None:
    """"200" is success on Yunnan only; "0" there is an unknown code, a rejection."""
    platform.answer("/api/requestAK", ak_reply("tok"))
    platform.answer("/api/uploadData", {"responseCode": "0"})
    a = adapter(platform, session, "yunnan", clock=Clock())
    with pytest.raises(RejectedError):
        await a.write(ENT, await a.register(ENT), [REC], UP)
    platform.answer("/api/register", gbt_register_reply(platform))
    platform.answer("/data", {"responseCode": "200"})
    g = adapter(platform, session, "gbt37947")
    with pytest.raises(RejectedError):
        await g.write(ENT, await g.register(ENT), [REC], UP)


async def test_refresh_exhausted_is_a_rejection() -> None:
    exc = RefreshError("register", "decrypt_failed", "responseCode '1': 解密失败！")
    rej = exc.exhausted()
    assert (rej.reason, rej.status) == ("refresh_failed", 200) and "解密失败" in rej.message
