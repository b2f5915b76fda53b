"""What the simulator published, and what the pipeline should make of it.

Tests and the demo's live summary compare these with what arrived: ``readings`` minus
``duplicate_readings`` is how many rows ``readings`` should gain, and ``quarantine`` how
many quarantine rows of each reason.  Expectations that depend on the pipeline's clock
(``bad_timestamp`` for readings over a day ahead, the ``late`` and ``early`` flags) are
judged against the wall clock at publishing, with ingest's default thresholds unless told
otherwise.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

__all__ = ["Counters"]


@dataclass
class Counters:
    enterprises: int = 0
    gateways: int = 0
    items: int = 0
    connections: int = 0
    items_messages: int = 0     # retained items configs published
    status_messages: int = 0    # retained online/offline published
    frames: int = 0             # readings messages published, broken ones included
    bytes: int = 0              # their payload bytes
    readings: int = 0           # well-formed readings published (each copy of a duplicate)
    duplicate_readings: int = 0  # of which in duplicate frames
    backfill_readings: int = 0   # of which backfilled
    late_readings: int = 0       # of which in frames held back (late fault)
    quarantine: dict[str, int] = field(default_factory=dict)  # expected rows by reason
    flags: dict[str, int] = field(default_factory=dict)       # expected quality flags
    tagged_frames: dict[str, int] = field(default_factory=dict)  # frames by fault tag
    generated: dict[str, int] = field(default_factory=dict)   # rollovers, resets, gaps, ...
    sim_time: float | None = None  # simulated time of the last message published
    wall_s: float = 0.0            # real seconds spent running

    @property
    def unique_readings(self) -> int:
        """Distinct (enterprise, code, ts) published: the rows ``readings`` should hold."""
        return self.readings - self.duplicate_readings

    @property
    def quarantined(self) -> int:
        return sum(self.quarantine.values())

    def snapshot(self) -> Counters:
        return copy.deepcopy(self)

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["unique_readings"] = self.unique_readings
        d["quarantined"] = self.quarantined
        return d
