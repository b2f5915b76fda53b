"""``nhjc mock-platform --flavour gbt37947|shandong|yunnan``: a provincial platform for
demos and tests, speaking one flavour as the uplink's adapters speak it.

A real HTTP(S) server (aiohttp).  The protocol calls are the flavour's
(:mod:`tools.platform.gbt37947`, :mod:`tools.platform.shandong`,
:mod:`tools.platform.yunnan`); every flavour has the same control calls:

=========================  =====================================================
``GET  /_stats``           what it received: counts, resends, rejections, mode,
                           overlaps (a record carried by two requests in flight at once)
``GET  /_records``         every distinct record received, with its resend count
``GET  /_configs``         the last item configuration per enterprise (gbt37947)
``GET  /_meters``          the measuring instruments: every call taken, and the
                           instruments held per enterprise by dataIndex
``GET|POST /_control``     read or change the behaviour (see :class:`Mode`); POST
                           also takes the actions ``expire_tokens`` (yunnan: every
                           token refused from now on) and ``rotate_keys`` (shandong:
                           every enterprise's field key replaced at once)
``POST /_reset``           forget everything received
=========================  =====================================================

It checks every record (:mod:`tools.platform.checks`), answers a request with any bad
record with HTTP 400 naming it (and stores nothing of that request), deduplicates by
(enterpriseCode, dataCode, statType, statDate) and counts resends.  The control
endpoints never fail.
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
import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from tools.platform.checks import check_record, record_key
from tools.platform.state import (
    DEVICE_MISMATCH,
    FAILURE_CODE,
    Handler,
    Mode,
    Sending,
    State,
    Stored,
    bad,
    enterprise_of,
    reply,
)

__all__ = [
    "DEFAULT_PIN", "DEFAULT_SECRET", "FLAVOURS", "MockPlatform", "Mode", "configure_mock_platform",
    "main_mock_platform",
]

log = logging.getLogger("nhjc.mock_platform")

DEFAULT_SECRET = "nhjc-demo-secret-0123456789"  # yunnan: a demo secret, never for production
DEFAULT_PIN = "123456"
FLAVOURS = ("gbt37947", "shandong", "yunnan")
_MAX_BATCH = 10_000
# The request being answered (each runs in its own task), for the overlap count.
_SENDING: ContextVar[Sending | None] = ContextVar("sending", default=None)

class Speaker(Protocol):
    """One flavour's protocol calls."""

    success: str

    def routes(self) -> list[tuple[str, str, Handler]]: ...  # (path, call name, handler)


def _speaker(platform: MockPlatform) -> Speaker:
    if platform.flavour == "gbt37947":
        from tools.platform.gbt37947 import Gbt37947
        return Gbt37947(platform)
    if platform.flavour == "shandong":
        from tools.platform.shandong import Shandong
        return Shandong(platform)
    if platform.flavour == "yunnan":
        from tools.platform.yunnan import Yunnan
        return Yunnan(platform)
    raise ValueError(f"unknown flavour {platform.flavour!r} (one of {', '.join(FLAVOURS)})")


class MockPlatform:
    """The platform as an object: ``async with MockPlatform(flavour="shandong") as p:``
    then point a target of that flavour at ``p.url``.

    Yunnan: ``secret`` is the platform-issued secret, ``pins`` each enterprise's PIN
    (``pin`` for any enterprise not in ``pins``; None: such enterprises are unknown);
    ``data_path`` the data call's path.  ``clock`` is monotonic seconds (token expiry)."""

    def __init__(self, *, name: str = "platform", flavour: str = "gbt37947", host: str = "127.0.0.1",
                 port: int = 0, ssl_context: ssl.SSLContext | None = None, mode: Mode | None = None,
                 secret: str = DEFAULT_SECRET, pins: Mapping[str, str] | None = None,
                 pin: str | None = DEFAULT_PIN, data_path: str = "uploadData",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.flavour = flavour
        self.host = host
        self.port = port
        self.mode = mode or Mode()
        self.state = State()
        self.secret = secret
        self.pins = dict(pins or {})
        self.pin = pin
        self.data_path = data_path.strip("/")
        self.clock = clock
        self._ssl = ssl_context
        self._speaker = _speaker(self)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def success(self) -> str:
        """The flavour's success responseCode."""
        return self._speaker.success

    async def start(self) -> MockPlatform:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        for path, call, handler in self._speaker.routes():
            app.router.add_post(path, self._protocol(call, handler))
        app.router.add_get("/_stats", self._stats)
        app.router.add_get("/_records", self._records)
        app.router.add_get("/_configs", self._configs)
        app.router.add_get("/_meters", self._meters)
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
        log.info("mock platform %s (%s) listening on %s", self.name, self.flavour, self.url)
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
        return self.state.stats(self.name, self.flavour, self.mode)

    # -- what the flavours share -------------------------------------------------------

    def ok(self, **extra: Any) -> web.Response:
        """Success as the flavour writes it."""
        return reply(self.success, "RECEIVE SUCCESS" if self.success == "0" else "success", **extra)

    def device_of(self, enterprise: str) -> str:
        """Register ``enterprise``: its device id (32 hex digits, stable per platform)."""
        device = hashlib.md5(f"{self.name}/{enterprise}".encode()).hexdigest()  # an id, not security
        self.state.devices[enterprise] = device
        return device

    def device_problem(self, body: dict[str, Any]) -> web.Response | None:
        """The reply refusing a call whose deviceId is not the enterprise's registered one."""
        if isinstance(enterprise := enterprise_of(body), web.Response):
            return enterprise
        if self.state.devices.get(enterprise) != body.get("deviceId"):
            return reply(FAILURE_CODE, DEVICE_MISMATCH)
        return None

    def data_problem(self, records: Any, *, most: int = _MAX_BATCH) -> web.Response | None:
        """The reply refusing a batch: not a list, a bad record (HTTP 400) or a record
        the platform refuses by its data code (HTTP 200, responseCode "1")."""
        if not isinstance(records, list) or not 1 <= len(records) <= most:
            return bad(f"data is not a list of 1 to {most} records")
        for i, rec in enumerate(records):
            if (problem := check_record(rec)) is not None:
                return bad(f"data[{i}]: {problem}")
            if self.mode.reject or rec["dataCode"] in self.mode.reject_codes:
                return bad(f"data[{i}]: dataCode {rec['dataCode']} refused by the platform (injected)")
        for i, rec in enumerate(records):
            if rec["dataCode"] in self.mode.refuse_codes:
                return reply(FAILURE_CODE, f"data[{i}]: 数据项编码 {rec['dataCode']} 不被接受")
        return None

    def accept(self, enterprise: str, records: list[dict[str, Any]]) -> web.Response:
        st = self.state
        sending = _SENDING.get()
        for rec in records:
            key = record_key(enterprise, rec)
            if sending is not None:
                earlier = st.sendings.setdefault(key, [])
                st.overlaps += sum(1 for other in earlier if other is not sending and sending.overlaps(other))
                earlier.append(sending)
            stored = st.records.get(key)
            if stored is None:
                st.records[key] = Stored(dict(rec, enterpriseCode=enterprise))
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
        return self.ok()

    # -- the protocol endpoints, behind the injected failures ----------------------------

    def _protocol(self, call: str, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            sending = Sending()
            _SENDING.set(sending)
            try:
                return await answer(request)
            finally:
                sending.end = time.monotonic()

        async def answer(request: web.Request) -> web.StreamResponse:
            st, mode = self.state, self.mode
            st.requests[call] = st.requests.get(call, 0) + 1
            if mode.only and call not in mode.only:
                mode = Mode()
            if mode.slow_s > 0:
                st.count_failure("slow")
                await asyncio.sleep(mode.slow_s)
            if mode.down:
                st.count_failure("down")
                if request.transport is not None:
                    request.transport.abort()  # like a platform that is not there
                return web.Response(status=503)
            if mode.fail_status is not None:
                st.count_failure("status")
                return reply(str(mode.fail_status), "injected failure", status=mode.fail_status)
            if (failure := mode.failure()) is not None:
                st.count_failure("code")
                return reply(*failure)
            try:
                body = json.loads(await request.read(), parse_constant=_no_constants)
            except ValueError as exc:
                st.rejected_requests += 1
                return bad(f"not JSON: {exc}")
            if not isinstance(body, dict):
                st.rejected_requests += 1
                return bad("the body is not a JSON object")
            response = await handler(request, body)
            if response.status >= 400:
                st.rejected_requests += 1
            return response

        return wrapped

    # -- control -------------------------------------------------------------------------

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _records(self, request: web.Request) -> web.Response:
        out = [dict(s.record, count=s.count, changed=s.changed) for s in self.state.records.values()]
        out.sort(key=lambda r: (r["enterpriseCode"], r["dataCode"], r["statType"], r["statDate"]))
        return web.json_response(out, dumps=lambda o: json.dumps(o, ensure_ascii=False))

    async def _configs(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.configs, dumps=lambda o: json.dumps(o, ensure_ascii=False))

    async def _meters(self, request: web.Request) -> web.Response:
        return web.json_response({"calls": self.state.meter_calls, "gauges": self.state.gauges},
                                 dumps=lambda o: json.dumps(o, ensure_ascii=False))

    async def _get_control(self, request: web.Request) -> web.Response:
        return web.json_response(asdict(self.mode))

    async def _post_control(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object")
            expire, rotate = changes.pop("expire_tokens", False), changes.pop("rotate_keys", False)
            self.mode.update(changes)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if expire:
            self.expire_tokens()
        if rotate:
            self.rotate_keys()
        log.info("mock platform %s: mode now %s", self.name, asdict(self.mode))
        return web.json_response(asdict(self.mode))

    def expire_tokens(self) -> None:
        """Yunnan: every token handed out so far is refused from now on."""
        self.state.tokens.clear()

    def rotate_keys(self) -> None:
        """Shandong: every registered enterprise's field key is replaced now; data under
        the old key fails to decrypt, and the next registration gives the new key."""
        for enterprise in self.state.keys:
            self.state.keys[enterprise] = secrets.token_bytes(16)
            self.state.keys_issued += 1

    async def _reset(self, request: web.Request) -> web.Response:
        self.state = State()
        return web.json_response(self.stats())


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# -- command line ------------------------------------------------------------------------

def configure_mock_platform(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flavour", choices=FLAVOURS, default="gbt37947",
                        help="the platform to speak (default gbt37947)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8788, help="port (0: any free port; default 8788)")
    parser.add_argument("--name", default="platform", help="name shown in logs and /_stats")
    parser.add_argument("--tls-cert", type=Path, help="server certificate (PEM): serve HTTPS")
    parser.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    parser.add_argument("--tls-client-ca", type=Path,
                        help="require client certificates signed by this CA (mutual TLS)")
    parser.add_argument("--secret", default=DEFAULT_SECRET,
                        help="yunnan: the platform-issued secret (at least 16 ASCII characters)")
    parser.add_argument("--pin", default=DEFAULT_PIN, help="yunnan: the PIN of any enterprise not given by --pins")
    parser.add_argument("--pins", type=Path, metavar="FILE",
                        help="yunnan: a JSON object of credit code -> PIN")
    parser.add_argument("--data-path", default="uploadData", help="yunnan: the data call's path")
    parser.add_argument("--token-ttl", type=int, default=7200, help="yunnan: akExpiresIn of tokens (s)")
    parser.add_argument("--upload-time", default="00:10:00", help="uploadTime given at registration")
    parser.add_argument("--down", action="store_true", help="start down (drop connections)")
    parser.add_argument("--slow", type=float, default=0.0, metavar="S", help="answer after S seconds")
    parser.add_argument("--fail-status", type=int, metavar="HTTP", help="answer with this HTTP status")
    parser.add_argument("--fail-code", metavar="CODE", help="answer 200 with this unknown responseCode")
    parser.add_argument("--busy", action="store_true", help="answer 200: system busy, try later")
    parser.add_argument("--reject", action="store_true", help="reject every data request (HTTP 400)")
    parser.add_argument("--reject-code", action="append", default=[], metavar="DATACODE",
                        help="reject records with this dataCode with HTTP 400 (repeatable)")
    parser.add_argument("--refuse-code", action="append", default=[], metavar="DATACODE",
                        help="refuse records with this dataCode with HTTP 200, responseCode 1 (repeatable)")
    parser.add_argument("--reject-meter", action="append", default=[], metavar="SERNO",
                        help="reject instrument calls for this serNo with HTTP 400 (repeatable)")
    parser.add_argument("--no-metering-url", action="store_true",
                        help="gbt37947: leave centerMeteringDataUrl out of the register reply")
    parser.add_argument("--fail-after", type=int, metavar="N", help="go down after N more data requests")
    parser.add_argument("--only", action="append", default=[], metavar="CALL",
                        help="limit injected failures to this call: register, config, dictionary, data,"
                             " gauge, gauge_verify, gauge_replace, metering")


def _server_ssl(args: argparse.Namespace) -> ssl.SSLContext | None:
    if args.tls_cert is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(args.tls_cert), str(args.tls_key) if args.tls_key else None)
    if args.tls_client_ca is not None:
        ctx.load_verify_locations(cafile=str(args.tls_client_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def _serve(args: argparse.Namespace, pins: dict[str, str]) -> None:
    mode = Mode(down=args.down, slow_s=args.slow, fail_status=args.fail_status, fail_code=args.fail_code,
                busy=args.busy, reject=args.reject, reject_codes=list(args.reject_code),
                refuse_codes=list(args.refuse_code), fail_after=args.fail_after, only=list(args.only),
                reject_meters=list(args.reject_meter), metering_url=not args.no_metering_url,
                upload_time=args.upload_time, token_ttl_s=args.token_ttl)
    platform = MockPlatform(name=args.name, flavour=args.flavour, host=args.host, port=args.port,
                            ssl_context=_server_ssl(args), mode=mode, secret=args.secret, pins=pins,
                            pin=args.pin, data_path=args.data_path)
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
        datetime.strptime(args.upload_time, "%H:%M:%S")
        if len(args.secret) < 16 or not args.secret.isascii():
            raise ValueError("--secret needs at least 16 ASCII characters")
        pins = json.loads(args.pins.read_text(encoding="utf-8")) if args.pins else {}
        if not isinstance(pins, dict) or not all(isinstance(v, str) for v in pins.values()):
            raise ValueError("--pins is not a JSON object of credit code -> PIN")
    except (OSError, ValueError) as exc:
        print(f"nhjc mock-platform: bad option: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_serve(args, pins))
    return 0


if __name__ == "__main__":  # python -m tools.platform.mock, without the rest of nhjc
    from config.settings import load_settings

    _parser = argparse.ArgumentParser(prog="nhjc mock-platform")
    configure_mock_platform(_parser)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main_mock_platform(_parser.parse_args(), load_settings()))
