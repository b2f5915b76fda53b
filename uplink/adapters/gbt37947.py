"""The GB/T 37947.1 end-device interface as Anhui and the provinces that follow the
reference interface deploy it.

``POST {url}/register`` with ``{enterpriseCode, region}`` answers ``responseCode "0"``,
a ``deviceId``, ``uploadTime`` and the URLs to use next: ``centerInfoURL`` (item
configuration), ``centerDataURL`` (data), ``loadDicVersionURL`` (dictionary version),
``centerMeteringDataUrl`` (measuring instruments) and download URLs.

The item configuration carries the enterprise's profile (``enterprise``) and, per item
and per configured statType, the data code whole and in its parts; data goes in
batches of records.

Measuring instruments (:meth:`Gbt37947Adapter.send_meter`) go one per call to the
register reply's ``centerMeteringDataUrl`` as ``{enterpriseCode, deviceId, data:
[instrument]}``, the same instrument object Yunnan's ``gaugeConfigure`` carries (its
exact shape is not public: our reading, docs/uplink.md).  No delete call is known: an
instrument retired with no replacement sends nothing.  Without that URL in the reply
the platform takes no instruments: the row is refused (``not_taken``) before sending.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp

from config.settings import TargetSettings
from uplink.adapters import Enterprise, Registration
from uplink.adapters.common import ValidStyle, registration_of, wire_record
from uplink.adapters.meters import FLAVOUR_METER_KINDS, MeterCall, MeterReply
from uplink.errors import RejectedError, RetryableError
from uplink.http import post_json
from uplink.records import ItemConfig, Record, code_parts

__all__ = ["Gbt37947Adapter", "enterprise_object", "item_entries"]


def enterprise_object(enterprise: Enterprise) -> dict[str, Any]:
    """The configuration's ``enterprise`` object: the profile fields, with the credit
    code, name and region from the registry."""
    return {**enterprise.profile, "code": enterprise.code, "corporationCode": enterprise.code,
            "name": enterprise.name, "regionCode": enterprise.region}


def item_entries(items: Sequence[ItemConfig], settings: TargetSettings) -> list[dict[str, Any]]:
    """``collectItemConfig``: one entry per item and configured statType, each with the
    data code's parts and ``collectSystemName``.  The value range describes a
    15-minute value, so only statType 0 entries carry it."""
    entries = []
    for item in items:
        base = item.to_wire()
        try:
            parts = code_parts(item.data_code)
        except ValueError:
            parts = {}  # a code of another shape is sent whole only
        for stat_type in settings.config_stat_types:
            entry = {**base, **parts, "statType": stat_type,
                     "collectSystemName": settings.collect_system_name}
            if stat_type != 0:
                entry.pop("dataValueMax", None)
                entry.pop("dataValueMin", None)
            entries.append(entry)
    return entries


class Gbt37947Adapter:
    records_per_call: int | None = None  # the target's batch size
    meter_kinds = FLAVOUR_METER_KINDS["gbt37947"]

    def __init__(self, settings: TargetSettings, *, session: aiohttp.ClientSession, tz: ZoneInfo) -> None:
        self._settings = settings
        self._session = session
        self._base = settings.url.rstrip("/")
        self._tz = tz
        self._valid: ValidStyle = settings.valid_style or "boolean"

    async def register(self, enterprise: Enterprise) -> Registration:
        reply = await post_json(self._session, f"{self._base}/register",
                                {"enterpriseCode": enterprise.code, "region": enterprise.region})
        registration = registration_of(reply)
        if not (registration.device_id and registration.info_url and registration.data_url):
            raise RetryableError("bad_reply", "register reply lacks deviceId, centerInfoURL or centerDataURL")
        return registration

    async def configure(self, enterprise: Enterprise, registration: Registration,
                        items: Sequence[ItemConfig]) -> None:
        assert registration.info_url is not None
        await post_json(self._session, registration.info_url, {
            "enterpriseCode": enterprise.code,
            "deviceId": registration.device_id,
            "collectItemConfig": item_entries(items, self._settings),
            "enterprise": enterprise_object(enterprise),
        })

    async def write(self, enterprise: Enterprise, registration: Registration,
                    records: Sequence[Record], uploaded_at: datetime) -> None:
        assert registration.data_url is not None
        await post_json(self._session, registration.data_url, {
            "enterpriseCode": enterprise.code,
            "deviceId": registration.device_id,
            "data": [wire_record(r, self._tz, uploaded_at, self._valid) for r in records],
        })

    async def dictionary_version(self, enterprise: Enterprise, registration: Registration) -> str | None:
        return await dictionary_version(self._session, registration)

    async def send_meter(self, enterprise: Enterprise, registration: Registration,
                         call: MeterCall) -> MeterReply:
        if call.kind != "gauge" or call.retired:
            return MeterReply(sent=False)  # no call known for these
        if registration.metering_url is None:
            raise RejectedError(0, "the register reply gave no centerMeteringDataUrl: this platform takes no"
                                   " instruments", reason="not_taken")
        reply = await post_json(self._session, registration.metering_url, {
            "enterpriseCode": enterprise.code, "deviceId": registration.device_id, "data": [dict(call.payload)]})
        index = reply.get("dataIndex")
        return MeterReply(data_index=None if index in (None, "") else str(index))


async def dictionary_version(session: aiohttp.ClientSession, registration: Registration) -> str | None:
    """``regVersion/dicVersion`` from ``loadDicVersionURL``; None without that URL or
    when the reply names neither."""
    if registration.dic_version_url is None:
        return None
    reply = await post_json(session, registration.dic_version_url, {"deviceId": registration.device_id})
    reg, dic = reply.get("regVersion"), reply.get("dicVersion")
    if reg is None and dic is None:
        return None
    return f"{reg}/{dic}"
