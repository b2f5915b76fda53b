"""Faults a real fleet of gateways produces, and the broken input each one is made of.

Data faults change what meters show: ``gaps`` (readings missing for a while: a whole
gateway or one meter), ``resets`` (a register drops to about zero: a replaced meter) and
``spikes`` (an implausible jump).  Frame faults change what is sent: ``duplicates`` (the same
frame twice), ``late`` (a frame held back and sent later, out of order), ``malformed`` (input
ingest must quarantine, one reason after the other) and ``foreign`` (a frame on a topic whose
enterprise code fails the GB 32100 check).

Malformed input comes in two sorts, as ingest judges it: a broken frame (quarantined whole)
is sent in addition to the good frame it was copied from, so no reading is lost; a bad
reading is appended to a good frame, which ingest then accepts except for that reading.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import orjson

from tools.sim.frames import rfc3339

__all__ = [
    "DEFAULT_RATES",
    "FAULT_KINDS",
    "FRAME_REASONS",
    "MALFORMED_REASONS",
    "READING_REASONS",
    "FaultSpec",
    "bad_reading",
    "broken_frame",
    "finish",
]

FAULT_KINDS = ("gaps", "resets", "spikes", "duplicates", "late", "malformed", "foreign")
# gaps: the share of readings lost; resets and spikes: per gateway and tick; the others:
# per frame.  Low enough that a demo still shows mostly clean data.
DEFAULT_RATES: dict[str, float] = {
    "gaps": 0.01, "resets": 0.0005, "spikes": 0.001, "duplicates": 0.01, "late": 0.01,
    "malformed": 0.01, "foreign": 0.002,
}
# Quarantine reasons of ingest a broken frame or topic produces (the whole frame goes).
FRAME_REASONS = ("bad_json", "bad_shape", "too_large", "bad_version", "bad_topic")
# ... and those of a single bad reading in an otherwise good frame.
READING_REASONS = ("unknown_item", "bad_timestamp", "not_finite", "bad_code", "bad_value")
# The order malformed faults take, alternating the two sorts so a short run shows both.
MALFORMED_REASONS = tuple(r for pair in zip(FRAME_REASONS, READING_REASONS, strict=True) for r in pair)

# JSON has no NaN or Infinity, but gateways write them anyway (so Python's json does too).
# orjson cannot, so a marker string is encoded and replaced afterwards (``finish``).
_NONFINITE = {"NaN": b"NaN", "Infinity": b"Infinity", "-Infinity": b"-Infinity"}
_MARK = "@@nonfinite:"


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """Enabled fault kinds and their rates."""

    rates: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind, rate in self.rates.items():
            if kind not in FAULT_KINDS:
                raise ValueError(f"unknown fault {kind!r}; known: {', '.join(FAULT_KINDS)}")
            if not (0.0 <= rate <= 1.0) or math.isnan(rate):
                raise ValueError(f"fault rate of {kind} must be between 0 and 1, not {rate}")

    @classmethod
    def parse(cls, text: str | None, default_rate: float | None = None) -> FaultSpec:
        """``"gaps,resets=0.01,late"`` or ``"all"``: a kind without ``=rate`` takes
        default_rate when given, else its own default."""
        rates: dict[str, float] = {}
        for part in (p.strip() for p in (text or "").split(",")):
            if not part:
                continue
            kind, _, value = part.partition("=")
            kind = kind.strip()
            kinds = FAULT_KINDS if kind == "all" else (kind,)
            for k in kinds:
                if k not in FAULT_KINDS:
                    raise ValueError(f"unknown fault {k!r}; known: {', '.join(FAULT_KINDS)}, all")
                try:
                    rates[k] = float(value) if value else (
                        default_rate if default_rate is not None else DEFAULT_RATES[k])
                except ValueError:
                    raise ValueError(f"bad rate {value!r} for fault {k}") from None
        return cls(rates)

    def rate(self, kind: str) -> float:
        return self.rates.get(kind, 0.0)

    def __bool__(self) -> bool:
        return any(self.rates.values())


NO_FAULTS = FaultSpec()


def bad_reading(reason: str, rng: np.random.Generator, *, code: str, t: int, value: float,
                unknown_code: str) -> dict[str, object]:
    """One reading ingest must quarantine for ``reason`` (a READING_REASONS entry), shaped
    like the mistakes gateways make.  Pass the result through ``finish`` after encoding."""
    variant = int(rng.integers(4))
    if reason == "unknown_item":  # a meter added on site but not to the items config
        return {"code": unknown_code, "ts": t, "value": value}
    if reason == "bad_timestamp":
        ts: object = (
            rfc3339(t).replace("T", " ")[:19],  # no offset: local or UTC? unreadable
            t * 1000,                           # milliseconds where seconds belong
            "1970-01-01T08:00:00+08:00",        # the meter's clock lost its battery
            rfc3339(t)[:5] + "02-30" + rfc3339(t)[10:],  # a date that does not exist
        )[variant]
        return {"code": code, "ts": ts, "value": value}
    if reason == "not_finite":
        mark = ("NaN", "Infinity", "-Infinity", "NaN")[variant]
        return {"code": code, "ts": t, "value": _MARK + mark}
    if reason == "bad_code":
        bad: object = (code.replace("-", "")[:12], code.rsplit("-", 2)[0],
                       int(code.replace("-", "")), code + "-01")[variant]
        return {"code": bad, "ts": t, "value": value}
    if reason == "bad_value":
        v: object = (f"{value}", None, True, f"{value}kWh")[variant]
        return {"code": code, "ts": t, "value": v}
    raise ValueError(f"not a reading-level reason: {reason}")


def finish(payload: bytes) -> bytes:
    """Turn the non-finite markers into the bare NaN/Infinity gateways write."""
    if _MARK.encode() not in payload:
        return payload
    for name, raw in _NONFINITE.items():
        payload = payload.replace(f'"{_MARK}{name}"'.encode(), raw)
    return payload


def broken_frame(reason: str, rng: np.random.Generator, frame: dict[str, object], payload: bytes,
                 max_frame_bytes: int) -> bytes:
    """A copy of a good frame (``frame`` and its ``payload``) broken for ``reason`` (a
    FRAME_REASONS entry other than bad_topic, which is the topic's fault, not the payload's)."""
    variant = int(rng.integers(3))
    readings = frame["readings"]
    assert isinstance(readings, list)
    if reason == "bad_json":
        if variant == 0:  # cut short: a buffer that filled up
            return payload[: max(1, int(len(payload) * rng.uniform(0.3, 0.9)))]
        if variant == 1:  # two frames written into one message
            return payload + payload
        # GBK text where UTF-8 belongs (an old firmware's remark field)
        return payload[:-1] + b',"remark":"' + "电表通讯故障".encode("gbk") + b'"}'
    if reason == "bad_shape":
        if variant == 0:  # the readings without their envelope
            return orjson.dumps(readings)
        if variant == 1:  # readings keyed by code instead of a list
            return orjson.dumps({**frame, "readings": {str(r["code"]): r["value"] for r in readings}})
        return orjson.dumps({**frame, "seq": -1})  # a signed counter that wrapped
    if reason == "bad_version":
        v: object = (2, "1", None)[variant]
        broken = {k: val for k, val in frame.items() if k != "v"}
        return orjson.dumps(broken if v is None else {"v": v, **broken})
    if reason == "too_large":
        # Just over ingest's limit, but under the broker's message size limit (300,000 bytes
        # in the configuration nhjc ships), so it reaches ingest and is refused there.
        per = max(1, len(orjson.dumps(readings)) // max(1, len(readings)))
        n = (max_frame_bytes + 4096) // per + 1
        big = [readings[i % len(readings)] for i in range(n)]
        out = orjson.dumps({**frame, "readings": big})
        while len(out) <= max_frame_bytes:
            big.extend(readings)
            out = orjson.dumps({**frame, "readings": big})
        return out
    raise ValueError(f"not a frame-level payload reason: {reason}")
