"""The records the platforms take: one statistical period of one data code.

Frozen values built from the ``consumption`` and ``items`` rows; both protocol flavours
use the same field names, so the conversion to the wire lives here and the adapters
only choose the envelope.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

__all__ = [
    "CODE_PARTS",
    "TOTAL_CODE",
    "ItemConfig",
    "Record",
    "code_parts",
    "energy_of",
    "local_text",
    "scope_of",
]

# consumption.code of the enterprise total (综合能耗, kgce); each target maps it to the
# data code its platform assigned (TargetSettings.total_code).
TOTAL_CODE = "0000"
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"  # the platforms' yyyy-MM-dd HH:mm:ss
_DATA_CODE = re.compile(r"^\d{2}-\d{2}-\d{4}-\d{2}(\d{4})-\d{2}$")


def local_text(t: datetime, tz: ZoneInfo) -> str:
    """``yyyy-MM-dd HH:mm:ss`` in the platform's local time (t must be aware)."""
    if t.tzinfo is None:
        raise ValueError("naive datetime: the uplink only handles aware times")
    return t.astimezone(tz).strftime(_TIME_FORMAT)


def scope_of(data_code: str) -> int:
    """The narrowest scope a data code's shape allows (for codes without an item):
    zero process, unit and equipment parts is the whole plant (1); a process only, 2;
    down to a unit, 3; a piece of equipment, 4."""
    parts = data_code.split("-")
    if len(parts) != 5:
        return 1
    process, unit, equipment = parts[0], parts[1], parts[2]
    if equipment.strip("0"):
        return 4
    if unit.strip("0"):
        return 3
    return 2 if process.strip("0") else 1


def energy_of(data_code: str) -> str:
    """The 4-digit energy kind inside a data code (``..-cceeee-..``), "0000" if none."""
    m = _DATA_CODE.match(data_code)
    return m.group(1) if m else "0000"


# The parts of a data code ``pp-uu-eeee-cceeee-dd`` as the item configuration names
# them: process (2 digits), process unit (2), equipment (2) and equipment unit (2),
# energy class (2) and energy type (4), data usage (2).
CODE_PARTS = ("processCode", "processUnitCode", "equipmentCode", "equipmentUnitCode",
              "energyClassCode", "energyTypeCode", "dataUsageCode")
_PART_WIDTHS = (2, 2, 2, 2, 2, 4, 2)


def code_parts(data_code: str) -> dict[str, str]:
    """A data code's parts by their wire names (hyphens optional in the code);
    ValueError when it is not 16 digits."""
    digits = data_code.replace("-", "")
    if len(digits) != sum(_PART_WIDTHS) or not digits.isascii() or not digits.isdigit():
        raise ValueError(f"not a data code of 16 digits: {data_code!r}")
    parts: dict[str, str] = {}
    at = 0
    for name, width in zip(CODE_PARTS, _PART_WIDTHS, strict=True):
        parts[name] = digits[at:at + width]
        at += width
    return parts


@dataclass(frozen=True, slots=True)
class Record:
    """One period of one item, as a target will receive it."""

    enterprise: str
    code: str           # consumption.code (the outbox key)
    data_code: str      # what the platform sees (code, or the target's total code)
    stat_type: int
    period_start: datetime
    value: float
    valid: bool
    scope: int
    input_type: int
    revision: int
    attempts: int = 0   # delivery attempts so far for this content (for the backoff)

    @property
    def key(self) -> tuple[str, str, int, datetime]:
        return (self.enterprise, self.code, self.stat_type, self.period_start)

    def to_wire(self, tz: ZoneInfo, uploaded_at: datetime) -> dict[str, Any]:
        return {
            "dataCode": self.data_code,
            "dataValue": self.value,
            "inputType": self.input_type,
            "statType": self.stat_type,
            "statDate": local_text(self.period_start, tz),
            "uploadDate": local_text(uploaded_at, tz),
            "scope": self.scope,
            "valid": self.valid,
        }


@dataclass(frozen=True, slots=True)
class ItemConfig:
    """One entry of the item configuration (collectItemConfig) sent before data.

    The platform wants the collection frequency (statType 0: 15-minute values) and the
    plausible range of one such value.  Our items carry min/max per hour for
    cumulative and interval items, so the range is scaled to a quarter hour; instant
    items' min/max are values and pass unchanged.
    """

    data_code: str
    name: str
    energy: str
    scope: int
    input_type: int
    kind: str = "cumulative"
    min: float | None = None
    max: float | None = None

    def to_wire(self) -> dict[str, Any]:
        factor = 1.0 if self.kind == "instant" else 0.25
        wire: dict[str, Any] = {
            "dataCode": self.data_code,
            "name": self.name,
            "energyTypeCode": self.energy,
            "scope": self.scope,
            "inputType": self.input_type,
            "statType": 0,
        }
        if self.max is not None:
            wire["dataValueMax"] = self.max * factor
        if self.min is not None:
            wire["dataValueMin"] = self.min * factor
        return wire
