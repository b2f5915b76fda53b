"""The token flavour found in the field: no registration, one record per call.

``POST {base}/token`` with ``{enterpriseCode, password}`` (the password an SM4-CBC
encrypted ISO 9564 format-0 PIN block, :mod:`uplink.sm4_pin`) answers
``{responseCode: "0", token, expiresIn}``; each record then goes alone to
``POST {base}/record`` as ``{enterpriseCode, dataCode, dataValue, ...}`` with
``Authorization: Bearer <token>``.  A 401 means the token is no longer good: fetch a
new one and try once more.
"""

from __future__ import annotations

import asyncio
import time as _time
from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

import aiohttp

from uplink.adapters import Registration
from uplink.errors import AuthError, RejectedError, RetryableError
from uplink.http import post_json
from uplink.records import ItemConfig, Record
from uplink.sm4_pin import encrypt_pin

__all__ = ["TokenAdapter"]

_EARLY_S = 30.0  # renew this long before the platform says the token expires


class TokenAdapter:
    records_per_call: int | None = 1

    def __init__(self, session: aiohttp.ClientSession, base_url: str, *, tz: ZoneInfo,
                 password: str, sm4_key: bytes) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._tz = tz
        self._password = password
        self._key = sm4_key
        self._tokens: dict[str, tuple[str, float]] = {}  # enterprise -> (token, expires, monotonic)
        self._locks: dict[str, asyncio.Lock] = {}

    async def register(self, enterprise: str, region: str) -> Registration:
        return Registration()  # nothing to register; the token is fetched on first write

    async def configure(self, enterprise: str, registration: Registration,
                        items: Sequence[ItemConfig]) -> None:
        return None  # this flavour takes no item configuration

    async def write(self, enterprise: str, registration: Registration,
                    records: Sequence[Record], uploaded_at: datetime) -> None:
        if len(records) != 1:
            raise ValueError("the token flavour sends one record per call")
        body = {"enterpriseCode": enterprise, **records[0].to_wire(self._tz, uploaded_at)}
        token = await self._token(enterprise, stale=None)
        try:
            await post_json(self._session, f"{self._base}/record", body,
                            headers={"Authorization": f"Bearer {token}"})
        except AuthError:
            token = await self._token(enterprise, stale=token)
            await post_json(self._session, f"{self._base}/record", body,
                            headers={"Authorization": f"Bearer {token}"})

    async def _token(self, enterprise: str, *, stale: str | None) -> str:
        """A usable token; ``stale`` is one the platform just refused."""
        lock = self._locks.setdefault(enterprise, asyncio.Lock())
        async with lock:  # concurrent writes for one enterprise share one token request
            cached = self._tokens.get(enterprise)
            if cached and cached[0] != stale and cached[1] > _time.monotonic():
                return cached[0]
            password = encrypt_pin(self._password, enterprise, self._key)
            try:
                reply = await post_json(self._session, f"{self._base}/token",
                                        {"enterpriseCode": enterprise, "password": password})
            except RejectedError as exc:
                # Refused credentials are the operator's to fix, not the records' fault.
                raise RetryableError("auth", f"token refused: {exc.message}") from exc
            token = reply.get("token")
            if not token:
                raise RetryableError("bad_reply", "token reply has no token")
            try:
                ttl = float(reply.get("expiresIn", 3600))
            except (TypeError, ValueError):
                ttl = 3600.0
            self._tokens[enterprise] = (str(token), _time.monotonic() + max(0.0, ttl - _EARLY_S))
            return str(token)
