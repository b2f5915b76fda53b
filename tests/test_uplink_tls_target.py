"""A target's TLS over real HTTPS: a PKCS#12 client certificate accepted by a server
that requires client certificates, a TLS version floor refused by an older server, a
TLS 1.1-only server reached with the settings that allow it, and the settings'
one-line errors for bad files."""

from __future__ import annotations

import ssl
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from config.settings import SettingsError, TargetSettings, load_settings
from tests.tls import make_ca_and_server
from uplink.errors import RetryableError
from uplink.http import client_ssl_context, post_json

pytestmark = pytest.mark.asyncio(loop_scope="session")

P12_PASSWORD = "p12-pass-word"


def make_p12(certs: dict[str, Path], folder: Path, password: str | None = P12_PASSWORD) -> Path:
    key = serialization.load_pem_private_key(certs["client_key"].read_bytes(), None)
    cert = x509.load_pem_x509_certificate(certs["client"].read_bytes())
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode()) if password else serialization.NoEncryption())
    path = folder / "client.p12"
    path.write_bytes(pkcs12.serialize_key_and_certificates(b"client", key, cert, None, enc))  # type: ignore[arg-type]
    return path


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Path]:
    out = make_ca_and_server(tmp_path / "pki")
    out["p12"] = make_p12(out, tmp_path)
    return out


Server = Callable[..., Any]


@pytest.fixture
async def https_server(certs: dict[str, Path]) -> AsyncIterator[Server]:
    runners: list[web.AppRunner] = []

    async def start(*, client_ca: bool = False, max_version: ssl.TLSVersion | None = None,
                    ciphers: str | None = None) -> str:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certs["server"], certs["server_key"])
        if ciphers:
            ctx.set_ciphers(ciphers)
        if max_version is not None:
            with warnings.catch_warnings():  # TLS 1.1 is deprecated: this server plays an old platform
                warnings.simplefilter("ignore", DeprecationWarning)
                ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
                ctx.maximum_version = max_version
        if client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(certs["ca"])

        async def ok(request: web.Request) -> web.Response:
            peer = request.transport.get_extra_info("peercert") if request.transport else None
            return web.json_response({"responseCode": "0", "peer": bool(peer)})

        app = web.Application()
        app.router.add_post("/", ok)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        return f"https://127.0.0.1:{runner.addresses[0][1]}/"

    yield start
    for r in runners:
        await r.cleanup()


def context_of(settings: TargetSettings) -> ssl.SSLContext:
    pw = settings.pkcs12_password
    return client_ssl_context(settings.ca_file, settings.cert_file, settings.key_file,
                              pkcs12_file=settings.pkcs12_file,
                              pkcs12_password=pw.get_secret_value() if pw else None,
                              min_version=settings.tls_min_version, ciphers=settings.tls_ciphers)


async def post(url: str, ctx: ssl.SSLContext) -> dict[str, Any]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx),
                                     timeout=aiohttp.ClientTimeout(total=5)) as session:
        return await post_json(session, url, {})


def target(url: str, **kw: Any) -> TargetSettings:
    return TargetSettings.model_validate({"url": url, **kw})


async def test_pkcs12_client_certificate(https_server: Server, certs: dict[str, Path]) -> None:
    url = await https_server(client_ca=True)
    good = target(url, ca_file=str(certs["ca"]), pkcs12_file=str(certs["p12"]), pkcs12_password=P12_PASSWORD)
    assert (await post(url, context_of(good)))["peer"] is True
    without = target(url, ca_file=str(certs["ca"]))
    with pytest.raises(RetryableError) as e:
        await post(url, context_of(without))
    assert e.value.reason == "connect"


async def test_tls_floor_refused(https_server: Server, certs: dict[str, Path]) -> None:
    url = await https_server(max_version=ssl.TLSVersion.TLSv1_2)
    floor = target(url, ca_file=str(certs["ca"]), tls_min_version="TLSv1.3")
    with pytest.raises(RetryableError) as e:
        await post(url, context_of(floor))
    assert e.value.reason == "connect"
    assert (await post(url, context_of(target(url, ca_file=str(certs["ca"])))))["responseCode"] == "0"


async def test_tls11_only_platform(https_server: Server, certs: dict[str, Path]) -> None:
    """What docs/uplink.md says a TLS 1.1-only platform needs, with the OpenSSL here:
    the min version alone is not enough; with @SECLEVEL=0 in the cipher string it is."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        tls11 = ssl.TLSVersion.TLSv1_1
    url = await https_server(max_version=tls11, ciphers="DEFAULT:@SECLEVEL=0")
    with pytest.raises(RetryableError):
        await post(url, context_of(target(url, ca_file=str(certs["ca"]), tls_min_version="TLSv1.1")))
    old = target(url, ca_file=str(certs["ca"]), tls_min_version="TLSv1.1", tls_ciphers="DEFAULT:@SECLEVEL=0")
    assert (await post(url, context_of(old)))["responseCode"] == "0"


async def test_settings_check_tls_files(certs: dict[str, Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def error(**kw: str) -> str:
        with monkeypatch.context() as m:
            m.setenv("NHJC_UPLINK__TARGETS__P__URL", "https://x")
            for k, v in kw.items():
                m.setenv(f"NHJC_UPLINK__TARGETS__P__{k.upper()}", v)
            with pytest.raises(SettingsError) as e:
                load_settings()
        assert "\n" not in str(e.value)
        return str(e.value)

    msg = error(pkcs12_file=str(certs["p12"]), pkcs12_password="wrong")
    assert "pkcs12_file" in msg and "wrong" not in msg.replace("is wrong", "") and P12_PASSWORD not in msg
    assert "pkcs12_file" in error(pkcs12_file=str(certs["ca"]))
    assert "no such file" in error(pkcs12_file=str(tmp_path / "absent.p12"))
    assert "tls_ciphers" in error(tls_ciphers="NO-SUCH-CIPHER")
    assert "tls_min_version" in error(tls_min_version="SSLv3")
    pw_file = tmp_path / "p12pw"
    pw_file.write_text(P12_PASSWORD + "\n")
    ok = target("https://x", pkcs12_file=str(certs["p12"]), pkcs12_password_file=str(pw_file))
    assert ok.pkcs12_password is not None and P12_PASSWORD not in repr(ok)


async def test_token_settings_point_to_yunnan() -> None:
    for old in ({"flavour": "token"}, {"password": "123456"}, {"sm4_key": "00" * 16}):
        with pytest.raises(ValueError) as e:
            target("http://x", **old)
        assert "yunnan" in str(e.value)
