"""What the flavours share: reading a register reply, the daily upload time, how
``valid`` is written, and a record's fields on the wire."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, time
from decimal import Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo

from uplink.adapters import Registration
from uplink.records import Record

__all__ = ["ValidStyle", "decimal_text", "registration_of", "upload_time", "valid_value", "wire_record"]

ValidStyle = Literal["boolean", "one_valid", "zero_valid"]
_UPLOAD_TIME = re.compile(r"^(\d{2}):(\d{2})(?::(\d{2}))?$")
# Register-reply keys with a field of their own in Registration; every other key that
# names a URL goes to Registration.other_urls.
_OWN_URLS = frozenset({"centerInfoURL", "centerDataURL", "loadDicVersionURL", "centerMeteringDataUrl"})


def upload_time(value: object) -> time | None:
    """``HH:mm[:ss]`` as a time; None when absent or malformed (the setting then holds)."""
    m = _UPLOAD_TIME.match(str(value or ""))
    if not m:
        return None
    try:
        return time(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))
    except ValueError:
        return None


def _text(value: object) -> str | None:
    return str(value) if value not in (None, "") else None


def registration_of(reply: Mapping[str, Any], **extra: Any) -> Registration:
    """A register reply as a :class:`Registration`: every URL it gives, absent ones None."""
    others = tuple(sorted((k, str(v)) for k, v in reply.items()
                          if k not in _OWN_URLS and k.lower().endswith("url") and _text(v) is not None))
    return Registration(device_id=_text(reply.get("deviceId")), upload_time=upload_time(reply.get("uploadTime")),
                        info_url=_text(reply.get("centerInfoURL")), data_url=_text(reply.get("centerDataURL")),
                        dic_version_url=_text(reply.get("loadDicVersionURL")),
                        metering_url=_text(reply.get("centerMeteringDataUrl")), other_urls=others, **extra)


def valid_value(valid: bool, style: ValidStyle) -> bool | str:
    """``valid`` as the target writes it."""
    if style == "boolean":
        return valid
    if style == "one_valid":
        return "1" if valid else "0"
    return "0" if valid else "1"


def decimal_text(value: float) -> str:
    """A number as plain decimal text, never in exponent form (1e-05 is 0.00001)."""
    text = repr(float(value))
    if "e" in text or "E" in text:
        text = format(Decimal(text), "f")
    return text


def wire_record(record: Record, tz: ZoneInfo, uploaded_at: datetime, style: ValidStyle) -> dict[str, Any]:
    """One record's fields on the wire, ``valid`` written in ``style``."""
    wire = record.to_wire(tz, uploaded_at)
    wire["valid"] = valid_value(record.valid, style)
    return wire
