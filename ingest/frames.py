"""Decoding readings frames (WIRE §1) into a columnar batch.

A frame that cannot be read at all (not JSON, wrong shape, too large, wrong version) is
quarantined whole.  Otherwise each reading is judged on its own: the good ones become
rows, each bad one becomes a quarantine row with its own reason.  Nothing is dropped
without a reason.
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

from ingest.batch import READING_DTYPE, Quarantined, ReadingBatch
from ingest.topics import Topic
from processing.quality import EARLY, LATE

__all__ = ["REASONS", "FrameLimits", "decode_readings", "normalise_code"]

# Every reason code ingest can give, frame-level and reading-level (see docs/wire.md).
REASONS = (
    "bad_topic", "bad_enterprise", "too_large", "bad_json", "bad_shape", "bad_version",
    "bad_code", "unknown_item", "bad_timestamp", "bad_value", "not_finite",
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_Y2000_US = 946_684_800 * 1_000_000
_DAY_US = 86_400 * 1_000_000
_CODE = re.compile(r"^\d{16}$")


@dataclass(frozen=True, slots=True)
class FrameLimits:
    max_frame_bytes: int = 256 * 1024
    max_readings: int = 5000
    early_tolerance_s: float = 300.0
    late_horizon_s: float = 7 * 86400.0


def normalise_code(code: str) -> str | None:
    """``01000000023300 01`` forms to ``01-00-0000-023300-01``; None when not 16 digits."""
    bare = code.replace("-", "")
    if not _CODE.match(bare):
        return None
    return f"{bare[0:2]}-{bare[2:4]}-{bare[4:8]}-{bare[8:14]}-{bare[14:16]}"


def _parse_ts(ts: object, cache: dict[str, int | None]) -> int | None:
    """Microseconds since the epoch, or None when ts is no time at all."""
    if isinstance(ts, str):
        if ts not in cache:  # frames repeat a handful of timestamps many times
            try:
                dt = datetime.fromisoformat(ts)
            except ValueError:
                dt = None
            cache[ts] = None if dt is None or dt.tzinfo is None else (dt - _EPOCH) // _US
        return cache[ts]
    if isinstance(ts, (int, float)) and not isinstance(ts, bool) and math.isfinite(ts):
        if abs(ts) > 1e11:  # far outside any plausible time; also guards the multiply
            return None
        return round(ts * 1_000_000)
    return None


def _load(payload: bytes) -> object:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        # Python's parser also reads NaN and Infinity, which some gateways emit: a frame
        # with one such value is then judged reading by reading (not_finite), not lost.
        return json.loads(payload.decode("utf-8"))


def decode_readings(
    topic_name: str,
    topic: Topic,
    payload: bytes,
    received_at_us: int,
    *,
    known_codes: Container[str],
    limits: FrameLimits = FrameLimits(),
) -> ReadingBatch:
    """Decode one readings frame; known_codes are this enterprise's registered item codes."""

    def whole(reason: str, detail: str) -> ReadingBatch:
        q = Quarantined(received_at_us, topic_name, topic.enterprise, reason, detail, payload)
        return ReadingBatch(np.empty(0, READING_DTYPE), [q], frames=1)

    if len(payload) > limits.max_frame_bytes:
        return whole("too_large", f"frame of {len(payload)} bytes exceeds {limits.max_frame_bytes}")
    try:
        frame = _load(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        return whole("bad_json", f"not UTF-8 JSON: {str(exc)[:200]}")
    if not isinstance(frame, dict):
        return whole("bad_shape", f"frame is a JSON {type(frame).__name__}, not an object")
    if frame.get("v") != 1 or isinstance(frame.get("v"), bool):
        return whole("bad_version", f"v is {frame.get('v')!r}, only 1 is understood")
    readings = frame.get("readings")
    if not isinstance(readings, list) or not readings:
        return whole("bad_shape", "readings must be a non-empty array")
    if len(readings) > limits.max_readings:
        return whole("too_large", f"{len(readings)} readings exceed {limits.max_readings} per frame")
    seq = frame.get("seq")
    if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool) or seq < 0):
        return whole("bad_shape", f"seq {seq!r} is not a non-negative integer")

    n = len(readings)
    codes: list[bytes] = []
    ts = np.zeros(n, np.int64)
    values = np.zeros(n, np.float64)
    keep = np.zeros(n, bool)
    bad: list[tuple[int, str, str]] = []  # (index, reason, detail)
    ts_cache: dict[str, int | None] = {}
    code_cache: dict[str, str | None] = {}
    for i, r in enumerate(readings):
        if not isinstance(r, dict) or not {"code", "ts", "value"} <= r.keys():
            bad.append((i, "bad_shape", "a reading must be an object with code, ts and value"))
            codes.append(b"")
            continue
        code = r["code"]
        norm = code_cache.get(code) if isinstance(code, str) else None
        if isinstance(code, str) and code not in code_cache:
            norm = code_cache[code] = normalise_code(code)
        if norm is None:
            bad.append((i, "bad_code", f"code {str(code)[:40]!r} is not pp-uu-eeee-cceeee-dd"))
        elif norm not in known_codes:
            bad.append((i, "unknown_item", f"item {norm} is not registered for {topic.enterprise}"))
            norm = None
        value = r["value"]
        if norm is None:
            pass
        elif not isinstance(value, (int, float)) or isinstance(value, bool):
            bad.append((i, "bad_value", f"value {str(value)[:40]!r} is not a number"))
            norm = None
        elif not math.isfinite(value):
            bad.append((i, "not_finite", f"value {value!r} is not finite"))
            norm = None
        else:
            t = _parse_ts(r["ts"], ts_cache)
            if t is None or t < _Y2000_US or t > received_at_us + _DAY_US:
                bad.append((i, "bad_timestamp", f"ts {str(r['ts'])[:40]!r} is unreadable, before 2000 or over a day ahead"))
                norm = None
            else:
                ts[i] = t
                values[i] = float(value)
                keep[i] = True
        codes.append(norm.encode() if norm is not None else b"")

    rows = np.empty(int(keep.sum()), READING_DTYPE)
    if len(rows):
        kept_ts = ts[keep]
        rows["enterprise"] = topic.enterprise.encode()
        rows["code"] = np.array(codes, dtype="S20")[keep]
        rows["ts"] = kept_ts
        rows["value"] = values[keep]
        quality = np.zeros(len(rows), np.int16)
        quality[kept_ts > received_at_us + int(limits.early_tolerance_s * 1e6)] |= EARLY
        quality[kept_ts < received_at_us - int(limits.late_horizon_s * 1e6)] |= LATE
        rows["quality"] = quality
        rows["received_at"] = received_at_us
    quarantine = [
        Quarantined(
            received_at_us, topic_name, topic.enterprise, reason, f"readings[{i}]: {detail}",
            json.dumps(readings[i], ensure_ascii=False).encode(), "reading",
        )
        for i, reason, detail in bad
    ]
    return ReadingBatch(rows, quarantine, frames=1)
