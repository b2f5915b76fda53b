"""Readings frames as gateways publish them to nhjc: ``{"v":1,"seq":n,"sent_at":...,"readings":[...]}``.

A frame never holds more than the limits allow (5,000 readings, 256 KiB by default, both
settings of ingest): ``pack`` splits the readings of a gateway into as many frames as needed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
import orjson

from config.settings import IngestSettings

__all__ = ["CST", "DEFAULT_LIMITS", "Limits", "pack", "readings", "rfc3339"]

CST = timezone(timedelta(hours=8))  # China Standard Time, what gateways stamp


@dataclass(frozen=True, slots=True)
class Limits:
    max_frame_bytes: int
    max_readings: int

    def __post_init__(self) -> None:
        if self.max_frame_bytes < 4096 or self.max_readings < 2:
            raise ValueError("frame limits too small to be useful")

    @classmethod
    def of(cls, settings: IngestSettings) -> Limits:
        """The limits the ingest with these settings applies."""
        return cls(settings.max_frame_bytes, settings.max_readings_per_frame)


DEFAULT_LIMITS = Limits.of(IngestSettings())


def rfc3339(t: float) -> str:
    """RFC 3339 with +08:00, whole seconds unless t has a fraction."""
    dt = datetime.fromtimestamp(t, CST)
    return dt.isoformat(timespec="seconds" if float(t).is_integer() else "milliseconds")


def readings(codes: Sequence[str], times: np.ndarray, values: np.ndarray, mask: np.ndarray,
             style: str) -> list[dict[str, object]]:
    """Reading objects for ticks ``times`` (K) of items ``codes`` (n); ``values`` and
    ``mask`` (publish or not) are (K, n).  Tick-major, as a gateway polls its meters."""
    out: list[dict[str, object]] = []
    vals = values.tolist()
    keep = mask.tolist()
    for t, row, ok in zip(times.tolist(), vals, keep, strict=True):
        iso = rfc3339(t)
        if style == "rfc3339":
            stamps: Sequence[object] = [iso] * len(codes)
        elif style == "unix":
            stamps = [int(t)] * len(codes)
        else:  # mixed: alternate, like a gateway merging two collectors
            stamps = [iso if j % 2 == 0 else int(t) for j in range(len(codes))]
        out.extend({"code": c, "ts": s, "value": v}
                   for c, s, v, o in zip(codes, stamps, row, ok, strict=True) if o)
    return out


def pack(items: list[dict[str, object]], limits: Limits, *, spare: int = 0,
         spare_bytes: int = 0) -> Iterator[list[dict[str, object]]]:
    """Split readings into frames within the limits, leaving room for ``spare`` more
    readings of ``spare_bytes`` (a fault may append one)."""
    per = max(1, limits.max_readings - spare)
    budget = limits.max_frame_bytes - spare_bytes - 200  # envelope
    for i in range(0, len(items), per):
        yield from _fit(items[i:i + per], budget)


_MAX_READING_BYTES = 110  # a reading object is 60 to 100 bytes: beyond this, measure


def _fit(chunk: list[dict[str, object]], budget: int) -> Iterator[list[dict[str, object]]]:
    if len(chunk) * _MAX_READING_BYTES <= budget or len(chunk) <= 1 or len(orjson.dumps(chunk)) <= budget:
        yield chunk
        return
    half = len(chunk) // 2
    yield from _fit(chunk[:half], budget)
    yield from _fit(chunk[half:], budget)
