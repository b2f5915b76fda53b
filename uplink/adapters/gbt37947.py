"""GB/T 37947.1 end-device interface as the provinces deploy it.

``POST {base}/register`` with ``{enterpriseCode, region}`` gives ``deviceId``,
``centerInfoURL`` (item configuration), ``centerDataURL`` (data) and ``uploadTime``;
configuration and data go to those URLs, data in batches of records.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, time
from zoneinfo import ZoneInfo

import aiohttp

from uplink.adapters import Registration
from uplink.errors import RetryableError
from uplink.http import post_json
from uplink.records import ItemConfig, Record

__all__ = ["Gbt37947Adapter"]

_UPLOAD_TIME = re.compile(r"^(\d{2}):(\d{2})(?::(\d{2}))?$")


def _upload_time(value: object) -> time | None:
    m = _UPLOAD_TIME.match(str(value or ""))
    if not m:
        return None
    try:
        return time(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))
    except ValueError:
        return None


class Gbt37947Adapter:
    records_per_call: int | None = None  # the target's batch size

    def __init__(self, session: aiohttp.ClientSession, base_url: str, *, tz: ZoneInfo) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._tz = tz

    async def register(self, enterprise: str, region: str) -> Registration:
        reply = await post_json(self._session, f"{self._base}/register",
                                {"enterpriseCode": enterprise, "region": region})
        device_id, info_url, data_url = (reply.get(k) for k in ("deviceId", "centerInfoURL", "centerDataURL"))
        if not (device_id and info_url and data_url):
            raise RetryableError("bad_reply", "register reply lacks deviceId, centerInfoURL or centerDataURL")
        return Registration(device_id=str(device_id), info_url=str(info_url), data_url=str(data_url),
                            upload_time=_upload_time(reply.get("uploadTime")))

    async def configure(self, enterprise: str, registration: Registration,
                        items: Sequence[ItemConfig]) -> None:
        assert registration.info_url is not None
        await post_json(self._session, registration.info_url, {
            "enterpriseCode": enterprise,
            "deviceId": registration.device_id,
            "collectItemConfig": [item.to_wire() for item in items],
        })

    async def write(self, enterprise: str, registration: Registration,
                    records: Sequence[Record], uploaded_at: datetime) -> None:
        assert registration.data_url is not None
        await post_json(self._session, registration.data_url, {
            "enterpriseCode": enterprise,
            "deviceId": registration.device_id,
            "data": [r.to_wire(self._tz, uploaded_at) for r in records],
        })
