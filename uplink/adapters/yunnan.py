"""Yunnan: a token first, then every call with ``Authorization: Bearer <token>``.

``POST {url}/requestAK`` with ``{enterpriseCode, password}`` (the password is
:func:`uplink.sm4.yunnan_password` of the enterprise's PIN, keyed by the platform-issued
secret and the credit code) answers ``{responseCode: "200", data: {token, akExpiresIn,
akValidAt, enterpriseUploadTime, platformURL}}``.  Success is ``"200"`` on every call
of this platform.

The token is renewed inside :meth:`YunnanAdapter.write` before ``akExpiresIn`` runs out
(taken as seconds; renewed when a tenth of its life, at most a minute, remains).  Data
goes in batches to ``{platformURL or url}/{data_path}`` as ``{enterpriseCode, data:
[records]}``; the data call's path and envelope are not published, hence the setting.
Yunnan has no item configuration call that we know of.

Measuring instruments (:meth:`YunnanAdapter.send_meter`) go with the same token to
``{platformURL or url}/{gauge_path}`` (``gaugeConfigure``: ``{enterpriseCode,
operation: add|update|delete, dataIndex, data: {instrument}}``), ``gauge_verify_path``
(``gaugeVerifyConfigure``) and ``gauge_replace_path`` (``gaugeReplaceConfigure``),
each ``{enterpriseCode, dataIndex, data: {...}}``.  The reply to ``add`` carries the
instrument's ``dataIndex`` (in ``data.dataIndex`` or at the top); the layout of these
calls is not published beyond the field names: it is our reading (docs/uplink.md).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp

from config.settings import TargetSettings
from uplink.adapters import Enterprise, Registration
from uplink.adapters.common import ValidStyle, upload_time, wire_record
from uplink.adapters.meters import FLAVOUR_METER_KINDS, MeterCall, MeterReply, operation
from uplink.errors import AuthError, RefreshError, RetryableError
from uplink.http import post_json
from uplink.records import ItemConfig, Record
from uplink.sm4 import yunnan_password

__all__ = ["SUCCESS", "YunnanAdapter", "renew_after"]

SUCCESS = "200"
_VALID_AT = "%Y-%m-%d %H:%M:%S"


def renew_after(expires_in: float) -> float:
    """Seconds after which a token living ``expires_in`` seconds is renewed."""
    return max(0.0, expires_in - min(60.0, expires_in / 10))


def _valid_at(value: object, tz: ZoneInfo) -> datetime | None:
    # "yyyy-MM-dd HH:mm:ss SSS": the milliseconds after a space
    text = str(value or "").strip()
    try:
        return datetime.strptime(text[:19], _VALID_AT).replace(tzinfo=tz)
    except ValueError:
        return None


def _data_index(reply: dict[str, Any]) -> str | None:
    """The dataIndex of a gaugeConfigure add reply, in ``data`` or at the top."""
    data = reply.get("data")
    found = data.get("dataIndex") if isinstance(data, dict) else None
    if found in (None, ""):
        found = reply.get("dataIndex")
    return None if found in (None, "") else str(found)


class YunnanAdapter:
    records_per_call: int | None = None  # the target's batch size
    meter_kinds = FLAVOUR_METER_KINDS["yunnan"]

    def __init__(self, settings: TargetSettings, *, session: aiohttp.ClientSession, tz: ZoneInfo,
                 clock: Callable[[], float]) -> None:
        self._session = session
        self._base = settings.url.rstrip("/")
        self._data_path = settings.data_path.strip("/")
        self._meter_paths = {"gauge": settings.gauge_path.strip("/"),
                             "verify": settings.gauge_verify_path.strip("/"),
                             "replace": settings.gauge_replace_path.strip("/")}
        self._tz = tz
        self._clock = clock
        self._valid: ValidStyle = settings.valid_style or "boolean"
        # Tokens renewed inside write(), newer than the registration the runner holds.
        self._renewed: dict[str, Registration] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def register(self, enterprise: Enterprise) -> Registration:
        if enterprise.pin is None or enterprise.secret is None:
            raise RetryableError("register", f"no PIN and secret for {enterprise.code} at this target")
        try:
            password = yunnan_password(enterprise.secret.get_secret_value(), enterprise.code,
                                       enterprise.pin.get_secret_value())
        except ValueError as exc:  # the message names no secret
            raise RetryableError("register", f"cannot build the password: {exc}") from None
        try:
            reply = await post_json(self._session, f"{self._base}/requestAK",
                                    {"enterpriseCode": enterprise.code, "password": password}, success=SUCCESS)
        except AuthError as exc:
            raise RetryableError("register", f"token refused: {exc.detail}") from None
        data: Any = reply.get("data")
        if not isinstance(data, dict) or not data.get("token"):
            raise RetryableError("bad_reply", "requestAK reply has no data.token")
        try:
            expires_in = float(data["akExpiresIn"])
        except (KeyError, TypeError, ValueError):
            expires_in = math.nan
        if not math.isfinite(expires_in) or expires_in <= 0:
            raise RetryableError("bad_reply", "requestAK reply has no positive data.akExpiresIn")
        platform_url = data.get("platformURL")
        registration = Registration(
            data_url=f"{str(platform_url or self._base).rstrip('/')}/{self._data_path}",
            upload_time=upload_time(data.get("enterpriseUploadTime")),
            token=str(data["token"]), token_expires_in=expires_in,
            token_valid_at=_valid_at(data.get("akValidAt"), self._tz),
            token_renew_at=self._clock() + renew_after(expires_in),
            platform_url=str(platform_url) if platform_url else None)
        self._renewed.pop(enterprise.code, None)
        return registration

    async def configure(self, enterprise: Enterprise, registration: Registration,
                        items: Sequence[ItemConfig]) -> None:
        return None  # no item configuration call is known for Yunnan

    async def write(self, enterprise: Enterprise, registration: Registration,
                    records: Sequence[Record], uploaded_at: datetime) -> None:
        current = await self._fresh(enterprise, registration)
        assert current.data_url is not None
        await self._post(enterprise, current, current.data_url, {
            "enterpriseCode": enterprise.code,
            "data": [wire_record(r, self._tz, uploaded_at, self._valid) for r in records],
        })

    async def send_meter(self, enterprise: Enterprise, registration: Registration,
                         call: MeterCall) -> MeterReply:
        op = operation(call.kind, retired=call.retired, data_index=call.data_index)
        if call.kind == "gauge" and op is None:
            return MeterReply(sent=False)  # retired before the platform ever had it
        current = await self._fresh(enterprise, registration)
        url = f"{(current.platform_url or self._base).rstrip('/')}/{self._meter_paths[call.kind]}"
        body: dict[str, Any] = {"enterpriseCode": enterprise.code}
        if op is not None:
            body["operation"] = op
        if call.data_index is not None and op != "add":
            body["dataIndex"] = call.data_index
        if call.kind == "replace" and call.old_data_index is not None:
            body["oldDataIndex"] = call.old_data_index
        body["data"] = dict(call.payload)
        reply = await self._post(enterprise, current, url, body)
        return MeterReply(data_index=_data_index(reply) if op == "add" else None, deleted=op == "delete")

    async def _post(self, enterprise: Enterprise, current: Registration, url: str,
                    body: dict[str, Any]) -> dict[str, Any]:
        try:
            return await post_json(self._session, url, body, headers={"Authorization": f"Bearer {current.token}"},
                                   success=SUCCESS)
        except AuthError as exc:
            # The token was refused before its time: the runner registers anew (a new
            # token) and retries once.
            self._renewed.pop(enterprise.code, None)
            raise RefreshError("register", "token_refused", exc.detail) from None

    async def dictionary_version(self, enterprise: Enterprise, registration: Registration) -> str | None:
        return None  # no dictionary version call is known for Yunnan

    async def _fresh(self, enterprise: Enterprise, registration: Registration) -> Registration:
        """The newest registration for the enterprise, renewing the token when it is due."""
        lock = self._locks.setdefault(enterprise.code, asyncio.Lock())
        async with lock:  # concurrent writes for one enterprise share one token request
            best = registration
            renewed = self._renewed.get(enterprise.code)
            if renewed is not None and (renewed.token_renew_at or 0) > (best.token_renew_at or 0):
                best = renewed
            if best.token is None or best.token_renew_at is None or self._clock() >= best.token_renew_at:
                best = await self.register(enterprise)
                self._renewed[enterprise.code] = best
            return best
