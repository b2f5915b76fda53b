"""What ingest hands to the store: columns of accepted readings, quarantine rows, and the
handles of the messages they came from (acknowledged only after the commit)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["CODE_LEN", "ENTERPRISE_LEN", "READING_DTYPE", "Quarantined", "ReadingBatch", "Source", "error_detail"]

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
        ("quality", "<i2"),  # ingest.quality flag bits
        ("received_at", "<i8"),  # microseconds since the Unix epoch, UTC
    ]
)


def error_detail(exc: BaseException) -> str:
    """A quarantine detail for an exception: its class and SQLSTATE, never its text (the
    text may quote the input, including characters the database refuses)."""
    state = getattr(exc, "sqlstate", None)
    if isinstance(state, str) and len(state) == 5 and state.isascii() and state.isalnum():
        return f"{type(exc).__name__} (SQLSTATE {state})"
    return type(exc).__name__


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


@dataclass(frozen=True, slots=True)
class Source:
    """One message of a batch: how many of the batch's rows and quarantine rows are its
    own (so a batch the store refuses can be split message by message), and what to keep
    in quarantine should the store refuse the message itself."""

    topic: str
    enterprise: str | None
    received_at_us: int
    payload: bytes
    rows: int
    quarantine: int
    frames: int


@dataclass(slots=True)
class ReadingBatch:
    rows: np.ndarray  # READING_DTYPE
    quarantine: list[Quarantined] = field(default_factory=list)
    handles: list[Any] = field(default_factory=list)  # message handles to acknowledge
    frames: int = 0
    sources: list[Source] = field(default_factory=list)  # one per handle, from the batcher

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
            sources=[s for p in parts for s in p.sources],
        )

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def messages(self) -> int:
        """How many messages the batch can be split into (1 when it cannot be split)."""
        return len(self.sources) if self._splittable() else 1

    def _splittable(self) -> bool:
        return (
            len(self.sources) == len(self.handles)
            and sum(s.rows for s in self.sources) == len(self.rows)
            and sum(s.quarantine for s in self.sources) == len(self.quarantine)
        )

    def halves(self) -> tuple[ReadingBatch, ReadingBatch]:
        """The batch split by message into two halves (at least one message each)."""
        if self.messages < 2:
            raise ValueError("a batch of one message cannot be split")
        mid = len(self.sources) // 2
        return self._take(0, mid), self._take(mid, len(self.sources))

    def _take(self, start: int, stop: int) -> ReadingBatch:
        r0 = sum(s.rows for s in self.sources[:start])
        q0 = sum(s.quarantine for s in self.sources[:start])
        mine = self.sources[start:stop]
        r1, q1 = r0 + sum(s.rows for s in mine), q0 + sum(s.quarantine for s in mine)
        return ReadingBatch(self.rows[r0:r1], self.quarantine[q0:q1], self.handles[start:stop],
                            sum(s.frames for s in mine), mine)
