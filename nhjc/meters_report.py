"""GB 17167 at a glance (``nhjc meters report``): per enterprise, the items no instrument
measures, the instruments whose accuracy class falls short of the standard's table
(config/gb17167.toml), those out of verification and those due within 30 days.

Judged on one local date (``today``, injectable), from the instruments in use (not
retired).  An instrument is in verification on a date when it is verified or calibrated
and one of its recorded verification periods holds the date.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

import config
from ingest.meterspec import accuracy_key

__all__ = ["DUE_DAYS", "FORMATS", "Finding", "Requirement", "build_report", "judge", "load_table", "render"]

FORMATS = ("table", "json", "csv")
DUE_DAYS = 30
TABLE_FILE = Path(config.__file__).parent / "gb17167.toml"


@dataclass(frozen=True, slots=True)
class Requirement:
    name: str
    energy: frozenset[str]
    level: str  # the accuracy class asked for


@dataclass(frozen=True, slots=True)
class Table:
    standard: str
    levels: frozenset[int]
    rows: tuple[Requirement, ...]

    def required(self, energies: Sequence[str], meter_level: int) -> Requirement | None:
        """The strictest row that applies to an instrument of this level measuring these
        energy kinds (None: the table asks nothing of it)."""
        if meter_level not in self.levels:
            return None
        keyed = [(k, r) for r in self.rows if r.energy & set(energies) and (k := accuracy_key(r.level))]
        return min(keyed, key=lambda kr: kr[0])[1] if keyed else None


def load_table(path: Path = TABLE_FILE) -> Table:
    """The accuracy table; ValueError naming the file and the fault when it is unusable."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
        rows = tuple(Requirement(str(r["name"]), frozenset(str(e) for e in r["energy"]), str(r["class"]))
                     for r in doc["requirement"])
        table = Table(str(doc["standard"]), frozenset(int(x) for x in doc["levels"]), rows)
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a usable accuracy table ({type(exc).__name__}: {exc})") from None
    for r in rows:
        if accuracy_key(r.level) is None:
            raise ValueError(f"{path}: requirement {r.name!r}: class {r.level!r} is not an accuracy class")
    return table


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of the report."""

    enterprise: str
    finding: str  # no_instrument | below_class | out_of_verification | due_soon
    code: str = ""
    serNo: str = ""
    meterName: str = ""
    meterLevel: int | None = None
    precisionLevel: str = ""
    required: str = ""
    nextAlignDate: str = ""
    detail: str = ""


@dataclass(slots=True)
class EnterpriseReport:
    enterprise: str
    items: int = 0
    instruments: int = 0
    in_verification: int = 0
    findings: list[Finding] = field(default_factory=list)


_ITEMS = "SELECT enterprise, code, energy FROM items WHERE $1::text IS NULL OR enterprise = $1"

# Instruments in use, with the verification period that holds $2 (the latest ending one).
_METERS = """
SELECT m.enterprise, m.ser_no, m.meter_name, m.meter_level, m.data_codes, m.precision_level,
       m.align_state, m.next_align_date,
       (SELECT max(v.valid_until) FROM meter_verifications v
         WHERE v.enterprise = m.enterprise AND v.ser_no = m.ser_no
           AND v.valid_from <= $2 AND v.valid_until >= $2) AS valid_until
FROM meters m
WHERE ($1::text IS NULL OR m.enterprise = $1) AND (m.retired_at IS NULL OR m.retired_at > $2::date)
ORDER BY m.enterprise, m.ser_no
"""


def judge(items: Sequence[Any], meters: Sequence[Any], today: dt.date, table: Table) -> list[EnterpriseReport]:
    """The report from rows of items (enterprise, code, energy) and instruments in use
    (the columns of _METERS).  Pure."""
    reports: dict[str, EnterpriseReport] = {}

    def of(enterprise: str) -> EnterpriseReport:
        return reports.setdefault(enterprise, EnterpriseReport(enterprise))

    energy = {(i["enterprise"], i["code"]): i["energy"] for i in items}
    measured = {(m["enterprise"], c) for m in meters for c in m["data_codes"]}
    for (ent, code) in sorted(energy):
        rep = of(ent)
        rep.items += 1
        if (ent, code) not in measured:
            rep.findings.append(Finding(ent, "no_instrument", code=code, detail="no instrument in use measures it"))
    for m in meters:
        rep = of(m["enterprise"])
        rep.instruments += 1
        base = {"enterprise": m["enterprise"], "serNo": m["ser_no"], "meterName": m["meter_name"],
                "meterLevel": m["meter_level"], "precisionLevel": m["precision_level"],
                "code": ",".join(m["data_codes"]),
                "nextAlignDate": "" if m["next_align_date"] is None else m["next_align_date"].isoformat()}
        kinds = sorted({energy[(m["enterprise"], c)] for c in m["data_codes"] if (m["enterprise"], c) in energy})
        req = table.required(kinds, m["meter_level"])
        if req is not None:
            have, want = accuracy_key(m["precision_level"]), accuracy_key(req.level)
            if have is None:
                rep.findings.append(Finding(**base, finding="below_class", required=req.level,
                                            detail=f"no accuracy class given ({req.name})"))
            elif want is not None and have > want:
                rep.findings.append(Finding(**base, finding="below_class", required=req.level,
                                            detail=f"{table.standard}: {req.name}"))
        until = m["valid_until"]
        if m["align_state"] == "none":
            rep.findings.append(Finding(**base, finding="out_of_verification", detail="not verified or calibrated"))
        elif until is None:
            rep.findings.append(Finding(**base, finding="out_of_verification",
                                        detail=f"no verification period holds {today.isoformat()}"))
        else:
            rep.in_verification += 1
            left = (until - today).days
            if left <= DUE_DAYS:
                rep.findings.append(Finding(**{**base, "nextAlignDate": until.isoformat()}, finding="due_soon",
                                            detail=f"{left} day(s) left"))
    return [reports[e] for e in sorted(reports)]


async def build_report(conn: asyncpg.Connection, today: dt.date, enterprise: str | None = None,
                       table: Table | None = None) -> list[EnterpriseReport]:
    items = await conn.fetch(_ITEMS, enterprise)
    meters = await conn.fetch(_METERS, enterprise, today)
    return judge(items, meters, today, table if table is not None else load_table())


def _summary(r: EnterpriseReport) -> dict[str, Any]:
    kinds = ("no_instrument", "below_class", "out_of_verification", "due_soon")
    out: dict[str, Any] = {"enterprise": r.enterprise, "items": r.items, "instruments": r.instruments,
                           "in_verification": r.in_verification}
    for k in kinds:
        out[k] = [{f: v for f, v in asdict(x).items() if f not in ("enterprise", "finding")}
                  for x in r.findings if x.finding == k]
    return out


_CSV_FIELDS = tuple(Finding.__dataclass_fields__)


def render(reports: Sequence[EnterpriseReport], fmt: str) -> str:
    """The report as text: ``table`` for reading, ``json`` (an array, one object per
    enterprise), ``csv`` (one row per finding, with a header)."""
    if fmt == "json":
        return json.dumps([_summary(r) for r in reports], ensure_ascii=False, indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, lineterminator="\n")
        w.writeheader()
        for r in reports:
            for x in r.findings:
                w.writerow({k: ("" if v is None else v) for k, v in asdict(x).items()})
        return buf.getvalue()
    lines: list[str] = []
    titles = {"no_instrument": "items without an instrument", "below_class": "accuracy class short of the standard",
              "out_of_verification": "out of verification", "due_soon": f"due within {DUE_DAYS} days"}
    for r in reports:
        lines.append(f"{r.enterprise}: {r.items} item(s), {r.instruments} instrument(s) in use, "
                     f"{r.in_verification} in verification")
        for kind, title in titles.items():
            found = [x for x in r.findings if x.finding == kind]
            if not found:
                continue
            lines.append(f"  {title} ({len(found)}):")
            for x in found:
                if kind == "no_instrument":
                    lines.append(f"    {x.code}")
                    continue
                cls = f" class {x.precisionLevel or '-'}" + (f" < {x.required}" if x.required else "")
                due = f" next {x.nextAlignDate}" if x.nextAlignDate else ""
                lines.append(f"    {x.serNo} {x.meterName} (level {x.meterLevel}, {x.code or 'no item'})"
                             f"{cls if kind == 'below_class' else ''}{due}: {x.detail}")
    if not reports:
        lines.append("no items and no instruments")
    return "\n".join(lines) + "\n"
