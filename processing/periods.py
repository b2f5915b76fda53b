"""Statistical periods on local-time boundaries: 15 minutes, day, month, year.

Times are int64 microseconds since the Unix epoch (UTC), as ingest stores them.  A
tier's periods are given as a sorted array of boundaries ``b``: period ``i`` is the
half-open interval ``[b[i], b[i+1])``.  Day, month and year boundaries are local
midnights found with zoneinfo, so a 23- or 25-hour day in a zone with daylight saving
time is handled; 15-minute periods subdivide each local day.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np

__all__ = ["DAY", "MONTH", "QUARTER", "QUARTER_US", "TIERS", "TIER_NAMES", "YEAR", "Calendar"]

QUARTER, DAY, MONTH, YEAR = 0, 1, 2, 3  # consumption.stat_type
TIERS = (QUARTER, DAY, MONTH, YEAR)
TIER_NAMES = {QUARTER: "15min", DAY: "day", MONTH: "month", YEAR: "year"}
QUARTER_US = 900 * 1_000_000


class Calendar:
    """Period boundaries in one time zone; boundaries are cached per local year."""

    def __init__(self, zone: ZoneInfo) -> None:
        self.zone = zone
        # Per-instance caches (a Calendar lives as long as the service).
        self._days = lru_cache(maxsize=64)(self._year_days)

    def _midnight_us(self, year: int, month: int = 1, day: int = 1) -> int:
        # An exact integer: whole seconds times 1e6 (local midnights are whole seconds).
        return int(datetime(year, month, day, tzinfo=self.zone).timestamp()) * 1_000_000

    def _year_days(self, year: int) -> np.ndarray:
        """Local midnights of every day of ``year`` and 1 January of the next year."""
        first = datetime(year, 1, 1).toordinal()
        last = datetime(year + 1, 1, 1).toordinal()
        dates = (datetime.fromordinal(o) for o in range(first, last + 1))
        return np.fromiter(
            (self._midnight_us(d.year, d.month, d.day) for d in dates), np.int64, last - first + 1
        )

    def local_year(self, t_us: int) -> int:
        return datetime.fromtimestamp(t_us // 1_000_000, self.zone).year

    def bounds(self, tier: int, lo_us: int, hi_us: int) -> np.ndarray:
        """The fewest boundaries of ``tier`` such that ``b[0] <= lo_us`` and
        ``b[-1] >= hi_us`` (at least two: one period)."""
        lo_us, hi_us = int(lo_us), int(max(hi_us, lo_us))
        y0, y1 = self.local_year(lo_us), self.local_year(hi_us)
        if tier == YEAR:
            b = np.array([self._midnight_us(y) for y in range(y0, y1 + 2)], np.int64)
        elif tier == MONTH:
            b = np.array(
                [self._midnight_us(y, m) for y in range(y0, y1 + 1) for m in range(1, 13)]
                + [self._midnight_us(y1 + 1)],
                np.int64,
            )
        else:
            days = np.concatenate([self._days(y)[:-1] for y in range(y0, y1 + 1)]
                                  + [self._days(y1)[-1:]])
            b = _trim(days, lo_us, hi_us)
            if tier == QUARTER:
                b = _quarters(b)
            elif tier != DAY:
                raise ValueError(f"unknown tier {tier}")
        return _trim(b, lo_us, hi_us)

    def period_starts(self, tier: int, t_us: np.ndarray) -> np.ndarray:
        """The start of the period of ``tier`` containing each time."""
        t_us = np.asarray(t_us, np.int64)
        if len(t_us) == 0:
            return t_us.copy()
        b = self.bounds(tier, int(t_us.min()), int(t_us.max()) + 1)
        return b[np.searchsorted(b, t_us, "right") - 1]


def _trim(b: np.ndarray, lo: int, hi: int) -> np.ndarray:
    i0 = max(int(np.searchsorted(b, lo, "right")) - 1, 0)
    i1 = max(int(np.searchsorted(b, hi, "left")), i0 + 1)
    return b[i0 : i1 + 1]


def _quarters(days: np.ndarray) -> np.ndarray:
    """15-minute boundaries inside each day (a day's length is a whole number of quarter
    hours in every zone since 2000; a remainder would end up in the day's last period)."""
    lengths = np.diff(days)
    counts = -(-lengths // QUARTER_US)  # ceil: a short remainder still gets its period
    starts = np.repeat(days[:-1], counts)
    offsets = np.arange(len(starts), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.concatenate([starts + offsets * QUARTER_US, days[-1:]])
