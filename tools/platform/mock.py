"""``nhjc mock-platform``: a provincial or national platform for demos and tests.

A real HTTP(S) server (aiohttp) speaking both flavours at once:

=========================  =====================================================
``POST /register``         GB/T 37947: ``{enterpriseCode, region}`` -> deviceId, URLs
``POST /config``           GB/T 37947: item configuration (centerInfoURL)
``POST /data``             GB/T 37947: a batch of records (centerDataURL)
``POST /token``            token flavour: ``{enterpriseCode, password}`` -> token
``POST /record``           token flavour: one record, ``Authorization: Bearer``
``GET  /_stats``           what it received: counts, resends, rejections, mode
``GET  /_records``         every distinct record received, with its resend count
``GET|POST /_control``     read or change the behaviour (see :class:`Mode`)
``POST /_reset``           forget everything received
=========================  =====================================================

It checks every record (:mod:`tools.platform.checks`), answers a request with any bad
record with HTTP 400 naming it (and stores nothing of that request), deduplicates by
(enterpriseCode, dataCode, statType, statDate) and counts resends.  It can be told to
be down (connections dropped), slow, failing with an HTTP status or a non-"0"
responseCode, rejecting everything or chosen data codes, or to fail after N more data
requests.  The control endpoints never fail.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import secrets
import signal
import ssl
import sys
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from tools.platform.checks import check_config_item, check_enterprise, check_record, record_key
from uplink.sm4_pin import decrypt_pin

__all__ = ["MockPlatform", "Mode", "configure_mock_platform", "main_mock_platform"]

log = logging.getLogger("nhjc.mock_platform")

DEFAULT_SM4_KEY = "0123456789abcdeffedcba9876543210"  # a demo key: never for production
DEFAULT_PASSWORD = "123456"
_MAX_BATCH = 10_000


@dataclass
class Mode:
    """How the platform behaves; ``POST /_control`` with any of these fields changes it."""

    down: bool = False                  # drop every protocol connection without answering
    slow_s: float = 0.0                 # wait this long before answering
    fail_status: int | None = None      # answer protocol calls with this HTTP status
    fail_code: str | None = None        # answer 200 with this (non-"0") responseCode
    reject: bool = False                # reject every data request (HTTP 400)
    reject_codes: list[str] = field(default_factory=list)  # reject records with these dataCodes
    fail_after: int | None = None       # accept this many more data requests, then go down
    only: list[str] = field(default_factory=list)  # limit the failures above to these calls
    upload_time: str = "00:10:00"       # what registration tells devices

    def update(self, changes: dict[str, Any]) -> None:
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown control fields: {', '.join(sorted(unknown))}")
        for k, v in changes.items():
            setattr(self, k, v)


@dataclass
class _Stored:
    record: dict[str, Any]
    count: int = 1
    changed: int = 0  # resends carrying a different value


class _State:
    def __init__(self) -> None:
        self.records: dict[tuple[str, str, int, str], _Stored] = {}
        self.requests: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        self.rejected_requests = 0
        self.rejected_records = 0
        self.received = 0
        self.devices: dict[str, str] = {}           # enterprise -> deviceId
        self.configured: dict[str, set[str]] = {}   # enterprise -> data codes
        self.config_uploads = 0
        self.tokens: dict[str, str] = {}            # token -> enterprise
        self.tokens_issued = 0

    def stats(self, name: str, mode: Mode) -> dict[str, Any]:
        unique = len(self.records)
        return {
            "name": name,
            "mode": asdict(mode),
            "requests": dict(self.requests),
            "failed": dict(self.failed),
            "received": self.received,
            "records": unique,
            "resends": self.received - unique,
            "changed": sum(s.changed for s in self.records.values()),
            "rejected_requests": self.rejected_requests,
            "rejected_records": self.rejected_records,
            "devices": len(self.devices),
            "config_uploads": self.config_uploads,
            "tokens_issued": self.tokens_issued,
        }


_HEALTHY = Mode()


def _reply(code: str = "0", message: str = "RECEIVE SUCCESS", status: int = 200, **extra: Any) -> web.Response:
    return web.json_response({"responseCode": code, "responseMessage": message, **extra}, status=status,
                             dumps=lambda o: json.dumps(o, ensure_ascii=False))


def _bad(message: str) -> web.Response:
    return _reply("400", message, status=400)


def _enterprise(body: dict[str, Any]) -> str | web.Response:
    """The request's enterprise code, or the answer refusing it."""
    code = body.get("enterpriseCode")
    if (problem := check_enterprise(code)) is not None:
        return _bad(problem)
    return str(code)


class MockPlatform:
    """The platform as an object: ``async with MockPlatform(name="provincial") as p:``
    then point a target at ``p.url``."""

    def __init__(self, *, name: str = "platform", host: str = "127.0.0.1", port: int = 0,
                 ssl_context: ssl.SSLContext | None = None, sm4_key: str = DEFAULT_SM4_KEY,
                 password: str = DEFAULT_PASSWORD, token_ttl_s: int = 3600,
                 mode: Mode | None = None) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.mode = mode or Mode()
        self.state = _State()
        self._ssl = ssl_context
        self._key = bytes.fromhex(sm4_key)
        self._password = password
        self._token_ttl_s = token_ttl_s
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl else "http"
        return f"{scheme}://{self.host}:{self.port}"

    async def start(self) -> MockPlatform:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/register", self._protocol("register", self._register))
        app.router.add_post("/config", self._protocol("config", self._config))
        app.router.add_post("/data", self._protocol("data", self._data))
        app.router.add_post("/token", self._protocol("token", self._token))
        app.router.add_post("/record", self._protocol("record", self._record))
        app.router.add_get("/_stats", self._stats)
        app.router.add_get("/_records", self._records)
        app.router.add_get("/_control", self._get_control)
        app.router.add_post("/_control", self._post_control)
        app.router.add_post("/_reset", self._reset)
        # handler_cancellation: a client that gave up on a slow answer cancels it.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self._ssl)
        await site.start()
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        log.info("mock platform %s listening on %s", self.name, self.url)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> MockPlatform:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def stats(self) -> dict[str, Any]:
        return self.state.stats(self.name, self.mode)

    # -- the protocol endpoints, behind the injected failures ----------------------------

    def _protocol(self, call: str, handler: Any) -> Any:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            st, mode = self.state, self.mode
            st.requests[call] = st.requests.get(call, 0) + 1
            if mode.only and call not in mode.only:
                mode = _HEALTHY
            if mode.slow_s > 0:
                st.failed["slow"] = st.failed.get("slow", 0) + 1
                await asyncio.sleep(mode.slow_s)
            if mode.down:
                st.failed["down"] = st.failed.get("down", 0) + 1
                if request.transport is not None:
                    request.transport.abort()  # like a platform that is not there
                return web.Response(status=503)
            if mode.fail_status is not None:
                st.failed["status"] = st.failed.get("status", 0) + 1
                return _reply(str(mode.fail_status), "injected failure", status=mode.fail_status)
            if mode.fail_code is not None:
                st.failed["code"] = st.failed.get("code", 0) + 1
                return _reply(mode.fail_code, "SYSTEM BUSY (injected)")
            try:
                body = json.loads(await request.read(), parse_constant=_no_constants)
            except ValueError as exc:
                st.rejected_requests += 1
                return _bad(f"not JSON: {exc}")
            if not isinstance(body, dict):
                st.rejected_requests += 1
                return _bad("the body is not a JSON object")
            response: web.Response = await handler(request, body)
            if response.status >= 400:
                st.rejected_requests += 1
            return response

        return wrapped

    async def _register(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        if isinstance(enterprise := _enterprise(body), web.Response):
            return enterprise
        region = body.get("region")
        if not isinstance(region, str) or len(region) != 6 or not region.isdigit():
            return _bad(f"region {region!r} is not a 6-digit administrative code")
        device = "D" + hashlib.sha1(f"{self.name}/{enterprise}".encode()).hexdigest()[:15].upper()
        self.state.devices[enterprise] = device
        base = f"{request.scheme}://{request.host}"
        return _reply(deviceId=device, centerInfoURL=f"{base}/config", centerDataURL=f"{base}/data",
                      uploadTime=self.mode.upload_time)

    def _device_problem(self, body: dict[str, Any]) -> web.Response | None:
        if isinstance(enterprise := _enterprise(body), web.Response):
            return enterprise
        if self.state.devices.get(enterprise) != body.get("deviceId"):
            return _reply("2", f"device {body.get('deviceId')!r} is not registered for {enterprise}")
        return None

    async def _config(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        if (bad := self._device_problem(body)) is not None:
            return bad
        items = body.get("collectItemConfig")
        if not isinstance(items, list) or not items:
            return _bad("collectItemConfig is not a non-empty list")
        for i, item in enumerate(items):
            if (problem := check_config_item(item)) is not None:
                return _bad(f"collectItemConfig[{i}]: {problem}")
        self.state.configured[body["enterpriseCode"]] = {it["dataCode"] for it in items}
        self.state.config_uploads += 1
        return _reply()

    async def _data(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        if (bad := self._device_problem(body)) is not None:
            return bad
        records = body.get("data")
        if not isinstance(records, list) or not 1 <= len(records) <= _MAX_BATCH:
            return _bad(f"data is not a list of 1 to {_MAX_BATCH} records")
        enterprise = body["enterpriseCode"]
        configured = self.state.configured.get(enterprise, set())
        for i, rec in enumerate(records):
            if (problem := self._record_problem(rec)) is not None:
                return _bad(f"data[{i}]: {problem}")
        for i, rec in enumerate(records):
            if rec["dataCode"] not in configured:
                return _reply("3", f"data[{i}]: dataCode {rec['dataCode']} is not configured")
        return self._accept(enterprise, records)

    async def _token(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        if isinstance(enterprise := _enterprise(body), web.Response):
            return enterprise
        try:
            pin = decrypt_pin(str(body.get("password", "")), enterprise, self._key)
        except ValueError as exc:
            return _bad(f"password does not decrypt to a PIN block: {exc}")
        if not secrets.compare_digest(pin, self._password):
            return _bad("wrong password")
        token = secrets.token_hex(16)
        self.state.tokens[token] = enterprise
        self.state.tokens_issued += 1
        return _reply(token=token, expiresIn=self._token_ttl_s)

    async def _record(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        enterprise = body.get("enterpriseCode")
        if self.state.tokens.get(token) is None or self.state.tokens[token] != enterprise:
            return _reply("401", "token missing, expired or not this enterprise's", status=401)
        rec = {k: v for k, v in body.items() if k != "enterpriseCode"}
        if (problem := self._record_problem(rec)) is not None:
            return _bad(problem)
        return self._accept(enterprise, [rec])

    def _record_problem(self, rec: Any) -> str | None:
        if (problem := check_record(rec)) is not None:
            return problem
        if self.mode.reject or rec["dataCode"] in self.mode.reject_codes:
            return f"dataCode {rec['dataCode']} refused by the platform (injected)"
        return None

    def _accept(self, enterprise: str, records: list[dict[str, Any]]) -> web.Response:
        st = self.state
        for rec in records:
            key = record_key(enterprise, rec)
            stored = st.records.get(key)
            if stored is None:
                st.records[key] = _Stored(dict(rec, enterpriseCode=enterprise))
            else:
                stored.count += 1
                if stored.record["dataValue"] != rec["dataValue"]:
                    stored.changed += 1
                stored.record = dict(rec, enterpriseCode=enterprise)
            st.received += 1
        if self.mode.fail_after is not None:
            self.mode.fail_after -= 1
            if self.mode.fail_after <= 0:
                self.mode.fail_after, self.mode.down = None, True
        return _reply()

    # -- control -------------------------------------------------------------------------

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _records(self, request: web.Request) -> web.Response:
        out = [dict(s.record, count=s.count, changed=s.changed) for s in self.state.records.values()]
        out.sort(key=lambda r: (r["enterpriseCode"], r["dataCode"], r["statType"], r["statDate"]))
        return web.json_response(out, dumps=lambda o: json.dumps(o, ensure_ascii=False))

    async def _get_control(self, request: web.Request) -> web.Response:
        return web.json_response(asdict(self.mode))

    async def _post_control(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object")
            if changes.pop("expire_tokens", False):
                self.state.tokens.clear()
            self.mode.update(changes)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        log.info("mock platform %s: mode now %s", self.name, asdict(self.mode))
        return web.json_response(asdict(self.mode))

    async def _reset(self, request: web.Request) -> web.Response:
        self.state = _State()
        return web.json_response(self.stats())


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# -- command line ------------------------------------------------------------------------

def configure_mock_platform(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8788, help="port (0: any free port; default 8788)")
    parser.add_argument("--name", default="platform", help="name shown in logs and /_stats")
    parser.add_argument("--tls-cert", type=Path, help="server certificate (PEM): serve HTTPS")
    parser.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    parser.add_argument("--tls-client-ca", type=Path,
                        help="require client certificates signed by this CA (mutual TLS)")
    parser.add_argument("--sm4-key", default=DEFAULT_SM4_KEY, help="token flavour: SM4 key, 32 hex digits")
    parser.add_argument("--password", default=DEFAULT_PASSWORD, help="token flavour: the expected PIN")
    parser.add_argument("--token-ttl", type=int, default=3600, help="token flavour: token lifetime (s)")
    parser.add_argument("--upload-time", default="00:10:00", help="uploadTime given at registration")
    parser.add_argument("--down", action="store_true", help="start down (drop connections)")
    parser.add_argument("--slow", type=float, default=0.0, metavar="S", help="answer after S seconds")
    parser.add_argument("--fail-status", type=int, metavar="HTTP", help="answer with this HTTP status")
    parser.add_argument("--fail-code", metavar="CODE", help="answer 200 with this responseCode")
    parser.add_argument("--reject", action="store_true", help="reject every data request (HTTP 400)")
    parser.add_argument("--reject-code", action="append", default=[], metavar="DATACODE",
                        help="reject records with this dataCode (repeatable)")
    parser.add_argument("--fail-after", type=int, metavar="N", help="go down after N more data requests")
    parser.add_argument("--only", action="append", default=[], metavar="CALL",
                        help="limit injected failures to this call: register, config, data, token, record")


def _server_ssl(args: argparse.Namespace) -> ssl.SSLContext | None:
    if args.tls_cert is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(args.tls_cert), str(args.tls_key) if args.tls_key else None)
    if args.tls_client_ca is not None:
        ctx.load_verify_locations(cafile=str(args.tls_client_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def _serve(args: argparse.Namespace) -> None:
    mode = Mode(down=args.down, slow_s=args.slow, fail_status=args.fail_status, fail_code=args.fail_code,
                reject=args.reject, reject_codes=list(args.reject_code), fail_after=args.fail_after,
                only=list(args.only), upload_time=args.upload_time)
    platform = MockPlatform(name=args.name, host=args.host, port=args.port, ssl_context=_server_ssl(args),
                            sm4_key=args.sm4_key, password=args.password, token_ttl_s=args.token_ttl,
                            mode=mode)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with platform:
        # One line on stdout, so scripts and tests can find the port (with --port 0).
        print(f"mock-platform {platform.name} listening on {platform.url}", flush=True)
        await stop.wait()


def main_mock_platform(args: argparse.Namespace, settings: object) -> int:
    try:
        bytes.fromhex(args.sm4_key)
        datetime.strptime(args.upload_time, "%H:%M:%S")
    except ValueError as exc:
        print(f"nhjc mock-platform: bad option: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":  # python -m tools.platform.mock, without the rest of nhjc
    from config.settings import load_settings

    _parser = argparse.ArgumentParser(prog="nhjc mock-platform")
    configure_mock_platform(_parser)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main_mock_platform(_parser.parse_args(), load_settings()))
