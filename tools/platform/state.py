"""What a mock platform remembers and how it can be told to behave: :class:`Mode` (the
failures switched through ``POST /_control``), :class:`State` (devices, keys, tokens,
the records received), and the replies every flavour shares."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

from aiohttp import web

from tools.platform.checks import check_enterprise

__all__ = [
    "BUSY_MESSAGE",
    "DECRYPT_FAILED",
    "DEVICE_MISMATCH",
    "FAILURE_CODE",
    "Handler",
    "Mode",
    "Platform",
    "Sending",
    "State",
    "Stored",
    "bad",
    "dictionary_reply",
    "enterprise_of",
    "reply",
]

# The failure replies live platforms give with HTTP 200 (responseCode "1").
FAILURE_CODE = "1"
DEVICE_MISMATCH = "序列号与企业统一社会信用代码不符"
DECRYPT_FAILED = "解密失败！"
BUSY_MESSAGE = "系统繁忙，请稍后再试"


@dataclass
class Mode:
    """How the platform behaves; ``POST /_control`` with any of these fields changes it.

    The failures apply to the protocol calls (all, or those named in ``only``), in the
    order of the fields below; the record-level ones apply to data calls only."""

    down: bool = False                  # drop every protocol connection without answering
    slow_s: float = 0.0                 # wait this long before answering
    fail_status: int | None = None      # answer with this HTTP status (503: an outage)
    busy: bool = False                  # HTTP 200, responseCode "1", 系统繁忙，请稍后再试
    mismatch: bool = False              # HTTP 200, responseCode "1", 序列号与企业统一社会信用代码不符
    decrypt_failure: bool = False       # HTTP 200, responseCode "1", 解密失败！
    fail_code: str | None = None        # HTTP 200 with this responseCode and a message nobody knows
    reject: bool = False                # reject every data request (HTTP 400)
    reject_codes: list[str] = field(default_factory=list)  # HTTP 400 naming a record with these dataCodes
    refuse_codes: list[str] = field(default_factory=list)  # HTTP 200, responseCode "1" naming such a record
    fail_after: int | None = None       # accept this many more data requests, then go down
    only: list[str] = field(default_factory=list)  # limit the failures above to these calls
    upload_time: str = "00:10:00"       # what registration tells devices
    reg_version: str = "1"              # gbt37947/shandong: the dictionary version call's answer
    dic_version: str = "1"
    token_ttl_s: int = 7200             # yunnan: akExpiresIn of the tokens handed out from now on
    reject_meters: list[str] = field(default_factory=list)  # HTTP 400 naming an instrument call with these serNos
    metering_url: bool = True           # gbt37947: the register reply gives centerMeteringDataUrl

    def update(self, changes: dict[str, Any]) -> None:
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown control fields: {', '.join(sorted(unknown))}")
        for k, v in changes.items():
            setattr(self, k, v)

    def failure(self) -> tuple[str, str] | None:
        """The HTTP-200 failure (responseCode, message) this mode gives a call, if any."""
        if self.busy:
            return FAILURE_CODE, BUSY_MESSAGE
        if self.mismatch:
            return FAILURE_CODE, DEVICE_MISMATCH
        if self.decrypt_failure:
            return FAILURE_CODE, DECRYPT_FAILED
        if self.fail_code is not None:
            return self.fail_code, "injected failure code"
        return None


@dataclass
class Stored:
    record: dict[str, Any]
    count: int = 1
    changed: int = 0  # resends carrying a different value


@dataclass(eq=False)
class Sending:
    """One data request while it is answered: from its arrival to its reply."""

    start: float = field(default_factory=time.monotonic)
    end: float | None = None

    def overlaps(self, other: Sending) -> bool:
        return other.end is None or other.end > self.start


class State:
    def __init__(self) -> None:
        self.records: dict[tuple[str, str, int, str], Stored] = {}
        # Every request that carried a record, per record: a record carried by two
        # requests in flight at once (two senders at work on one period) is an overlap.
        self.sendings: dict[tuple[str, str, int, str], list[Sending]] = {}
        self.overlaps = 0
        self.requests: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        self.rejected_requests = 0
        self.rejected_records = 0
        self.received = 0
        self.devices: dict[str, str] = {}           # enterprise -> deviceId
        self.configured: dict[str, set[str]] = {}   # enterprise -> data codes
        self.configs: dict[str, dict[str, Any]] = {}  # enterprise -> the last configuration body
        self.config_uploads = 0
        self.dictionary_checks = 0
        self.keys: dict[str, bytes] = {}            # shandong: enterprise -> field key
        self.keys_issued = 0
        self.tokens: dict[str, tuple[str, float]] = {}  # yunnan: token -> (enterprise, expiry, monotonic)
        self.tokens_issued = 0
        # Measuring instruments: every call taken (call, enterpriseCode, operation,
        # dataIndex, data), and the instruments held, per enterprise by dataIndex.
        self.meter_calls: list[dict[str, Any]] = []
        self.gauges: dict[str, dict[str, dict[str, Any]]] = {}
        self.next_index = 1

    def new_index(self) -> str:
        index = f"G{self.next_index:06d}"
        self.next_index += 1
        return index

    def meter_call(self, call: str, enterprise: str, body: dict[str, Any], data: Any) -> None:
        self.meter_calls.append({"call": call, "enterpriseCode": enterprise, "operation": body.get("operation"),
                                 "dataIndex": body.get("dataIndex"), "data": data})

    def count_failure(self, kind: str) -> None:
        self.failed[kind] = self.failed.get(kind, 0) + 1

    def stats(self, name: str, flavour: str, mode: Mode) -> dict[str, Any]:
        unique = len(self.records)
        return {
            "name": name,
            "flavour": flavour,
            "mode": asdict(mode),
            "requests": dict(self.requests),
            "failed": dict(self.failed),
            "received": self.received,
            "records": unique,
            "resends": self.received - unique,
            "overlaps": self.overlaps,
            "changed": sum(s.changed for s in self.records.values()),
            "rejected_requests": self.rejected_requests,
            "rejected_records": self.rejected_records,
            "devices": len(self.devices),
            "config_uploads": self.config_uploads,
            "dictionary_checks": self.dictionary_checks,
            "keys_issued": self.keys_issued,
            "tokens_issued": self.tokens_issued,
            "meter_calls": len(self.meter_calls),
            "gauges": sum(len(g) for g in self.gauges.values()),
        }


Handler = Callable[[web.Request, dict[str, Any]], Awaitable[web.Response]]


class Platform(Protocol):
    """What a flavour's calls use of the mock platform (:class:`tools.platform.mock.MockPlatform`)."""

    mode: Mode
    state: State
    secret: str
    pins: dict[str, str]
    pin: str | None
    data_path: str
    clock: Callable[[], float]

    def ok(self, **extra: Any) -> web.Response: ...

    def device_of(self, enterprise: str) -> str: ...

    def device_problem(self, body: dict[str, Any]) -> web.Response | None: ...

    def data_problem(self, records: Any, *, most: int = ...) -> web.Response | None: ...

    def accept(self, enterprise: str, records: list[dict[str, Any]]) -> web.Response: ...


def _dumps(o: Any) -> str:
    return json.dumps(o, ensure_ascii=False)


def reply(code: str = "0", message: str = "RECEIVE SUCCESS", status: int = 200, **extra: Any) -> web.Response:
    return web.json_response({"responseCode": code, "responseMessage": message, **extra}, status=status,
                             dumps=_dumps)


def bad(message: str) -> web.Response:
    """A request the platform cannot take as it is: HTTP 400 naming the problem."""
    return reply("400", message, status=400)


def enterprise_of(body: dict[str, Any]) -> str | web.Response:
    """The request's enterprise code, or the answer refusing it."""
    code = body.get("enterpriseCode")
    if (problem := check_enterprise(code)) is not None:
        return bad(problem)
    return str(code)


def dictionary_reply(p: Platform, body: dict[str, Any]) -> web.Response:
    """The dictionary-version call, as gbt37947 and shandong answer it."""
    device = body.get("deviceId")
    if device not in p.state.devices.values():
        return bad(f"deviceId {device!r} is not registered")
    p.state.dictionary_checks += 1
    return p.ok(regVersion=p.mode.reg_version, dicVersion=p.mode.dic_version)
