"""The data-item registry's outside side: item objects from the retained
``.../items`` topic (WIRE §1) or from a file for ``nhjc items load``.

Parsing only; storing them is processing.registry's job.
"""

from __future__ import annotations

import json
import math
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ingest.credit_code import is_valid
from ingest.frames import normalise_code

__all__ = ["ItemSpec", "ItemsError", "parse_items_file", "parse_items_payload"]


class ItemsError(ValueError):
    """A whole items document is unusable; ``reason`` is the quarantine reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class ItemSpec(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    enterprise: str
    code: str
    name: str = ""
    energy: str = Field(pattern=r"^\d{4}$")
    unit: str = Field(min_length=1, max_length=32)
    kind: Literal["cumulative", "interval", "instant"]
    multiplier: float = Field(1.0, gt=0)
    rollover: float | None = Field(None, gt=0)
    min: float | None = None
    max: float | None = None
    scope: int = Field(1, ge=1, le=4)
    input_type: int = Field(4, ge=1, le=5)
    coefficient: float | None = Field(None, ge=0)

    @field_validator("enterprise")
    @classmethod
    def _enterprise(cls, v: str) -> str:
        if not is_valid(v):
            raise ValueError("not a GB 32100 credit code")
        return v

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


def _error_text(exc: ValidationError) -> str:
    e = exc.errors()[0]
    return f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"


def _parse_list(raw_items: list[object], enterprise: str | None) -> tuple[list[ItemSpec], list[tuple[int, str]]]:
    good: list[ItemSpec] = []
    bad: list[tuple[int, str]] = []
    for i, obj in enumerate(raw_items):
        if not isinstance(obj, dict):
            bad.append((i, "an item must be a JSON object"))
            continue
        fields = obj if enterprise is None else {**obj, "enterprise": enterprise}  # the topic is the authority
        try:
            good.append(ItemSpec.model_validate(fields))
        except ValidationError as exc:
            bad.append((i, _error_text(exc)))
    return good, bad


def parse_items_payload(payload: bytes, enterprise: str) -> tuple[list[ItemSpec], list[tuple[int, str, bytes]]]:
    """Items of one gateway's ``.../items`` message: (good items, [(index, why, raw)])."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ItemsError("bad_json", f"not UTF-8 JSON: {str(exc)[:200]}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
        raise ItemsError("bad_shape", "items message must be an object with an items array")
    if doc.get("v") != 1:
        raise ItemsError("bad_version", f"v is {doc.get('v')!r}, only 1 is understood")
    good, bad = _parse_list(doc["items"], enterprise)
    return good, [(i, why, json.dumps(doc["items"][i], ensure_ascii=False).encode()) for i, why in bad]


def parse_items_file(text: str) -> list[ItemSpec]:
    """A JSON array of item objects each with its enterprise; any fault raises ItemsError
    naming the entry (a file is checked whole before anything is loaded)."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ItemsError("bad_json", f"not JSON: {exc}") from None
    if not isinstance(doc, list):
        raise ItemsError("bad_shape", "the file must hold a JSON array of items")
    good, bad = _parse_list(doc, None)
    if bad:
        i, why = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ItemsError("bad_item", f"item [{i}]: {why}{more}")
    return good
