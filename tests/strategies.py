"""Reusable Hypothesis strategies and small builders for the processing tests, and the
inputs the decoder fuzz tests draw (at the end).

Times are int64 microseconds since the epoch; :func:`at` gives them from local
(Asia/Shanghai) wall-clock times, which is how the expected values are worked out by
hand.  Big series (a year of readings) are drawn as a seed plus a few parameters and
generated with numpy, so Hypothesis still shrinks them to something readable.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
from hypothesis import strategies as st

from ingest import quality as q
from processing.itemtable import ItemTable
from processing.periods import Calendar
from processing.pipeline import Result, compute
from processing.replacing import Replacements
from processing.segments import Readings

__all__ = [
    "CALENDAR",
    "DEC_CODE",
    "DEC_ENTERPRISE",
    "DEC_TS",
    "ELEC",
    "ENTERPRISE",
    "GAS",
    "TZ",
    "Replaced",
    "Row",
    "Series",
    "at",
    "deep",
    "deep_text",
    "frame_payloads",
    "full_year_series",
    "garbage_frame",
    "item",
    "items_payloads",
    "json_value",
    "mutate",
    "nasty_text",
    "readings",
    "replaced_meters",
    "rows",
    "run",
    "series",
    "table",
    "to_json",
]

TZ = ZoneInfo("Asia/Shanghai")
CALENDAR = Calendar(TZ)
ENTERPRISE = "91340100MA2N0XXXXX"
ELEC = "01-00-0000-023300-01"
GAS = "00-00-0000-011500-01"
MIN_US = 60_000_000


def at(year: int, month: int = 1, day: int = 1, hour: int = 0, minute: int = 0,
       second: int = 0) -> int:
    """Local Asia/Shanghai wall-clock time as microseconds since the epoch."""
    return int(datetime(year, month, day, hour, minute, second, tzinfo=TZ).timestamp()) * 1_000_000


def item(code: str = ELEC, *, enterprise: str = ENTERPRISE, energy: str = "3300",
         kind: str = "cumulative", **fields: Any) -> dict[str, Any]:
    """An items-table record with the defaults an item message leaves out (multiplier
    1, no rollover or range, whole-plant scope, the energy's default coefficient)."""
    rec: dict[str, Any] = {"enterprise": enterprise, "code": code, "energy": energy, "kind": kind,
                           "unit": "kWh", "multiplier": 1.0, "rollover": None, "min": None,
                           "max": None, "scope": 1, "coefficient": None}
    rec.update(fields)
    return rec


def table(*records: dict[str, Any]) -> ItemTable:
    return ItemTable.from_records(records or [item()])


def readings(items: ItemTable, data: Iterable[Sequence[Any]],
             enterprise: str = ENTERPRISE) -> Readings:
    """From (code, ts, value) or (code, ts, value, quality) tuples, in any order."""
    data = list(data)
    idx = items.lookup([enterprise] * len(data), [d[0] for d in data])
    return Readings.from_unsorted(
        idx, np.array([d[1] for d in data], np.int64), np.array([d[2] for d in data], np.float64),
        np.array([d[3] if len(d) > 3 else 0 for d in data], np.int32))


def run(items: ItemTable, data: Iterable[Sequence[Any]], **kw: Any) -> Result:
    return compute(readings(items, data), items, CALENDAR, **kw)


@dataclass(frozen=True)
class Row:
    value: float
    kgce: float
    coverage: float
    valid: bool
    flags: int


def rows(result: Result, items: ItemTable) -> dict[tuple[str, int, int], Row]:
    """Consumption rows keyed by (code, stat_type, period_start us)."""
    c = result.consumption
    return {
        (items.code[c.item[i]], int(c.tier[i]), int(c.start[i])):
            Row(float(c.value[i]), float(c.kgce[i]), float(c.coverage[i]), bool(c.valid[i]),
                int(c.flags[i]))
        for i in range(len(c))
    }


# -- strategies ------------------------------------------------------------------------

@dataclass(frozen=True)
class Series:
    """Readings of items as columns (item index, ts, value), ordered by item then time."""

    items: ItemTable
    item: np.ndarray
    ts: np.ndarray
    value: np.ndarray
    quality: np.ndarray  # ingest's flags (EARLY, LATE) as stored

    def as_readings(self) -> Readings:
        return Readings.from_unsorted(self.item, self.ts, self.value, self.quality)


def _register(rng: np.random.Generator, n: int, *, decreases: bool, rollover: float | None,
              start_value: float) -> np.ndarray:
    """A register: non-negative increments, with some resets (and wraps when a rollover
    value is given) mixed in when ``decreases``."""
    inc = rng.exponential(2.0, n) * (rng.random(n) < 0.9)  # some readings unchanged
    values = start_value + np.cumsum(inc)
    if rollover is not None:
        values = np.mod(values, rollover)
    if decreases:
        resets = rng.random(n) < 0.03
        values = np.where(resets, rng.random(n) * 10, values)
    return np.round(values, 2)


@st.composite
def series(draw: st.DrawFn, *, kinds: Sequence[str] = ("cumulative", "interval", "instant"),
           max_items: int = 4, max_readings: int = 60, max_step_s: int = 3 * 3600,
           decreases: bool = True) -> Series:
    """A few items of one enterprise with irregular readings (gaps, resets, rollovers,
    NaN values), spanning up to a few days around a month boundary."""
    n_items = draw(st.integers(1, max_items))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    recs, its, tss, vals, quals = [], [], [], [], []
    # Around a month boundary or a year boundary, so that every tier's edges are crossed.
    edge = draw(st.sampled_from([at(2024, 2, 1), at(2024, 1, 1)]))
    origin = edge - 12 * 3_600_000_000 + draw(st.integers(0, 36 * 3600)) * 1_000_000
    for i in range(n_items):
        kind = draw(st.sampled_from(kinds))
        rollover = draw(st.sampled_from([None, 1000.0])) if kind == "cumulative" else None
        n = draw(st.integers(0, max_readings))
        steps = rng.integers(1, max_step_s + 1, n) * 1_000_000
        # Mostly regular steps, some long gaps.
        steps = np.where(rng.random(n) < 0.8, np.minimum(steps, 1800 * 1_000_000), steps)
        ts = origin + np.cumsum(steps) - steps[0] if n else np.zeros(0, np.int64)
        if kind == "cumulative":
            v = _register(rng, n, decreases=decreases, rollover=rollover,
                          start_value=950.0 if rollover else 500.0)
        elif kind == "interval":
            v = np.round(rng.exponential(3.0, n) * np.where(
                rng.random(n) < (0.05 if decreases else 0.0), -1, 1), 2)
        else:
            v = np.round(rng.normal(50, 20, n), 1)
        if decreases and n:
            v = np.where(rng.random(n) < 0.02, np.nan, v)
        # Ranges that some readings break (consumption per hour, or an instant value).
        lo_hi = draw(st.sampled_from([(None, None), (None, 40.0), (1.0, None)]))
        recs.append(item(f"0{i}-00-0000-023300-01", kind=kind, rollover=rollover,
                         multiplier=float(draw(st.sampled_from([1, 2, 0.5]))),
                         scope=draw(st.sampled_from([1, 1, 2])), min=lo_hi[0], max=lo_hi[1]))
        its.append(np.full(n, i, np.int64))
        quals.append(rng.choice(np.array([0, q.EARLY, q.LATE], np.int32), n, p=[0.94, 0.03, 0.03]))
        tss.append(ts.astype(np.int64))
        vals.append(v)
    items = table(*recs)
    return Series(items, np.concatenate(its), np.concatenate(tss), np.concatenate(vals),
                  np.concatenate(quals))


@st.composite
def starting_and_stopping(draw: st.DrawFn, /, **kw: Any) -> Series:
    """:func:`series` whose items each start late and stop early at random (a meter
    installed during the span, one that goes silent for good, one never heard from)."""
    s = draw(series(**kw))
    if len(s.ts) == 0:
        return s
    lo, hi = int(s.ts.min()), int(s.ts.max())
    keep = np.ones(len(s.ts), bool)
    for i in np.unique(s.item):
        a = draw(st.integers(lo, hi))
        b = draw(st.integers(a, hi))
        keep &= (s.item != i) | ((s.ts >= a) & (s.ts <= b))
    return Series(s.items, s.item[keep], s.ts[keep], s.value[keep], s.quality[keep])


@st.composite
def full_year_series(draw: st.DrawFn, *, year: int = 2024, max_gap_s: int = 1800) -> Series:
    """One cumulative item read at irregular steps never longer than ``max_gap_s`` from
    before 1 January to after 31 December: every period of the year is fully measured."""
    seed = draw(st.integers(0, 2**32 - 1))
    longest = draw(st.integers(60, max_gap_s))
    rollover = draw(st.sampled_from([None, 100_000.0]))
    rng = np.random.default_rng(seed)
    lo, hi = at(year) - max_gap_s * 1_000_000, at(year + 1) + max_gap_s * 1_000_000
    # Steps average longest/2: draw comfortably more than needed, then cut just after hi.
    n = int(3 * (hi - lo) / (longest * 1e6)) + 10
    steps = rng.integers(1, longest + 1, n).astype(np.int64) * 1_000_000
    ts = lo + np.cumsum(steps) - steps[0]
    assert ts[-1] >= hi
    ts = ts[: int(np.searchsorted(ts, hi)) + 1]
    values = _register(rng, len(ts), decreases=False, rollover=rollover, start_value=99_000.0)
    items = table(item(rollover=rollover, multiplier=float(draw(st.sampled_from([1, 40])))))
    return Series(items, np.zeros(len(ts), np.int64), ts, values, np.zeros(len(ts), np.int32))


@dataclass(frozen=True)
class Replaced:
    """One cumulative item whose meter was replaced one to three times, each
    replacement recorded; ``energy`` is what the meters counted (multiplier applied):
    each old register from its first reading (or initial value) to its final value, the
    last one from its initial value to its last reading."""

    series: Series
    replacements: Replacements
    energy: float
    # (time us, old final, new initial) of each replacement, for the database tests
    records: list[tuple[int, float, float]]


@st.composite
def replaced_meters(draw: st.DrawFn, *, max_readings: int = 30) -> Replaced:
    """Readings of one item measured by successive meters, with gaps (some longer than
    30 minutes) and replacement times anywhere in ``(last old reading, first new
    reading]``, all inside one year."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_meters = draw(st.integers(2, 4))
    mult = float(draw(st.sampled_from([1, 2, 0.5, 40])))
    rollover = draw(st.sampled_from([None, 1e7]))  # a rollover value no register reaches
    t = at(2024, 7, 1) - draw(st.integers(0, 48 * 3600)) * 1_000_000
    ts, vals, records = [], [], []
    energy = 0.0
    start = float(np.round(rng.uniform(0, 5000), 2))
    first_value = start
    for m in range(n_meters):
        n = draw(st.integers(1, max_readings))
        steps = rng.integers(1, 3 * 3600 + 1, n) * 1_000_000
        steps = np.where(rng.random(n) < 0.8, np.minimum(steps, 900 * 1_000_000), steps)
        steps[0] = 0 if m == 0 else steps[0]  # a new meter's first reading comes after T
        inc = np.round(rng.exponential(2.0, n) * (rng.random(n) < 0.9), 2)
        inc[0] = 0.0 if m == 0 else inc[0]
        if m > 0:
            # T somewhere in (the last old reading, this meter's first reading].
            replaced_at = t + int(rng.integers(1, int(steps[0]) // 1_000_000 + 1)) * 1_000_000
            # Rounded like a register, never below its last reading.
            old_final = max(vals[-1], float(np.round(vals[-1] + rng.exponential(1.0)
                                                     * (rng.random() < 0.8), 2)))
            energy += old_final - first_value
            first_value = float(np.round(rng.uniform(0, 5000), 2))
            records.append((replaced_at, old_final, first_value))
            start = first_value
        m_ts = t + np.cumsum(steps)
        m_vals = np.round(start + np.cumsum(inc), 2)  # never below start (rounded already)
        ts.extend(m_ts.tolist())
        vals.extend(m_vals.tolist())
        t = int(m_ts[-1])
    energy += vals[-1] - first_value
    items = table(item(multiplier=mult, rollover=rollover))
    n_all = len(ts)
    s = Series(items, np.zeros(n_all, np.int64), np.array(ts, np.int64), np.array(vals),
               np.zeros(n_all, np.int32))
    rp = Replacements.of(np.zeros(len(records), np.int64), np.array([r[0] for r in records]),
                         np.array([r[1] for r in records]), np.array([r[2] for r in records]))
    return Replaced(s, rp, energy * mult, records)


# -- decoder inputs (tests/test_fuzz_decoders.py) ----------------------------------------

DEC_ENTERPRISE = "91350100M000100Y43"
DEC_CODE = "01-00-0000-023300-01"
DEC_TS = 1_764_303_300  # 2025-11-28 12:15:00+08:00, the arrival time of the decoder tests

# Texts with what PostgreSQL refuses (NUL, lone surrogates) and what parsers trip on.
nasty_text = st.one_of(
    st.text(st.characters(codec=None, exclude_categories=()), max_size=12),  # includes Cs
    st.sampled_from(["", "\x00", "\ud800", "a\udfffb", "\u0000\ud800", "٠١٠٠٠٠٠٠٠٢٣٣٠٠٠١", DEC_CODE,
                     DEC_CODE + "\x00", "2025-11-28T12:15:00+08:00\x00", "2025-11-28T12:15:00+08:00",
                     "0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59", "NaN", "1e308"]),
)
_keys = st.sampled_from(["", "a", "code", "ts", "value", "v", "readings", "items", "\x00", "\ud800"])
huge_int = st.one_of(st.integers(), st.sampled_from([10**19, 2**64, -(2**63) - 1, 10**400, -(10**400)]))
any_float = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1e308, -1e308, 1e15, 1e15 + 1, 5e-324])
json_scalar = st.one_of(st.none(), st.booleans(), huge_int, any_float, nasty_text)


def json_value(max_leaves: int = 8) -> st.SearchStrategy[Any]:
    """Any JSON-ish value: scalars of every type (huge integers, NaN, lone surrogates,
    NUL) in arrays and objects."""
    return st.recursive(
        json_scalar,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3),
        max_leaves=max_leaves,
    )


# Built once: a strategy made afresh on every draw is validated afresh, which is slow.
json_small = json_value(4)
json_any = json_value()


def deep(depth: int, leaf: Any = 1, kind: str = "[") -> Any:
    """A value nested ``depth`` arrays (kind "[") or objects (kind "{") deep, built
    without recursion."""
    v = leaf
    for _ in range(depth):
        v = [v] if kind == "[" else {"a": v}
    return v


def deep_text(depth: int, kind: str = "[") -> str:
    return ("[" * depth + "]" * depth) if kind == "[" else ('{"a":' * depth + "1" + "}" * depth)


@st.composite
def reading_objects(draw: st.DrawFn) -> Any:
    """A reading: mostly the right shape with one or more fields of a wrong type or
    value, sometimes something else entirely."""
    good = {"code": DEC_CODE, "ts": draw(st.sampled_from([DEC_TS, "2025-11-28T12:15:00+08:00"])),
            "value": draw(st.floats(0, 1e6) | st.integers(0, 10**6))}
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return draw(json_any)
    if choice == 1:
        return good
    r = dict(good)
    for key in draw(st.lists(st.sampled_from(["code", "ts", "value", "extra"]), min_size=1, max_size=3)):
        r[key] = draw(json_scalar if draw(st.booleans()) else json_small)
    if draw(st.booleans()):
        r.pop(draw(st.sampled_from(["code", "ts", "value"])))
    return r


def to_json(value: Any, *, ascii_only: bool) -> str:
    """JSON text as a gateway might send it: NaN and Infinity literals allowed, lone
    surrogates as \\u escapes (ascii_only) or, when not, written as they fall (which
    makes invalid UTF-8 once encoded with surrogatepass)."""
    return json.dumps(value, ensure_ascii=ascii_only)


@st.composite
def frame_payloads(draw: st.DrawFn) -> bytes:
    """Readings frames: valid ones, wrong types in every position, deep nesting, huge
    integers, NaN literals, duplicate keys, NUL and invalid UTF-8, then byte mutations."""
    frame: dict[str, Any] = {"v": draw(st.sampled_from([1, 1, 1, 1.0, True, 2, "1", None])),
                             "readings": draw(st.lists(reading_objects(), min_size=0, max_size=5))}
    if draw(st.booleans()):
        frame["seq"] = draw(st.sampled_from([0, 7, -1, 2**64, 10**400, 1.5, "3", True, None]))
    if draw(st.integers(0, 5)) == 0:
        frame[draw(st.sampled_from(["v", "readings", "seq"]))] = draw(json_any)
    depth = draw(st.sampled_from([0] * 9 + [10, 900, 1100, 2000]))
    if depth:  # written as text: json.dumps itself stops near Python's recursion limit
        frame["readings"] = [draw(reading_objects()), "__deep__"]
    text = to_json(frame, ascii_only=draw(st.booleans()))
    text = text.replace('"__deep__"', deep_text(depth, draw(st.sampled_from(["[", "{"]))))
    if draw(st.integers(0, 5)) == 0:  # a duplicate key: the later one counts
        dup = draw(st.sampled_from(['"v": 2, ', '"readings": 5, ', '"v": 1, "readings": [], ']))
        text = "{" + dup + text[1:] if text.startswith("{") else text
    data = text.encode("utf-8", "surrogatepass")  # a raw surrogate is invalid UTF-8: also wanted
    return mutate(draw, data) if draw(st.integers(0, 3)) == 0 else data


def mutate(draw: st.DrawFn, data: bytes) -> bytes:
    """A few byte-level edits: flips, insertions (NUL, 0xFF, brackets), deletions, a cut."""
    b = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.integers(0, 3))
        at = draw(st.integers(0, len(b))) if b else 0
        if op == 0 and at < len(b):
            b[at] ^= 1 << draw(st.integers(0, 7))
        elif op == 1:
            b[at:at] = draw(st.sampled_from([b"\x00", b"\xff", b"\xed\xa0\x80", b"[", b"{", b'"', b"NaN", b"9" * 400]))
        elif op == 2:
            del b[at:at + draw(st.integers(1, 8))]
        else:
            del b[at:]
    return bytes(b)


def garbage_frame(seed: int, n: int = 5000) -> bytes:
    """A frame of ``n`` readings that are nearly all wrong in some way, built from a seed
    (Hypothesis drawing 5,000 elements one by one would be slow)."""
    rng = random.Random(seed)
    pool: list[Any] = [None, True, [], {}, [1], {"a": 1}, "", "x", "\x00", "\ud800", 1.5, -1, 0,
                       10**30, 1e308, float("nan"), float("inf"), DEC_CODE, DEC_TS, "2025-11-28T12:15:00+08:00"]
    readings = []
    for _ in range(n):
        shape = rng.random()
        if shape < 0.1:
            readings.append(rng.choice(pool))
            continue
        r = {"code": DEC_CODE, "ts": DEC_TS, "value": rng.random() * 1000}
        for key in rng.sample(["code", "ts", "value"], rng.randint(1, 3)):
            r[key] = rng.choice(pool)
        readings.append(r)
    return json.dumps({"v": 1, "readings": readings}).encode()


@st.composite
def items_payloads(draw: st.DrawFn) -> bytes:
    """Items messages (or files, without the envelope): items with wrong types, unknown
    fields, NUL and lone surrogates in texts, huge numbers, deep nesting."""
    good = {"code": DEC_CODE, "name": "总进线", "energy": "3300", "unit": "kWh", "kind": "cumulative",
            "multiplier": 200.0}
    items = []
    for _ in range(draw(st.integers(0, 4))):
        it = dict(good)
        for key in draw(st.lists(st.sampled_from([*good, "rollover", "min", "max", "scope", "input_type",
                                                  "coefficient", "enterprise", "multipler"]), max_size=3)):
            it[key] = draw(json_scalar if draw(st.booleans()) else json_small)
        items.append(it if draw(st.integers(0, 9)) else draw(json_any))
    doc: Any = {"v": draw(st.sampled_from([1, 1, 1.0, 2, None])), "items": items}
    depth = draw(st.sampled_from([0] * 9 + [100, 1100, 2000]))
    if depth:
        items.append("__deep__")
    text = to_json(doc, ascii_only=draw(st.booleans()))
    data = text.replace('"__deep__"', deep_text(depth, draw(st.sampled_from(["[", "{"])))).encode(
        "utf-8", "surrogatepass")
    return mutate(draw, data) if draw(st.integers(0, 3)) == 0 else data
