"""Protocol adapters: each knows how one platform flavour wants to be spoken to, nothing
else.  The runner (:mod:`uplink.runner`) owns the outbox, schedule, retries and metrics.

An adapter is three calls:

``register(enterprise, region) -> Registration``
    Whatever the flavour needs before anything else (GB/T 37947: the register call
    giving a device id, the config and data URLs and the daily upload time).  The
    runner calls it once per enterprise and process, and again after a failure that
    suggests the platform forgot us.
``configure(enterprise, registration, items)``
    The item configuration, sent before data and again when it changes (a no-op for
    flavours that have none).
``write(enterprise, registration, records, uploaded_at)``
    Deliver records; at most ``records_per_call`` of them (``None``: the target's
    batch size).  Success returns; failure raises :class:`~uplink.errors.RetryableError`
    or :class:`~uplink.errors.RejectedError`.

Adding a province's flavour is one module here plus one entry in :data:`FLAVOURS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time
from typing import Protocol
from zoneinfo import ZoneInfo

import aiohttp

from uplink.records import ItemConfig, Record

__all__ = ["FLAVOURS", "Adapter", "Registration", "make_adapter"]


@dataclass(frozen=True, slots=True)
class Registration:
    """What a platform told us about one enterprise's device."""

    device_id: str | None = None
    info_url: str | None = None
    data_url: str | None = None
    upload_time: time | None = None


class Adapter(Protocol):
    records_per_call: int | None

    async def register(self, enterprise: str, region: str) -> Registration: ...

    async def configure(self, enterprise: str, registration: Registration,
                        items: Sequence[ItemConfig]) -> None: ...

    async def write(self, enterprise: str, registration: Registration,
                    records: Sequence[Record], uploaded_at: datetime) -> None: ...


def make_adapter(flavour: str, session: aiohttp.ClientSession, base_url: str, *, tz: ZoneInfo,
                 password: str | None = None, sm4_key: str | None = None) -> Adapter:
    """The adapter for a target's flavour, speaking through ``session``."""
    try:
        factory = FLAVOURS[flavour]
    except KeyError:
        raise ValueError(f"unknown uplink flavour {flavour!r}") from None
    return factory(session, base_url, tz=tz, password=password, sm4_key=sm4_key)


def _gbt37947(session: aiohttp.ClientSession, base_url: str, *, tz: ZoneInfo,
              password: str | None, sm4_key: str | None) -> Adapter:
    from uplink.adapters.gbt37947 import Gbt37947Adapter

    return Gbt37947Adapter(session, base_url, tz=tz)


def _token(session: aiohttp.ClientSession, base_url: str, *, tz: ZoneInfo,
           password: str | None, sm4_key: str | None) -> Adapter:
    from uplink.adapters.token import TokenAdapter

    if password is None or sm4_key is None:
        raise ValueError("the token flavour needs password and sm4_key")
    return TokenAdapter(session, base_url, tz=tz, password=password, sm4_key=bytes.fromhex(sm4_key))


FLAVOURS = {"gbt37947": _gbt37947, "token": _token}
