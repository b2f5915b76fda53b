"""What ingest hands to the store: columns of accepted readings, quarantine rows, and the
handles of the messages they came from (acknowledged only after the commit)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["CODE_LEN", "ENTERPRISE_LEN", "READING_DTYPE", "Quarantined", "ReadingBatch"]

ENTERPRISE_LEN = 18  # GB 32100 credit code
CODE_LEN = 20  # pp-uu-eeee-cceeee-dd

# One accepted reading.  Fixed-width ASCII columns: enterprise codes and hyphenated data
# codes have a fixed length, which lets the store build binary COPY data with numpy.
READING_DTYPE = np.dtype(
    [
        ("enterprise", f"S{ENTERPRISE_LEN}"),
        ("code", f"S{CODE_LEN}"),
        ("ts", "<i8"),  # microseconds since the Unix epoch, UTC
        ("value", "<f8"),  # as the meter shows it (no multiplier)
        ("quality", "<i2"),  # processing.quality flag bits
        ("received_at", "<i8"),  # microseconds since the Unix epoch, UTC
    ]
)


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A rejected frame or reading, kept with its raw bytes and a fixed reason code."""

    received_at_us: int
    topic: str
    enterprise: str | None
    reason: str
    detail: str
    raw: bytes
    level: str = "frame"  # frame, reading or item: what was rejected


@dataclass(slots=True)
class ReadingBatch:
    rows: np.ndarray  # READING_DTYPE
    quarantine: list[Quarantined] = field(default_factory=list)
    handles: list[Any] = field(default_factory=list)  # message handles to acknowledge
    frames: int = 0

    @classmethod
    def empty(cls, quarantine: list[Quarantined] | None = None, frames: int = 0) -> ReadingBatch:
        return cls(np.empty(0, READING_DTYPE), quarantine or [], frames=frames)

    @classmethod
    def concat(cls, parts: list[ReadingBatch]) -> ReadingBatch:
        rows = np.concatenate([p.rows for p in parts]) if parts else np.empty(0, READING_DTYPE)
        return cls(
            rows=rows,
            quarantine=[q for p in parts for q in p.quarantine],
            handles=[h for p in parts for h in p.handles],
            frames=sum(p.frames for p in parts),
        )

    def __len__(self) -> int:
        return len(self.rows)
