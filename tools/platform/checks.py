"""The mock platform's checks of what an end device sends: the platforms' message
fields and their ranges, enterprise credit codes and data codes.

Written independently of :mod:`uplink.records` on purpose: the mock judges the
uplink's output, so it must not share the code that produces it.  Each check returns
the first problem as a short sentence naming the field, or ``None``.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta
from typing import Any

from ingest.credit_code import is_valid

__all__ = [
    "GAUGE_FIELDS", "check_config_item", "check_enterprise", "check_gauge", "check_profile", "check_record",
    "check_replacement", "check_verification", "parse_platform_time", "record_key",
]

_DATA_CODE = re.compile(r"^(\d{2})-(\d{2})-(\d{4})-(\d{6})-(\d{2})$")
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
_ENERGY = re.compile(r"^\d{4}$")
_REGION = re.compile(r"^\d{6}$")
# The data code's parts as the configuration names them, from the code's groups:
# process, process unit, equipment and its unit (the third group split), energy class
# and type (the fourth group split), data usage.
_PARTS = ("processCode", "processUnitCode", "equipmentCode", "equipmentUnitCode", "energyClassCode",
          "energyTypeCode", "dataUsageCode")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse_platform_time(v: Any) -> datetime | None:
    """``yyyy-MM-dd HH:mm:ss`` as a naive local datetime, or None."""
    if not isinstance(v, str) or not _TIME.match(v):
        return None
    try:
        return datetime.strptime(v, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None


def _period_end(stat_type: int, start: datetime) -> datetime:
    if stat_type == 0:
        return start + timedelta(minutes=15)
    if stat_type == 1:
        return start + timedelta(days=1)
    if stat_type == 2:
        return start.replace(year=start.year + (start.month == 12), month=start.month % 12 + 1)
    return start.replace(year=start.year + 1)


def _aligned(stat_type: int, t: datetime) -> bool:
    if t.second or t.microsecond:
        return False
    if stat_type == 0:
        return t.minute % 15 == 0
    if t.hour or t.minute:
        return False
    if stat_type == 1:
        return True
    if stat_type == 2:
        return t.day == 1
    return t.day == 1 and t.month == 1


def check_enterprise(code: Any) -> str | None:
    if not isinstance(code, str) or not is_valid(code):
        return f"enterpriseCode {code!r} is not a valid unified social credit code (GB 32100)"
    return None


def _check_data_code(code: Any, scope: Any) -> str | None:
    m = _DATA_CODE.match(code) if isinstance(code, str) else None
    if m is None:
        return f"dataCode {code!r} is not pp-uu-eeee-cceeee-dd"
    if scope == 1 and (m.group(1), m.group(2), m.group(3)) != ("00", "00", "0000"):
        return f"dataCode {code!r} has scope 1 (whole plant) but a process, unit or equipment part"
    return None


def check_record(rec: Any) -> str | None:
    """One data record: every field present, shaped and consistent."""
    if not isinstance(rec, dict):
        return "a record is not a JSON object"
    missing = [f for f in ("dataCode", "dataValue", "inputType", "statType", "statDate", "uploadDate",
                           "scope", "valid") if f not in rec]
    if missing:
        return f"missing {', '.join(missing)}"
    st, scope = rec["statType"], rec["scope"]
    if not _is_int(scope) or not 1 <= scope <= 4:
        return f"scope {scope!r} is not 1..4"
    if (problem := _check_data_code(rec["dataCode"], scope)) is not None:
        return problem
    if not _is_number(rec["dataValue"]):
        return f"dataValue {rec['dataValue']!r} is not a finite number"
    if not _is_int(rec["inputType"]) or not 1 <= rec["inputType"] <= 5:
        return f"inputType {rec['inputType']!r} is not 1..5"
    if not _is_int(st) or not 0 <= st <= 3:
        return f"statType {st!r} is not 0..3"
    if not (isinstance(rec["valid"], bool) or rec["valid"] in ("0", "1")):
        return f"valid {rec['valid']!r} is not true/false"
    stat_date = parse_platform_time(rec["statDate"])
    if stat_date is None:
        return f"statDate {rec['statDate']!r} is not yyyy-MM-dd HH:mm:ss"
    if not _aligned(st, stat_date):
        what = ("a 15-minute period", "a day", "a month", "a year")[st]
        return f"statDate {rec['statDate']!r} is not the start of {what} (statType {st})"
    upload = parse_platform_time(rec["uploadDate"])
    if upload is None:
        return f"uploadDate {rec['uploadDate']!r} is not yyyy-MM-dd HH:mm:ss"
    if upload < _period_end(st, stat_date):
        return f"uploadDate {rec['uploadDate']!r} is before the period starting {rec['statDate']} ended"
    return None


def _parts_of(code: str) -> dict[str, str]:
    m = _DATA_CODE.match(code)
    assert m is not None
    pp, uu, eq, ce, dd = m.groups()
    return dict(zip(_PARTS, (pp, uu, eq[:2], eq[2:], ce[:2], ce[2:], dd), strict=True))


def check_profile(profile: Any, enterprise: str) -> str | None:
    """The configuration's ``enterprise`` object: this enterprise's credit code, a name
    and a 6-digit region."""
    if not isinstance(profile, dict):
        return "enterprise is not a JSON object"
    if profile.get("code") != enterprise and profile.get("corporationCode") != enterprise:
        return f"enterprise.code {profile.get('code')!r} is not the request's enterpriseCode"
    if not isinstance(profile.get("name"), str) or not profile["name"]:
        return "enterprise.name is empty"
    if not isinstance(profile.get("regionCode"), str) or not _REGION.match(profile["regionCode"]):
        return f"enterprise.regionCode {profile.get('regionCode')!r} is not a 6-digit administrative code"
    return None


def check_config_item(item: Any, *, parts: bool = False) -> str | None:
    """One collectItemConfig entry; with ``parts``, also the data code's parts and
    ``collectSystemName``."""
    if not isinstance(item, dict):
        return "a configuration entry is not a JSON object"
    missing = [f for f in ("dataCode", "name", "energyTypeCode", "scope", "inputType", "statType")
               if f not in item]
    if missing:
        return f"missing {', '.join(missing)}"
    if not _is_int(item["scope"]) or not 1 <= item["scope"] <= 4:
        return f"scope {item['scope']!r} is not 1..4"
    if (problem := _check_data_code(item["dataCode"], item["scope"])) is not None:
        return problem
    if not isinstance(item["name"], str) or not item["name"]:
        return "name is empty"
    if not isinstance(item["energyTypeCode"], str) or not _ENERGY.match(item["energyTypeCode"]):
        return f"energyTypeCode {item['energyTypeCode']!r} is not 4 digits"
    if not _is_int(item["inputType"]) or not 1 <= item["inputType"] <= 5:
        return f"inputType {item['inputType']!r} is not 1..5"
    if not _is_int(item["statType"]) or not 0 <= item["statType"] <= 3:
        return f"statType {item['statType']!r} is not 0..3"
    for f in ("dataValueMax", "dataValueMin"):
        if f in item and item[f] is not None and not _is_number(item[f]):
            return f"{f} {item[f]!r} is not a finite number"
    if parts:
        for name, value in _parts_of(item["dataCode"]).items():
            if item.get(name) != value:
                return f"{name} {item.get(name)!r} is not {value!r}, that part of dataCode {item['dataCode']}"
        if not isinstance(item.get("collectSystemName"), str) or not item["collectSystemName"]:
            return "collectSystemName is empty"
    return None


def record_key(enterprise: str, rec: dict[str, Any]) -> tuple[str, str, int, str]:
    """What the platform deduplicates on."""
    return (enterprise, rec["dataCode"], rec["statType"], rec["statDate"])


# -- measuring instruments ------------------------------------------------------------

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_ALIGN_STATES = ("检定", "校准", "未检定")
GAUGE_FIELDS = ("serNo", "meterName", "meterType", "meterLevel", "dataCode", "reportRatio", "precisionLevel",
                "manufacturer", "model", "installPlace", "alignState", "alignCycle", "lastAlignDate",
                "nextAlignDate", "alignOrg")


def _check_date(name: str, v: Any, *, required: bool = False) -> str | None:
    if v is None and not required:
        return None
    if not isinstance(v, str) or not _DATE.match(v):
        return f"{name} {v!r} is not yyyy-MM-dd"
    try:
        datetime.strptime(v, "%Y-%m-%d")
    except ValueError:
        return f"{name} {v!r} is not a date"
    return None


def _check_ser_no(obj: dict[str, Any]) -> str | None:
    if not isinstance(obj.get("serNo"), str) or not obj["serNo"]:
        return f"serNo {obj.get('serNo')!r} is empty"
    return None


def check_gauge(obj: Any) -> str | None:
    """One instrument object (gaugeConfigure's data, centerMeteringDataUrl's entries):
    exactly the platforms' field names, each shaped."""
    if not isinstance(obj, dict):
        return "the instrument is not a JSON object"
    if unknown := sorted(set(obj) - set(GAUGE_FIELDS)):
        return f"unknown instrument fields {', '.join(unknown)}"
    if missing := [f for f in ("serNo", "meterName", "meterLevel", "alignState") if f not in obj]:
        return f"missing {', '.join(missing)}"
    if (problem := _check_ser_no(obj)) is not None:
        return problem
    if not isinstance(obj["meterName"], str) or not obj["meterName"]:
        return "meterName is empty"
    if not _is_int(obj["meterLevel"]) or not 1 <= obj["meterLevel"] <= 3:
        return f"meterLevel {obj['meterLevel']!r} is not 1..3"
    for code in filter(None, str(obj.get("dataCode") or "").split(",")):
        if not _DATA_CODE.match(code):
            return f"dataCode {code!r} is not pp-uu-eeee-cceeee-dd"
    ratio = obj.get("reportRatio", 1)
    if not _is_number(ratio) or ratio <= 0:
        return f"reportRatio {ratio!r} is not a number above 0"
    if obj["alignState"] not in _ALIGN_STATES:
        return f"alignState {obj['alignState']!r} is not one of {', '.join(_ALIGN_STATES)}"
    cycle = obj.get("alignCycle")
    if cycle is not None and (not _is_int(cycle) or cycle <= 0):
        return f"alignCycle {cycle!r} is not a number of months"
    for name in ("lastAlignDate", "nextAlignDate"):
        if (problem := _check_date(name, obj.get(name))) is not None:
            return problem
    for name in ("meterType", "precisionLevel", "manufacturer", "model", "installPlace", "alignOrg"):
        if name in obj and not isinstance(obj[name], str):
            return f"{name} {obj[name]!r} is not text"
    return None


def check_verification(obj: Any) -> str | None:
    """gaugeVerifyConfigure's data: one verification period of an instrument."""
    if not isinstance(obj, dict):
        return "the verification is not a JSON object"
    if (problem := _check_ser_no(obj)) is not None:
        return problem
    if obj.get("alignState") not in _ALIGN_STATES[:2]:
        return f"alignState {obj.get('alignState')!r} is not 检定 or 校准"
    for name in ("lastAlignDate", "nextAlignDate"):
        if (problem := _check_date(name, obj.get(name), required=True)) is not None:
            return problem
    if obj["nextAlignDate"] < obj["lastAlignDate"]:
        return f"nextAlignDate {obj['nextAlignDate']} is before lastAlignDate {obj['lastAlignDate']}"
    return None


def check_replacement(obj: Any) -> str | None:
    """gaugeReplaceConfigure's data: one recorded replacement on one item."""
    if not isinstance(obj, dict):
        return "the replacement is not a JSON object"
    if (problem := _check_ser_no(obj)) is not None:
        return problem
    if not isinstance(obj.get("dataCode"), str) or not _DATA_CODE.match(obj["dataCode"]):
        return f"dataCode {obj.get('dataCode')!r} is not pp-uu-eeee-cceeee-dd"
    if parse_platform_time(obj.get("replaceTime")) is None:
        return f"replaceTime {obj.get('replaceTime')!r} is not yyyy-MM-dd HH:mm:ss"
    for name in ("oldFinalValue", "newInitialValue"):
        if not _is_number(obj.get(name)):
            return f"{name} {obj.get(name)!r} is not a finite number"
    return None
