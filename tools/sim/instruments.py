"""Measuring instruments of the simulated enterprises, in the instruments file format
(``nhjc meters load FILE``: a JSON array of objects named as the platforms name them).

Every simulated item has its instrument: an electricity meter, a flow meter, a belt
scale, or a transducer for an instant item, ranked by GB 17167's levels from the item's
scope (1 the plant's incoming energy, 2 processes, 3 units and equipment), with an
accuracy class fitting that level.  Most are in verification (verified, or calibrated
for flow meters), a few are not: :data:`OUT_OF_DATE` whose verification ran out, and
one never verified.  One replacement can be planned (:func:`plan_replacement`): the
simulator swaps the register at that time, and :func:`replacement_record` turns what it
did into the new instrument's entry with its ``replaces`` record.
"""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import orjson

from tools.sim.enterprises import Enterprise
from tools.sim.itemtree import Item

__all__ = ["OUT_OF_DATE", "AppliedReplacement", "PlannedReplacement", "instruments_json",
           "instruments_records", "plan_replacement", "replacement_record", "serial"]

OUT_OF_DATE = 3  # instruments whose verification has run out, across the pilot
_MANUFACTURERS = (("威胜集团", "DTZ341"), ("林洋能源", "DTZY71"), ("炬华科技", "DSZ1296"),
                  ("川仪股份", "LUGB"), ("横河川仪", "AXF"), ("艾默生", "Micro Motion F"))
_TYPES = {"3300": "电能表", "0100": "电子皮带秤", "1500": "气体涡街流量计", "9900": "电磁流量计"}
# Accuracy classes by GB 17167 level, electricity and the rest.
_CLASS = {"3300": {1: "0.5S", 2: "1.0", 3: "2"}, "*": {1: "1.0", 2: "2", 3: "2.5"}}


@dataclass(frozen=True, slots=True)
class PlannedReplacement:
    """A meter the simulator replaces at ``at`` (Unix seconds, between two ticks): the
    new register starts at ``new_initial``."""

    enterprise: str
    code: str
    at: int
    new_initial: float = 0.0


@dataclass(frozen=True, slots=True)
class AppliedReplacement:
    """What the simulator did: the old register read ``old_final`` at ``at``."""

    enterprise: str
    code: str
    at: int
    old_final: float
    new_initial: float


def serial(enterprise: str, code: str, generation: int = 0) -> str:
    """A stable serial number for the instrument measuring an item (a replacement is
    generation 1)."""
    digest = hashlib.sha1(f"{enterprise}/{code}/{generation}".encode()).hexdigest()[:8].upper()
    return f"SN{digest}"


def _type(item: Item) -> str:
    if item.kind == "instant":
        return "功率变送器" if item.energy == "3300" else "流量变送器"
    return _TYPES.get(item.energy, "流量计")


def _record(e: Enterprise, item: Item, rng: np.random.Generator, today: dt.date) -> dict[str, object]:
    level = min(item.scope, 3)
    maker, model = _MANUFACTURERS[int(rng.integers(len(_MANUFACTURERS)))]
    electricity = item.energy == "3300"
    cycle = 12 if level == 1 or not electricity else 24
    last = today - dt.timedelta(days=int(rng.integers(20, 30 * cycle - 40)))
    return {
        "enterprise": e.code, "serNo": serial(e.code, item.code), "meterName": f"{item.name}计量表",
        "meterType": _type(item), "meterLevel": level, "dataCode": item.code, "reportRatio": item.multiplier,
        "precisionLevel": _CLASS["3300" if electricity else "*"][level], "manufacturer": maker, "model": model,
        "installPlace": item.name.split(" ")[0], "alignState": "verified" if electricity else "calibrated",
        "alignCycle": cycle, "lastAlignDate": last.isoformat(),
        "nextAlignDate": (_months_later(last, cycle) - dt.timedelta(days=1)).isoformat(),
        "alignOrg": "安徽省计量科学研究院",
    }


def _months_later(d: dt.date, months: int) -> dt.date:
    y, m = divmod(d.month - 1 + months, 12)
    year, month = d.year + y, m + 1
    return dt.date(year, month, min(d.day, calendar.monthrange(year, month)[1]))


def instruments_records(enterprises: Sequence[Enterprise], *, today: dt.date, seed: int = 0,
                        out_of_date: int = OUT_OF_DATE) -> list[dict[str, object]]:
    """One instrument per item of every enterprise.  The first ``out_of_date`` enterprises
    (one each) have an instrument whose verification ran out 2 to 8 weeks before
    ``today``, the next one an instrument never verified (alignState none), and the next
    one an instrument due within 30 days.  The same seed and day give the same file."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(11,)))
    out: list[dict[str, object]] = []
    for n, e in enumerate(enterprises):
        records = [_record(e, item, rng, today) for item in e.items]
        # The odd ones out are sub-meters (level 2 or 3) where there are some, so that
        # the plant's own totals stay valid in the demo.
        odd = next((r for r in records if r["meterLevel"] != 1 and r["meterType"] != "功率变送器"), records[-1])
        if n < out_of_date:
            expired = today - dt.timedelta(days=int(rng.integers(14, 57)))
            cycle = int(str(odd["alignCycle"]))
            odd["lastAlignDate"] = (_months_later(expired + dt.timedelta(days=1), -cycle)).isoformat()
            odd["nextAlignDate"] = expired.isoformat()
        elif n == out_of_date:
            odd["alignState"] = "none"
            for key in ("lastAlignDate", "nextAlignDate", "alignOrg"):
                odd.pop(key)
        elif n == out_of_date + 1:
            due = today + dt.timedelta(days=int(rng.integers(5, 25)))
            cycle = int(str(odd["alignCycle"]))
            odd["lastAlignDate"] = (_months_later(due + dt.timedelta(days=1), -cycle)).isoformat()
            odd["nextAlignDate"] = due.isoformat()
        out.extend(records)
    return out


def instruments_json(enterprises: Sequence[Enterprise], *, today: dt.date, seed: int = 0) -> str:
    return orjson.dumps(instruments_records(enterprises, today=today, seed=seed),
                        option=orjson.OPT_INDENT_2).decode()


def plan_replacement(enterprises: Sequence[Enterprise], at: int) -> PlannedReplacement | None:
    """The replacement the demo shows: the first whole-plant electricity register of the
    first enterprise (or its first register), at ``at``; the new meter starts at 0."""
    if not enterprises:
        return None
    items = [i for i in enterprises[0].items if i.kind == "cumulative"]
    if not items:
        return None
    chosen = next((i for i in items if i.scope == 1 and i.energy == "3300"), items[0])
    return PlannedReplacement(enterprises[0].code, chosen.code, int(at), 0.0)


def replacement_record(records: Sequence[dict[str, object]], done: AppliedReplacement) -> dict[str, object]:
    """The new instrument's entry: the old one's, with a new serial number, verified on
    the day of the replacement, and ``replaces`` saying when and with which registers."""
    old = next(r for r in records if r["enterprise"] == done.enterprise and r.get("dataCode") == done.code)
    when = dt.datetime.fromtimestamp(done.at, dt.timezone(dt.timedelta(hours=8)))
    new = {k: v for k, v in old.items() if k != "replaces"}
    cycle = int(str(new.get("alignCycle") or 12))
    new.update(serNo=serial(done.enterprise, done.code, 1), alignState="verified", alignCycle=cycle,
               lastAlignDate=when.date().isoformat(),
               nextAlignDate=(_months_later(when.date(), cycle) - dt.timedelta(days=1)).isoformat(),
               alignOrg="安徽省计量科学研究院",
               replaces={"serNo": old["serNo"], "time": when.isoformat(), "oldFinal": done.old_final,
                         "newInitial": done.new_initial})
    return new
