"""Each flavour's adapter against the mock platform of that flavour, over real HTTP:
what the adapter sends is accepted and stored exactly; Shandong's fields decrypted by
the test itself; a key rotated mid-run; Yunnan's token expiry; every failure reply the
mock can give, classified as :mod:`uplink.errors` says."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from pydantic import SecretStr

from tests.test_uplink_support import E1, E2, control, get_json
from tools.platform.mock import MockPlatform
from tools.platform.targets import PIN, SECRET, TZ, target
from uplink.adapters import Adapter, Enterprise, make_adapter
from uplink.errors import RefreshError, RejectedError, RetryableError
from uplink.records import ItemConfig, Record

pytestmark = pytest.mark.asyncio(loop_scope="session")

CODE = "01-02-0304-023400-80"
ENT = Enterprise(code=E1, name="芜湖测试钢铁有限公司", region="340207", profile={"address": "芜湖市鸠江区"},
                 pin=SecretStr(PIN), secret=SecretStr(SECRET))
T0 = datetime(2024, 3, 1, 0, 0, tzinfo=UTC)   # 08:00 in Shanghai
UP = datetime(2024, 3, 1, 1, 2, 3, tzinfo=UTC)
REC = Record(enterprise=E1, code=CODE, data_code=CODE, stat_type=0, period_start=T0, value=12.5, valid=True,
             scope=4, input_type=1, revision=1)
ITEM = ItemConfig(CODE, "A 相电流", "3400", 4, 1, "cumulative", 0.0, 40.0)
WIRE = {"dataCode": CODE, "dataValue": 12.5, "inputType": 1, "statType": 0, "statDate": "2024-03-01 08:00:00",
        "uploadDate": "2024-03-01 09:02:03", "scope": 4, "enterpriseCode": E1, "count": 1, "changed": 0}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        yield s


def adapter(p: MockPlatform, session: aiohttp.ClientSession, **kw: Any) -> Adapter:
    return make_adapter(target(p.url, flavour=p.flavour, **kw), session, tz=TZ)


async def test_gbt37947_register_configure_write(session: aiohttp.ClientSession) -> None:
    async with MockPlatform(name="ah") as p:
        a = adapter(p, session, collect_system_name="MES", config_stat_types=[0, 1])
        reg = await a.register(ENT)
        assert (reg.info_url, reg.data_url, reg.dic_version_url, reg.metering_url) == (
            p.url + "/config", p.url + "/data", p.url + "/dicVersion", p.url + "/metering")
        assert reg.url("downloadBaseDataURL") == p.url + "/download/base"
        await a.configure(ENT, reg, [ITEM])
        configs = await get_json(p.url, "/_configs")
        assert configs[E1]["enterprise"]["address"] == "芜湖市鸠江区"
        assert [e["statType"] for e in configs[E1]["collectItemConfig"]] == [0, 1]
        await a.write(ENT, reg, [REC], UP)
        assert await get_json(p.url, "/_records") == [{**WIRE, "valid": True}]
        assert await a.dictionary_version(ENT, reg) == "1/1"
        await control(p.url, dic_version="2")
        assert await a.dictionary_version(ENT, reg) == "1/2"


def decrypt(key: bytes, hex_text: str) -> str:
    """The test's own SM4-ECB decryption with cryptography's decryptor."""
    dec = Cipher(algorithms.SM4(key), modes.ECB()).decryptor()
    plain = dec.update(bytes.fromhex(hex_text)) + dec.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return (unpadder.update(plain) + unpadder.finalize()).decode()


async def test_shandong_fields_and_key_rotation() -> None:
    seen: list[dict[str, Any]] = []

    async def trace(s: aiohttp.ClientSession, ctx: Any, params: aiohttp.TraceRequestChunkSentParams) -> None:
        if params.chunk:
            seen.append(json.loads(params.chunk))

    tracing = aiohttp.TraceConfig()
    tracing.on_request_chunk_sent.append(trace)
    async with MockPlatform(name="sd", flavour="shandong") as p, \
            aiohttp.ClientSession(trace_configs=[tracing]) as traced:
        a = adapter(p, traced)
        reg = await a.register(ENT)
        assert reg.info_url is None and reg.secret_key is not None
        await a.configure(ENT, reg, [ITEM])  # nothing to send
        await a.write(ENT, reg, [REC], UP)
        sent = seen[-1]
        assert (sent["deviceId"], sent["enterpriseCode"]) == (reg.device_id, E1)
        clear = {k: decrypt(reg.secret_key, v) for k, v in sent["data"][0].items()}
        assert clear == {"dataCode": CODE, "dataValue": "12.5", "inputType": "1", "statType": "0",
                         "statDate": "2024-03-01 08:00:00", "uploadDate": "2024-03-01 09:02:03", "scope": "4",
                         "valid": "0"}
        assert await get_json(p.url, "/_records") == [{**WIRE, "valid": "0"}]

        # The key changes mid-run: the old key earns 解密失败, a refresh; the new
        # registration's key is accepted.
        await control(p.url, rotate_keys=True)
        with pytest.raises(RefreshError) as e:
            await a.write(ENT, reg, [REC], UP)
        assert (e.value.refresh, e.value.reason) == ("register", "decrypt_failed")
        again = await a.register(ENT)
        assert again.secret_key != reg.secret_key
        await a.write(ENT, again, [REC], UP)
        assert (await get_json(p.url, "/_records"))[0]["count"] == 2


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_yunnan_token_expiry(session: aiohttp.ClientSession) -> None:
    async with MockPlatform(name="yn", flavour="yunnan", pins={E2: "8642"}) as p:
        clock = Clock()
        a = make_adapter(target(p.url, flavour="yunnan"), session, tz=TZ, clock=clock)
        reg = await a.register(ENT)
        assert reg.token and reg.token_expires_in == 7200
        await a.write(ENT, reg, [REC], UP)
        assert await get_json(p.url, "/_records") == [{**WIRE, "valid": True}]
        # The platform forgets the token before its time: a refresh, then a new token.
        await control(p.url, expire_tokens=True)
        with pytest.raises(RefreshError) as e:
            await a.write(ENT, reg, [REC], UP)
        assert e.value.reason == "token_refused"
        again = await a.register(ENT)
        assert again.token != reg.token
        await a.write(ENT, again, [REC], UP)
        # Renewed by the adapter itself when akExpiresIn runs out.
        clock.now += 7200
        await a.write(ENT, again, [REC], UP)
        assert (await get_json(p.url, "/_stats"))["tokens_issued"] == 3
        # A PIN of its own per enterprise; the wrong one is refused (retried later: it
        # is the credentials, not the records).
        other = Enterprise(code=E2, name="乙", region="530102", pin=SecretStr("8642"), secret=SecretStr(SECRET))
        assert (await a.register(other)).token
        with pytest.raises(RetryableError) as refused:
            await a.register(Enterprise(code=E2, name="乙", region="530102", pin=SecretStr(PIN),
                                        secret=SecretStr(SECRET)))
        assert refused.value.reason == "register" and "8642" not in str(refused.value)


FAILURES: list[tuple[dict[str, Any], str, str]] = [
    ({"fail_status": 503}, "retry", "http_5xx"),
    ({"busy": True}, "retry", "busy"),
    ({"mismatch": True}, "refresh", "device_mismatch"),
    ({"decrypt_failure": True}, "refresh", "decrypt_failed"),
    ({"refuse_codes": [CODE]}, "rejected", "unknown_code"),
    ({"reject_codes": [CODE]}, "rejected", "http_4xx"),
    ({"fail_code": "7"}, "rejected", "unknown_code"),
]


@pytest.mark.parametrize("flavour", ["gbt37947", "shandong", "yunnan"])
@pytest.mark.parametrize(("mode", "kind", "reason"), FAILURES)
async def test_failure_replies_classified(session: aiohttp.ClientSession, flavour: str, mode: dict[str, Any],
                                          kind: str, reason: str) -> None:
    async with MockPlatform(name="f", flavour=flavour) as p:
        a = make_adapter(target(p.url, flavour=flavour), session, tz=TZ, clock=Clock())
        reg = await a.register(ENT)
        await a.configure(ENT, reg, [ITEM])
        await control(p.url, only=["data"], **mode)
        with pytest.raises((RetryableError, RefreshError, RejectedError)) as e:
            await a.write(ENT, reg, [REC], UP)
        err = e.value
        assert isinstance(err, RetryableError | RefreshError | RejectedError)
        got = {RetryableError: "retry", RefreshError: "refresh", RejectedError: "rejected"}[type(err)]
        assert (got, err.reason) == (kind, reason)
        assert (await get_json(p.url, "/_stats"))["records"] == 0


async def test_outage_is_retryable(session: aiohttp.ClientSession) -> None:
    async with MockPlatform(name="down", flavour="shandong") as p:
        a = adapter(p, session)
        reg = await a.register(ENT)
        await control(p.url, down=True)
        with pytest.raises(RetryableError) as e:
            await a.write(ENT, reg, [REC], UP)
        assert e.value.reason == "connect" and e.value.pauses_target
        url = p.url
    with pytest.raises(RetryableError) as e:  # nobody listening: connection refused
        await a.write(ENT, reg, [REC], UP)
    assert e.value.reason == "connect" and url
