"""The registry files an operator loads (enterprises, instruments): read and checked whole.

Both are a JSON array of entries, each a pydantic model that forbids unknown fields.  The
whole file is checked before anything is stored; the first bad entry is named in one line
(by its index and what identifies it) and the others are counted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from ingest.frames import describe, pg_text
from ingest.items import ItemsError, decode_items_file

__all__ = ["RegistryFileError", "check_entries", "error_text", "read_text"]

M = TypeVar("M", bound=BaseModel)


class RegistryFileError(ValueError):
    """A whole file is unusable; ``reason`` is ``bad_encoding``, ``bad_json``, ``bad_shape``
    or ``bad_entry``.  The text is one line, safe to print: it never echoes an input value."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(" ".join(pg_text(detail).split()))
        self.reason = reason


def read_text(data: bytes, encoding: str | None, error: type[RegistryFileError]) -> str:
    """The file's text: UTF-8 (a BOM allowed) unless ``encoding`` names another, read as an
    items file is (ingest.items.decode_items_file)."""
    try:
        return decode_items_file(data, encoding)
    except ItemsError as exc:
        raise error(exc.reason, str(exc)) from None


def error_text(exc: ValidationError, unknown: Callable[[tuple[int | str, ...]], str]) -> str:
    """One entry's fault: its unknown fields (``unknown`` says each one, with a hint), or
    the first error's place and message (never pydantic's ``input``: it may be a secret)."""
    errors = exc.errors()
    extra = [tuple(e["loc"]) for e in errors if e["type"] == "extra_forbidden"]
    if extra:
        named = ", ".join(unknown(u) for u in extra[:3])
        more = f" (and {len(extra) - 3} more)" if len(extra) > 3 else ""
        return f"unknown field {named}{more}"
    e = errors[0]
    loc = ".".join(str(p) for p in e["loc"])
    msg = str(e["msg"]).removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


def check_entries(text: str, model: type[M], *, what: str, plural: str, error: type[RegistryFileError],
                  name_of: Callable[[Mapping[str, Any]], str],
                  unknown: Callable[[tuple[int | str, ...]], str],
                  cross_checks: Callable[[list[M]], list[str]]) -> list[M]:
    """The file's entries as ``model``; any fault raises ``error`` naming the first bad entry.
    ``what`` names one entry ("an instrument"), ``plural`` all ("instruments"); ``name_of`` gives what identifies an entry
    (" (code, serial)"); ``cross_checks`` finds what no single entry shows (duplicates)."""
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise error("bad_json", f"not JSON: {str(exc)[:200]}") from None
    if type(doc) is not list:
        raise error("bad_shape", f"the file must hold a JSON array of {plural}")
    good: list[M] = []
    bad: list[str] = []
    for i, obj in enumerate(doc):
        if type(obj) is not dict:
            bad.append(f"entry [{i}]: {what} must be a JSON object, not {describe(obj)}")
            continue
        try:
            good.append(model.model_validate(obj))
        except ValidationError as exc:
            bad.append(f"entry [{i}]{name_of(obj)}: {error_text(exc, unknown)}")
    if not bad:
        bad = cross_checks(good)
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise error("bad_entry", bad[0] + more)
    return good
