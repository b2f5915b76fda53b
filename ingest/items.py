"""The data-item registry's outside side: item objects from the retained
``.../items`` topic (docs/wire.md) or from a file for ``nhjc items load``.

Parsing only; storing them is ingest.registry's job.  Whatever the input, the
parsers return items or raise :class:`ItemsError`, never anything else; every text an
item keeps is one PostgreSQL stores (no NUL, no lone surrogate), and every number is
bounded so that the aggregation's products stay far from the float64 limit.
"""

from __future__ import annotations

import codecs
import difflib
import math
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ingest.credit_code import checked
from ingest.frames import MAX_ABS_VALUE, describe, encode_json, normalise_code, pg_text

__all__ = [
    "MAX_COEFFICIENT", "MAX_MULTIPLIER", "MAX_RANGE", "ItemSpec", "ItemsError", "decode_items_file",
    "parse_items_file", "parse_items_file_bytes", "parse_items_payload", "storable",
]

# Bounds far beyond any real item (a CT/PT ratio of 500 kV/100 V by 4000 A/1 A is 2e7;
# the largest kgce coefficient, per 10^4 t of coal, about 7e6) that keep a reading
# (at most ingest.frames.MAX_ABS_VALUE) times multiplier times coefficient, summed over
# any number of items and periods, well inside float64.
MAX_MULTIPLIER = 1e9
MAX_COEFFICIENT = 1e9
MAX_RANGE = MAX_ABS_VALUE * MAX_MULTIPLIER  # min and max are after the multiplier


def storable(v: object) -> object:
    """A field's text when PostgreSQL can store it (no NUL, no lone surrogate); else
    ValueError saying why, without echoing the value (for the models' validators)."""
    if isinstance(v, str):
        if "\x00" in v:
            raise ValueError("holds a NUL character (\\u0000), which PostgreSQL cannot store")
        if not v.isascii():
            try:
                v.encode()
            except UnicodeEncodeError:
                raise ValueError("holds a lone surrogate (\\ud800-\\udfff), which is not text") from None
    return v

class ItemsError(ValueError):
    """A whole items document is unusable; ``reason`` is the quarantine reason code
    (``bad_json``, ``bad_shape``, ``bad_version``, ``bad_item``; ``bad_encoding`` for a
    file).  The text is safe to store and print."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(pg_text(detail))
        self.reason = reason


class ItemSpec(BaseModel):
    # strict: a number must be a JSON number (not "12" or true), a text a JSON string;
    # forbid: a misspelt field ("multipler") is an error, not a silent default.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    enterprise: str
    code: str
    name: str = ""
    energy: str = Field(pattern=r"^[0-9]{4}$")
    unit: str = Field(min_length=1, max_length=32)
    kind: Literal["cumulative", "interval", "instant"]
    multiplier: float = Field(1.0, gt=0, le=MAX_MULTIPLIER)
    rollover: float | None = Field(None, gt=0, le=MAX_ABS_VALUE)
    min: float | None = Field(None, ge=-MAX_RANGE, le=MAX_RANGE)
    max: float | None = Field(None, ge=-MAX_RANGE, le=MAX_RANGE)
    scope: int = Field(1, ge=1, le=4)
    input_type: int = Field(4, ge=1, le=5)
    coefficient: float | None = Field(None, ge=0, le=MAX_COEFFICIENT)

    @field_validator("enterprise", "code", "name", "energy", "unit", mode="before")
    @classmethod
    def _storable(cls, v: object) -> object:
        return storable(v)

    @field_validator("enterprise")
    @classmethod
    def _enterprise(cls, v: str) -> str:
        return checked(v)

    @field_validator("code")
    @classmethod
    def _code(cls, v: str) -> str:
        norm = normalise_code(v)
        if norm is None:
            raise ValueError("not a data code pp-uu-eeee-cceeee-dd")
        return norm

    @model_validator(mode="after")
    def _consistent(self) -> ItemSpec:
        for name in ("multiplier", "rollover", "min", "max", "coefficient"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(v):
                raise ValueError(f"{name} must be finite")
        if self.rollover is not None and self.kind != "cumulative":
            raise ValueError("rollover applies to cumulative items only")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min is greater than max")
        return self

    def record(self) -> dict[str, object]:
        return self.model_dump()


_FIELDS = tuple(ItemSpec.model_fields)


def _error_text(exc: ValidationError) -> str:
    errors = exc.errors()
    unknown = [str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden"]
    if unknown:
        named = ", ".join(_unknown_field(u) for u in unknown[:3])
        more = f" (and {len(unknown) - 3} more)" if len(unknown) > 3 else ""
        return f"unknown field {named}{more}"
    e = errors[0]
    loc = ".".join(str(p) for p in e["loc"])  # empty for the checks across fields
    return f"{loc}: {e['msg']}" if loc else e["msg"]


def _unknown_field(name: str) -> str:
    close = difflib.get_close_matches(name, _FIELDS, n=1) if len(name) < 64 else []
    return describe(name) + (f" (did you mean {close[0]!r}?)" if close else "")


def _parse_list(raw_items: list[object], enterprise: str | None) -> tuple[list[ItemSpec], list[tuple[int, str]]]:
    good: list[ItemSpec] = []
    bad: list[tuple[int, str]] = []
    for i, obj in enumerate(raw_items):
        if type(obj) is not dict:
            bad.append((i, f"an item must be a JSON object, not {describe(obj)}"))
            continue
        fields = obj if enterprise is None else {**obj, "enterprise": enterprise}  # the topic is the authority
        try:
            good.append(ItemSpec.model_validate(fields))
        except ValidationError as exc:
            bad.append((i, pg_text(_error_text(exc))))
    return good, bad


def _load(doc: bytes | str, what: str) -> object:
    try:
        return orjson.loads(doc)  # nesting over 1,024 deep, or a number beyond a double, is an error here
    except orjson.JSONDecodeError as exc:
        raise ItemsError("bad_json", f"not {what}: {str(exc)[:200]}") from None


def parse_items_payload(payload: bytes, enterprise: str) -> tuple[list[ItemSpec], list[tuple[int, str, bytes]]]:
    """Items of one gateway's ``.../items`` message: (good items, [(index, why, raw)])."""
    doc = _load(payload, "UTF-8 JSON")
    if type(doc) is not dict or type(doc.get("items")) is not list:
        raise ItemsError("bad_shape", "items message must be an object with an items array")
    v = doc.get("v")
    if type(v) is not int or v != 1:
        raise ItemsError("bad_version", f"v is {describe(v)}, only 1 is understood")
    good, bad = _parse_list(doc["items"], enterprise)
    return good, [(i, why, encode_json(doc["items"][i])) for i, why in bad]


def parse_items_file(text: str) -> list[ItemSpec]:
    """A JSON array of item objects each with its enterprise; any fault raises ItemsError
    naming the entry (a file is checked whole before anything is loaded)."""
    doc = _load(text, "JSON")
    if type(doc) is not list:
        raise ItemsError("bad_shape", "the file must hold a JSON array of items")
    good, bad = _parse_list(doc, None)
    if bad:
        i, why = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ItemsError("bad_item", f"item [{i}]: {why}{more}")
    return good


def parse_items_file_bytes(data: bytes, encoding: str | None = None) -> list[ItemSpec]:
    """:func:`parse_items_file` for the file's bytes, decoded by :func:`decode_items_file`."""
    return parse_items_file(decode_items_file(data, encoding))


def decode_items_file(data: bytes, encoding: str | None = None) -> str:
    """The text of an items file.  Without ``encoding`` it must be UTF-8 (a byte-order
    mark is allowed); anything else is refused in one line that names the first bad byte
    and, when the bytes read as Chinese in GB18030 (what Chinese Windows tools write as
    "ANSI"), says how to convert it or which encoding to pass.  With ``encoding`` (any
    Python codec name: ``gb18030``, ``gbk``, ``utf-16``…) the bytes are read in it."""
    if encoding is None:
        if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) and not data.startswith(codecs.BOM_UTF8):
            raise ItemsError("bad_encoding", "not UTF-8: it starts with a UTF-16 byte-order mark; convert it "
                                             "(iconv -f UTF-16 -t UTF-8) or pass --encoding utf-16")
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            where = f"byte 0x{data[exc.start]:02X} at offset {exc.start}"
            if _looks_chinese(data):
                raise ItemsError("bad_encoding", f"not UTF-8 ({where}); it looks like GB18030/GBK: convert it "
                                                 "(iconv -f GB18030 -t UTF-8) or pass --encoding gb18030") from None
            raise ItemsError("bad_encoding", f"not UTF-8 ({where}): convert it to UTF-8 or pass "
                                             "--encoding with the encoding it is in") from None
    try:
        name = codecs.lookup(encoding).name
    except (LookupError, ValueError, TypeError):
        raise ItemsError("bad_encoding", f"unknown encoding {describe(encoding)}") from None
    try:
        text = data.decode("utf-8-sig" if name == "utf-8" else encoding)
    except UnicodeDecodeError as exc:
        raise ItemsError("bad_encoding", f"not {name} (byte 0x{data[exc.start]:02X} at offset {exc.start}): "
                                         "pass the encoding the file is in") from None
    except (LookupError, ValueError, TypeError) as exc:  # a codec that is not a text encoding (rot13, zlib)
        raise ItemsError("bad_encoding", f"cannot read the file as {describe(encoding)}: {str(exc)[:200]}") from None
    return text.removeprefix("\ufeff")


def _looks_chinese(data: bytes) -> bool:
    """Whether the bytes read as Chinese in GB18030: nearly every character outside ASCII
    two bytes from the GB2312 rows (0xA1-0xFE each), where common Chinese lies.  A
    Latin-1 file often reads in GB18030 too, but as pairs with an ASCII second byte."""
    try:
        text = data.decode("gb18030")
    except UnicodeDecodeError:
        return False
    wide = [c.encode("gb18030") for c in text if not c.isascii()]
    common = sum(1 for b in wide if len(b) == 2 and b[0] >= 0xA1 and b[1] >= 0xA1)
    return bool(wide) and common >= 0.8 * len(wide)
