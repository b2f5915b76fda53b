"""Reusable Hypothesis strategies and small builders for the processing tests.

Times are int64 microseconds since the epoch; :func:`at` gives them from local
(Asia/Shanghai) wall-clock times, which is how the expected values are worked out by
hand.  Big series (a year of readings) are drawn as a seed plus a few parameters and
generated with numpy, so Hypothesis still shrinks them to something readable.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
from hypothesis import strategies as st

from processing import quality as q
from processing.itemtable import ItemTable
from processing.periods import Calendar
from processing.pipeline import Result, compute
from processing.segments import Readings

__all__ = [
    "CALENDAR",
    "ELEC",
    "ENTERPRISE",
    "GAS",
    "TZ",
    "Row",
    "Series",
    "at",
    "full_year_series",
    "item",
    "readings",
    "rows",
    "run",
    "series",
    "table",
]

TZ = ZoneInfo("Asia/Shanghai")
CALENDAR = Calendar("Asia/Shanghai")
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
    """An items-table record with the defaults of WIRE §1."""
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
