"""Shandong's variant of the reference interface.

``POST {url}/enterprise/register`` with ``{enterpriseCode, region}`` answers a
``deviceId``, ``centerDataURL``, ``loadDicVersionURL``, download URLs, ``uploadTime``
and a ``secretKey`` (32 hex digits), but no ``centerInfoURL``: there is no item
configuration.  Data goes one record per call to ``centerDataURL`` as
``{deviceId, enterpriseCode, data: [record]}``, every field of the record encrypted on
its own (:func:`uplink.sm4.encrypt_field`: SM4-ECB, PKCS#7, lowercase hex, keyed by the
bytes ``secretKey`` spells), numbers as their decimal text; ``deviceId`` and
``enterpriseCode`` travel in clear.

How ``valid`` is written is the target's ``valid_style``: by default "0" for a valid
value and "1" for an invalid one, the only meaning a public client documents.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp

from config.settings import TargetSettings
from uplink.adapters import Enterprise, Registration
from uplink.adapters.common import ValidStyle, decimal_text, registration_of, wire_record
from uplink.adapters.gbt37947 import dictionary_version
from uplink.errors import RetryableError
from uplink.http import post_json
from uplink.records import ItemConfig, Record
from uplink.sm4 import encrypt_field, shandong_key

__all__ = ["ShandongAdapter", "field_text"]


def field_text(value: Any) -> str:
    """A field's text before encryption: numbers in decimal, flags as written."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return decimal_text(value)
    return str(value)


class ShandongAdapter:
    records_per_call: int | None = 1

    def __init__(self, settings: TargetSettings, *, session: aiohttp.ClientSession, tz: ZoneInfo) -> None:
        self._session = session
        self._base = settings.url.rstrip("/")
        self._tz = tz
        self._valid: ValidStyle = settings.valid_style or "zero_valid"

    async def register(self, enterprise: Enterprise) -> Registration:
        reply = await post_json(self._session, f"{self._base}/enterprise/register",
                                {"enterpriseCode": enterprise.code, "region": enterprise.region})
        try:
            key = shandong_key(reply.get("secretKey"))  # type: ignore[arg-type]  # checked inside
        except ValueError:
            raise RetryableError("bad_reply", "register reply has no secretKey of 32 hex digits") from None
        registration = registration_of(reply, secret_key=key)
        if not (registration.device_id and registration.data_url):
            raise RetryableError("bad_reply", "register reply lacks deviceId or centerDataURL")
        return registration

    async def configure(self, enterprise: Enterprise, registration: Registration,
                        items: Sequence[ItemConfig]) -> None:
        return None  # Shandong takes no item configuration

    async def write(self, enterprise: Enterprise, registration: Registration,
                    records: Sequence[Record], uploaded_at: datetime) -> None:
        if len(records) != 1:
            raise ValueError("the shandong flavour sends one record per call")
        assert registration.data_url is not None and registration.secret_key is not None
        key = registration.secret_key
        fields = wire_record(records[0], self._tz, uploaded_at, self._valid)
        await post_json(self._session, registration.data_url, {
            "deviceId": registration.device_id,
            "enterpriseCode": enterprise.code,
            "data": [{name: encrypt_field(key, field_text(value)) for name, value in fields.items()}],
        })

    async def dictionary_version(self, enterprise: Enterprise, registration: Registration) -> str | None:
        return await dictionary_version(self._session, registration)
