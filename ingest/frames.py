"""Decoding readings frames (docs/wire.md) into a columnar batch.

A frame that cannot be read at all (not JSON, wrong shape, too large, wrong version) is
quarantined whole.  Otherwise each reading is judged on its own: the good ones become
rows, each bad one becomes a quarantine row with its own reason.  Nothing is dropped
without a reason.

Whatever the bytes, decoding returns a batch and never raises: the fuzz tests
(tests/test_fuzz_decoders.py) and benchmarks/fuzz_decoders.py hold it to that.  The texts
of a quarantine row go into PostgreSQL text columns, which refuse NUL and lone
surrogates, so they pass through :func:`pg_text`; ``raw`` is bytes and keeps the message.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Container
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson

from config.settings import IngestSettings
from ingest.batch import READING_DTYPE, Quarantined, ReadingBatch
from ingest.quality import EARLY, LATE
from ingest.topics import Topic

__all__ = [
    "DEFAULT_LIMITS", "MAX_ABS_VALUE", "REASONS", "Columns", "FrameLimits", "decode_readings", "decode_readings_into",
    "describe", "encode_json",
    "normalise_code", "pg_storable", "pg_text",
]

# Every reason code ingest can give, frame-level and reading-level (see docs/wire.md).
REASONS = (
    "bad_topic", "bad_enterprise", "too_large", "bad_json", "bad_shape", "bad_version",
    "bad_code", "unknown_item", "bad_timestamp", "bad_value", "not_finite",
)

# The largest magnitude a reading's value may have: 15 significant digits, more than any
# meter register shows.  With the items' own bounds (ingest.items: multiplier and
# coefficient at most 1e9) no product or sum the aggregation forms comes near the
# float64 limit of 1.8e308, so it never overflows.
MAX_ABS_VALUE = 1e15

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_Y2000_US = 946_684_800 * 1_000_000
_DAY_US = 86_400 * 1_000_000
_CODE = re.compile(r"[0-9]{16}")  # ASCII digits only: \d would take Arabic or full-width ones
_MAX_SEQ = 2**64 - 1


@dataclass(frozen=True, slots=True)
class FrameLimits:
    """What a frame may hold and how its readings' times are judged: the ingest settings
    the decoder needs, in the shape it reads in its loop."""

    max_frame_bytes: int
    max_readings: int
    early_tolerance_s: float
    late_horizon_s: float

    @classmethod
    def of(cls, settings: IngestSettings) -> FrameLimits:
        return cls(settings.max_frame_bytes, settings.max_readings_per_frame,
                   settings.early_tolerance_s, settings.late_horizon_s)


# The limits of the default settings, for callers without settings of their own
# (benchmarks, fuzzers).
DEFAULT_LIMITS = FrameLimits.of(IngestSettings())


def pg_storable(text: str | None) -> bool:
    """True when PostgreSQL's text type takes ``text`` as it is: no NUL, no lone
    surrogate (what :func:`pg_text` makes of any text)."""
    if text is None:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def pg_text(text: str) -> str:
    """``text`` as PostgreSQL's text type takes it: NUL written ``\\x00`` and lone
    surrogates ``\\udxxx`` (both refused by the server; an error there would stop the
    batch, not just this row)."""
    if text.isascii():
        return text.replace("\x00", "\\x00") if "\x00" in text else text
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number",
               bool: "boolean", type(None): "null"}


def describe(value: object, limit: int = 40) -> str:
    """A short, safe rendering of a JSON value for an error text.  Strings and numbers are
    shown (cut to ``limit``); objects and arrays by their kind only, since their repr could
    be huge or nested past the recursion limit."""
    if isinstance(value, str):
        return repr(value[:limit]) + ("…" if len(value) > limit else "")
    if value is None or isinstance(value, (bool, float)):
        return repr(value)
    if isinstance(value, int):
        if value.bit_length() < 100:
            return repr(value)
        try:
            digits = len(str(abs(value)))
        except ValueError:  # past Python's 4,300-digit limit for int to str
            digits = int(value.bit_length() * 0.30103) + 1
        return f"<{digits}-digit integer>"
    return f"a JSON {_JSON_TYPES.get(type(value), type(value).__name__)}"


def encode_json(value: object) -> bytes:
    """A faithful JSON re-encoding of a decoded value, as UTF-8 bytes, for ``raw``.  A
    lone surrogate can only have arrived as a ``\\u`` escape, so it is written as one."""
    try:
        return json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return json.dumps(value).encode()
    except RecursionError:
        return _encode_deep(value)


def _encode_deep(value: object) -> bytes:
    """encode_json for values nested deeper than Python's recursion limit: the same JSON
    (characters outside ASCII as ``\\u`` escapes), built with an explicit stack."""
    out: list[str] = []
    stack: list[object] = [value]
    while stack:
        v = stack.pop()
        if type(v) is _Literal:
            out.append(v.text)
        elif type(v) is dict:
            out.append("{")
            stack.append(_Literal("}"))
            entries = list(v.items())
            for n in range(len(entries) - 1, -1, -1):  # pushed last to first: popped in order
                stack.append(entries[n][1])
                stack.append(_Literal(("," if n else "") + json.dumps(entries[n][0]) + ":"))
        elif type(v) is list:
            out.append("[")
            stack.append(_Literal("]"))
            for n in range(len(v) - 1, -1, -1):
                stack.append(v[n])
                if n:
                    stack.append(_Literal(","))
        else:
            out.append(json.dumps(v))
    return "".join(out).encode()


@dataclass(frozen=True, slots=True)
class _Literal:
    text: str


def normalise_code(code: str) -> str | None:
    """``01000000023300 01`` forms to ``01-00-0000-023300-01``; None when not 16 digits."""
    bare = code.replace("-", "")
    if not _CODE.fullmatch(bare):
        return None
    return f"{bare[0:2]}-{bare[2:4]}-{bare[4:8]}-{bare[8:14]}-{bare[14:16]}"


def _parse_ts(ts: object, cache: dict[str, int | None]) -> int | None:
    """Microseconds since the epoch, or None when ts is no time at all."""
    t = type(ts)
    if t is str:
        if ts not in cache:  # frames repeat a handful of timestamps many times
            cache[ts] = _parse_iso(ts)  # type: ignore[arg-type, index]
        return cache[ts]  # type: ignore[index]
    # Compared before any conversion: an integer of 400 digits is legal JSON.  NaN fails.
    if (t is int or t is float) and -1e11 <= ts <= 1e11:  # type: ignore[operator]
        return round(ts * 1_000_000)  # type: ignore[operator]
    return None


def _parse_iso(ts: str) -> int | None:
    if "\x00" in ts:  # fromisoformat stops reading at a NUL: 'valid\x00junk' would pass
        return None
    try:
        dt = datetime.fromisoformat(ts)
        return None if dt.tzinfo is None else (dt - _EPOCH) // _US
    except (ValueError, OverflowError):
        return None


def _load(payload: bytes) -> object:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        # Python's parser also reads NaN and Infinity, which some gateways emit, and
        # integers too long for a double: a frame with one such value is then judged
        # reading by reading (not_finite, bad_value), not lost.
        return json.loads(payload.decode("utf-8"))


class Columns:
    """Accepted readings of many frames, gathered as Python lists and made into one
    READING_DTYPE array at the end: a batch of frames of one reading costs one set of
    numpy calls, not one per frame (that was most of ingest's own time for tiny frames)."""

    __slots__ = ("code", "enterprise", "quality", "received_at", "ts", "value")

    def __init__(self) -> None:
        self.enterprise: list[bytes] = []
        self.code: list[bytes] = []
        self.ts: list[int] = []
        self.value: list[float] = []
        self.quality: list[int] = []
        self.received_at: list[int] = []

    def __len__(self) -> int:
        return len(self.ts)

    def truncate(self, n: int) -> None:
        """Forget the rows from the ``n``-th on (a frame decoded again, or one whose
        decoding failed half-way)."""
        for column in (self.enterprise, self.code, self.ts, self.value, self.quality, self.received_at):
            del column[n:]

    def array(self) -> np.ndarray:
        rows = np.empty(len(self.ts), READING_DTYPE)
        if len(rows):
            rows["enterprise"] = self.enterprise
            rows["code"] = self.code
            rows["ts"] = self.ts
            rows["value"] = self.value
            rows["quality"] = self.quality
            rows["received_at"] = self.received_at
        return rows


def decode_readings(
    topic_name: str,
    topic: Topic,
    payload: bytes,
    received_at_us: int,
    *,
    known_codes: Container[str],
    limits: FrameLimits = DEFAULT_LIMITS,
) -> ReadingBatch:
    """Decode one readings frame; known_codes are this enterprise's registered item codes."""
    cols = Columns()
    quarantine = decode_readings_into(cols, topic_name, topic, payload, received_at_us,
                                      known_codes=known_codes, limits=limits)
    return ReadingBatch(cols.array(), quarantine, frames=1)


def decode_readings_into(
    cols: Columns,
    topic_name: str,
    topic: Topic,
    payload: bytes,
    received_at_us: int,
    *,
    known_codes: Container[str],
    limits: FrameLimits = DEFAULT_LIMITS,
) -> list[Quarantined]:
    """Decode one readings frame, its accepted readings appended to ``cols``; returns its
    quarantine rows."""
    def whole(reason: str, detail: str) -> list[Quarantined]:
        return [Quarantined(received_at_us, pg_text(topic_name), topic.enterprise, reason, pg_text(detail), payload)]

    if len(payload) > limits.max_frame_bytes:
        return whole("too_large", f"frame of {len(payload)} bytes exceeds {limits.max_frame_bytes}")
    try:
        frame = _load(payload)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of over 4,300 digits
        return whole("bad_json", f"not UTF-8 JSON: {str(exc)[:200]}")
    except RecursionError:
        return whole("bad_json", "not UTF-8 JSON: nested too deeply (RecursionError)")
    if type(frame) is not dict:
        return whole("bad_shape", f"frame is {describe(frame)}, not a JSON object")
    v = frame.get("v")
    if type(v) is not int or v != 1:  # 1.0 and true are not the version 1
        return whole("bad_version", f"v is {describe(v)}, only 1 is understood")
    readings = frame.get("readings")
    if type(readings) is not list or not readings:
        return whole("bad_shape", "readings must be a non-empty array")
    if len(readings) > limits.max_readings:
        return whole("too_large", f"{len(readings)} readings exceed {limits.max_readings} per frame")
    seq = frame.get("seq")
    if seq is not None and (type(seq) is not int or not 0 <= seq <= _MAX_SEQ):
        return whole("bad_shape", f"seq {describe(seq)} is not a non-negative 64-bit integer")

    enterprise = topic.enterprise.encode()
    early_after = received_at_us + int(limits.early_tolerance_s * 1e6)
    late_before = received_at_us - int(limits.late_horizon_s * 1e6)
    latest = received_at_us + _DAY_US
    add_ent, add_code, add_ts = cols.enterprise.append, cols.code.append, cols.ts.append
    add_value, add_quality, add_received = cols.value.append, cols.quality.append, cols.received_at.append
    bad: list[tuple[int, str, str]] = []  # (index, reason, detail)
    ts_cache: dict[str, int | None] = {}
    code_cache: dict[str, str | None] = {}
    for i, r in enumerate(readings):
        if type(r) is not dict or not {"code", "ts", "value"} <= r.keys():
            bad.append((i, "bad_shape", "a reading must be an object with code, ts and value"))
            continue
        code = r["code"]
        if type(code) is str:
            norm = code_cache.get(code)
            if norm is None and code not in code_cache:
                norm = code_cache[code] = normalise_code(code)
        else:
            norm = None
        if norm is None:
            bad.append((i, "bad_code", f"code {describe(code)} is not pp-uu-eeee-cceeee-dd"))
            continue
        if norm not in known_codes:
            bad.append((i, "unknown_item", f"item {norm} is not registered for {topic.enterprise}"))
            continue
        value = r["value"]
        tv = type(value)
        if tv is not float and tv is not int:
            bad.append((i, "bad_value", f"value {describe(value)} is not a number"))
        elif not -MAX_ABS_VALUE <= value <= MAX_ABS_VALUE:  # exact for integers of any size; NaN fails
            if tv is float and not math.isfinite(value):
                bad.append((i, "not_finite", f"value {value!r} is not finite"))
            else:
                bad.append((i, "bad_value", f"value {describe(value)} is beyond ±1e15, more than a meter shows"))
        else:
            t = _parse_ts(r["ts"], ts_cache)
            if t is None or t < _Y2000_US or t > latest:
                bad.append((i, "bad_timestamp",
                            f"ts {describe(r['ts'])} is unreadable, before 2000 or over a day ahead"))
            else:
                add_ent(enterprise)
                add_code(norm.encode())
                add_ts(t)
                add_value(float(value))
                add_quality((EARLY if t > early_after else 0) | (LATE if t < late_before else 0))
                add_received(received_at_us)
    if not bad:
        return []
    safe_topic = pg_text(topic_name)
    return [
        Quarantined(
            received_at_us, safe_topic, topic.enterprise, reason, pg_text(f"readings[{i}]: {detail}"),
            encode_json(readings[i]), "reading",
        )
        for i, reason, detail in bad
    ]
