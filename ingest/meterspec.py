"""An instruments file (计量器具台账) for ``nhjc meters load``: parsing and checking only.

The file is a JSON array of instrument objects by the field names the platforms' instrument
records use (``serNo``, ``meterLevel``, ``precisionLevel``, ``alignState``…), each with
its ``enterprise``.  It is checked whole before anything is stored: one bad entry and
nothing is loaded, and the one-line error names the first bad entry by its index,
enterprise and serial number.  Storing is :mod:`ingest.meters`' job.
"""

from __future__ import annotations

import calendar
import datetime as dt
import difflib
import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from ingest.credit_code import checked
from ingest.frames import MAX_ABS_VALUE, describe, normalise_code
from ingest.items import storable
from ingest.registryfile import RegistryFileError, check_entries, read_text

__all__ = [
    "ALIGN_STATES", "MeterSpec", "MetersError", "ReplacesSpec", "accuracy_key",
    "parse_meters_file", "parse_meters_file_bytes",
]

AlignState = Literal["verified", "calibrated", "none"]
ALIGN_STATES: tuple[str, ...] = ("verified", "calibrated", "none")
# The Chinese words a ledger exported from a metrology system uses for the same states.
_ALIGN_WORDS = {"检定": "verified", "已检定": "verified", "校准": "calibrated", "已校准": "calibrated",
                "未检定": "none", "未校准": "none", "无": "none"}
_ACCURACY = re.compile(r"^(?:0|[1-9][0-9]?)(?:\.[0-9]{1,2})?S?$")


class MetersError(RegistryFileError):
    """A whole instruments file is unusable (see RegistryFileError)."""


def accuracy_key(level: str) -> tuple[float, int] | None:
    """A sortable key of an accuracy class (smaller is more accurate): ``0.2S`` < ``0.2`` <
    ``0.5S`` < ``0.5`` < ``1.0``; None for an empty or unreadable class."""
    if not _ACCURACY.match(level):
        return None
    return float(level.rstrip("S")), 0 if level.endswith("S") else 1


def _date(v: object) -> object:
    if isinstance(v, str):
        try:
            d = dt.date.fromisoformat(v)
        except ValueError:
            raise ValueError("not a date YYYY-MM-DD") from None
        if len(v) != 10:
            raise ValueError("not a date YYYY-MM-DD")
        return d
    return v


def _instant(v: object) -> object:
    if isinstance(v, str):
        try:
            t = dt.datetime.fromisoformat(v.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValueError("not an RFC 3339 time (e.g. 2026-03-01T08:00:00+08:00)") from None
        if t.tzinfo is None:
            raise ValueError("needs a UTC offset (e.g. +08:00 or Z)")
        return t
    return v


def _add_months(d: dt.date, months: int) -> dt.date:
    y, m = divmod(d.month - 1 + months, 12)
    year, month = d.year + y, m + 1
    return dt.date(year, month, min(d.day, calendar.monthrange(year, month)[1]))


_Text = Annotated[str, StringConstraints(max_length=200)]


class ReplacesSpec(BaseModel):
    """What an instrument replaced: the old one's serial number, when, and the registers
    of both at that time (as the meters showed them)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    serNo: str = Field(min_length=1, max_length=64)
    time: dt.datetime
    oldFinal: float = Field(ge=0, le=MAX_ABS_VALUE)
    newInitial: float = Field(ge=0, le=MAX_ABS_VALUE)
    dataCode: str | None = None

    @field_validator("serNo", "dataCode", mode="before")
    @classmethod
    def _text(cls, v: object) -> object:
        return storable(v)

    @field_validator("time", mode="before")
    @classmethod
    def _time(cls, v: object) -> object:
        return _instant(v)

    @field_validator("dataCode")
    @classmethod
    def _code(cls, v: str | None) -> str | None:
        if v is None:
            return None
        norm = normalise_code(v)
        if norm is None:
            raise ValueError("not a data code pp-uu-eeee-cceeee-dd")
        return norm

    @model_validator(mode="after")
    def _finite(self) -> ReplacesSpec:
        if not (math.isfinite(self.oldFinal) and math.isfinite(self.newInitial)):
            raise ValueError("oldFinal and newInitial must be finite")
        return self


class MeterSpec(BaseModel):
    """One instrument of an instruments file (field names as the platforms use them)."""

    # strict: a number must be a JSON number, a text a JSON string; forbid: a misspelt
    # field ("nextAlingDate") is an error naming it, not a silently missing date.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    enterprise: str
    serNo: str = Field(min_length=1, max_length=64)
    meterName: str = Field(min_length=1, max_length=200)
    meterType: _Text = ""
    meterLevel: int = Field(ge=1, le=3)
    dataCode: str | None = None
    dataCodes: list[str] | None = Field(default=None, max_length=1000)
    reportRatio: float = Field(1.0, gt=0, le=1e9)
    precisionLevel: str = Field("", max_length=16)
    manufacturer: _Text = ""
    model: _Text = ""
    installPlace: _Text = ""
    alignState: AlignState = "none"
    alignCycle: int | None = Field(None, ge=1, le=600)
    lastAlignDate: dt.date | None = None
    nextAlignDate: dt.date | None = None
    alignOrg: _Text = ""
    retiredAt: dt.datetime | None = None
    replaces: ReplacesSpec | None = None

    @field_validator("enterprise", "serNo", "meterName", "meterType", "dataCode", "manufacturer",
                     "model", "installPlace", "alignOrg", mode="before")
    @classmethod
    def _text(cls, v: object) -> object:
        return storable(v)

    @field_validator("enterprise")
    @classmethod
    def _enterprise(cls, v: str) -> str:
        return checked(v)

    @field_validator("serNo", "meterName")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("is blank")
        return v

    @field_validator("dataCode")
    @classmethod
    def _code(cls, v: str | None) -> str | None:
        if v is None:
            return None
        norm = normalise_code(v)
        if norm is None:
            raise ValueError("not a data code pp-uu-eeee-cceeee-dd")
        return norm

    @field_validator("dataCodes")
    @classmethod
    def _codes(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        out: list[str] = []
        for i, code in enumerate(v):
            norm = normalise_code(code) if isinstance(code, str) else None
            if norm is None:
                raise ValueError(f"[{i}] {describe(code, 24)} is not a data code pp-uu-eeee-cceeee-dd")
            if norm in out:
                raise ValueError(f"[{i}] {norm} is listed twice")
            out.append(norm)
        return out

    @field_validator("precisionLevel", mode="before")
    @classmethod
    def _precision(cls, v: object) -> object:
        # A class written as a number (0.5) or with 级 ("1.0级") is the same class.
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = repr(float(v)) if isinstance(v, float) else str(v)
        if isinstance(v, str):
            v = v.strip().removesuffix("级").strip().upper()
            if v and not _ACCURACY.match(v):
                raise ValueError("not an accuracy class (e.g. 0.2S, 0.5, 1.0, 2)")
        return v

    @field_validator("alignState", mode="before")
    @classmethod
    def _state(cls, v: object) -> object:
        if isinstance(v, str):
            return _ALIGN_WORDS.get(v.strip(), v.strip().lower())
        return v

    @field_validator("lastAlignDate", "nextAlignDate", mode="before")
    @classmethod
    def _dates(cls, v: object) -> object:
        return _date(v)

    @field_validator("retiredAt", mode="before")
    @classmethod
    def _retired(cls, v: object) -> object:
        return _instant(v)

    @model_validator(mode="after")
    def _consistent(self) -> MeterSpec:
        if self.dataCode is not None and self.dataCodes is not None:
            raise ValueError("give dataCode (one item) or dataCodes (several), not both")
        if not math.isfinite(self.reportRatio):
            raise ValueError("reportRatio must be finite")
        last, nxt, cycle = self.lastAlignDate, self.nextAlignDate, self.alignCycle
        if last is not None and nxt is not None and nxt < last:
            raise ValueError("nextAlignDate is before lastAlignDate")
        if self.alignState != "none" and (last is None or nxt is None):
            # One date and the cycle give the other: a certificate is valid for the cycle
            # from the day of verification, to the day before its anniversary.
            if cycle is not None and last is not None:
                object.__setattr__(self, "nextAlignDate", _add_months(last, cycle) - dt.timedelta(days=1))
            elif cycle is not None and nxt is not None:
                object.__setattr__(self, "lastAlignDate", _add_months(nxt + dt.timedelta(days=1), -cycle))
            else:
                raise ValueError(f"alignState {self.alignState} needs lastAlignDate and nextAlignDate "
                                 "(or one of them and alignCycle)")
        codes = self.codes()
        r = self.replaces
        if r is not None:
            if r.serNo == self.serNo:
                raise ValueError("replaces.serNo is this instrument's own serial number")
            if not codes:
                raise ValueError("replaces needs the item this instrument measures (dataCode)")
            if r.dataCode is None and len(codes) > 1:
                raise ValueError("replaces.dataCode is needed: this instrument measures several items")
            if r.dataCode is not None and r.dataCode not in codes:
                raise ValueError(f"replaces.dataCode {r.dataCode} is not one of this instrument's items")
            if self.retiredAt is not None and self.retiredAt <= r.time:
                raise ValueError("retiredAt is not after replaces.time")
        return self

    def codes(self) -> list[str]:
        """The items it measures (hyphenated data codes)."""
        if self.dataCodes is not None:
            return list(self.dataCodes)
        return [] if self.dataCode is None else [self.dataCode]

    def replaced_code(self) -> str | None:
        """The item whose meter this instrument replaced."""
        if self.replaces is None:
            return None
        return self.replaces.dataCode or self.codes()[0]

    def record(self) -> dict[str, Any]:
        """The entry as loaded (after normalisation), for the history."""
        rec: dict[str, Any] = self.model_dump(mode="json", exclude_none=True)
        return rec


# ---- parsing ----------------------------------------------------------------------------

_FIELDS = tuple(MeterSpec.model_fields)
_REPLACES_FIELDS = tuple(ReplacesSpec.model_fields)


def _unknown(loc: tuple[int | str, ...]) -> str:
    inside = loc[:1] == ("replaces",)
    allowed = _REPLACES_FIELDS if inside else _FIELDS
    name = str(loc[-1])
    close = difflib.get_close_matches(name, allowed, n=1) if len(name) < 64 else []
    if not close and len(name) < 64:  # ser_no, align_state: the table's names for the fields
        lowered = {f.lower(): f for f in allowed}
        close = [lowered[k] for k in (name.replace("_", "").lower(),) if k in lowered]
    where = " in replaces" if inside else ""
    return describe(name) + where + (f" (did you mean {close[0]!r}?)" if close else "")


def _entry_name(obj: Mapping[str, Any]) -> str:
    parts = [describe(obj[k], 24) for k in ("enterprise", "serNo") if isinstance(obj.get(k), str)]
    return f" ({', '.join(parts)})" if parts else ""


def _cross_checks(specs: list[MeterSpec]) -> list[str]:
    """What no single entry shows: a serial number twice, two replacements of one old
    instrument, an old instrument retired in the file at another time than it was replaced."""
    bad: list[str] = []
    seen: dict[tuple[str, str], int] = {}
    replaced: dict[tuple[str, str], int] = {}
    for i, s in enumerate(specs):
        key = (s.enterprise, s.serNo)
        if key in seen:
            bad.append(f"entry [{i}] ({s.enterprise}, {s.serNo!r}): the same instrument as entry [{seen[key]}]")
        seen.setdefault(key, i)
        if s.replaces is not None:
            old = (s.enterprise, s.replaces.serNo)
            if old in replaced:
                bad.append(f"entry [{i}] ({s.enterprise}, {s.serNo!r}): replaces {s.replaces.serNo!r}, "
                           f"which entry [{replaced[old]}] replaces already")
            replaced.setdefault(old, i)
    for old, i in replaced.items():
        j = seen.get(old)
        r = specs[i].replaces
        if j is not None and r is not None and specs[j].retiredAt not in (None, r.time):
            bad.append(f"entry [{j}] ({old[0]}, {old[1]!r}): retiredAt differs from the time entry [{i}] "
                       "replaced it")
    return bad


def parse_meters_file(text: str) -> list[MeterSpec]:
    """A JSON array of instruments; any fault raises MetersError naming the first bad entry
    (by index, enterprise and serial number) and counting the others."""
    return check_entries(text, MeterSpec, what="an instrument", plural="instruments", error=MetersError,
                         name_of=_entry_name, unknown=_unknown, cross_checks=_cross_checks)


def parse_meters_file_bytes(data: bytes, encoding: str | None = None) -> list[MeterSpec]:
    """:func:`parse_meters_file` for the file's bytes (ingest.registryfile.read_text)."""
    return parse_meters_file(read_text(data, encoding, MetersError))
