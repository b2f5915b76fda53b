"""The whole computation for a set of readings held in memory: validation, segments,
stuck registers, all four tiers and the enterprise totals.  Pure: no I/O.

This is what the benchmark measures and what the tests hold the database path to;
:mod:`processing.aggregator` runs the same steps on the stretches of history a batch of
new readings touches, taking the coarse tiers' children from the database.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ingest.quality import OUT_OF_LINE, SUSPECT
from processing.itemtable import ItemTable
from processing.periods import DAY, MONTH, QUARTER, TIERS, YEAR, Calendar
from processing.periodvalues import (
    Consumption,
    GapRows,
    PeriodRows,
    compose,
    distribute,
    finish,
    first_readings,
    gap_tiers,
    totals,
)
from processing.replacing import Replacements
from processing.segments import Readings, Segments, Validated, segment_flags, validate
from processing.stuck import Movers, StuckCandidates, apply_stuck, candidates, flag_stuck

__all__ = ["FirstPass", "Result", "compute", "first_pass", "second_pass", "tier_rows"]


@dataclass(frozen=True, slots=True, eq=False)
class Result:
    validated: Validated
    quality: np.ndarray  # final flags per reading of ``validated.readings``
    seg_flags: np.ndarray  # flags each segment rests on
    tiers: dict[int, PeriodRows]  # raw rows per tier
    consumption: Consumption  # every tier and the 0000 totals

    @property
    def readings(self) -> Readings:
        return self.validated.readings


@dataclass(frozen=True, slots=True, eq=False)
class FirstPass:
    """Validation without STUCK, and the 15-minute rows that tell who moved."""

    validated: Validated
    flags: np.ndarray  # segment flags
    quarters: PeriodRows
    stuck_candidates: StuckCandidates
    quarter_bounds: np.ndarray


def first_pass(readings: Readings, items: ItemTable, *, max_gap_us: int, stuck_after_us: int,
               quarter_bounds: np.ndarray, run_since: np.ndarray | None = None,
               registry_flags: np.ndarray | None = None,
               replacements: Replacements | None = None) -> FirstPass:
    """Validation; ``registry_flags`` (per reading) are flags that the registries decide,
    not the readings (UNVERIFIED, processing.verification), added to what validation finds."""
    v = validate(readings, items, max_gap_us=max_gap_us, replacements=replacements)
    if registry_flags is not None and registry_flags.any():
        v = replace(v, quality=(v.quality | registry_flags).astype(np.int32))
    flags = segment_flags(v.segments, v.quality)
    quarters = distribute(v.segments, flags, quarter_bounds, QUARTER)
    cand = candidates(v, items, stuck_after_us=stuck_after_us, run_since=run_since)
    return FirstPass(v, flags, quarters, cand, quarter_bounds)


def second_pass(p: FirstPass, items: ItemTable, extra_movers: Movers | None = None,
                keep_stuck: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, PeriodRows]:
    """STUCK, given who moved: (reading flags, segment flags, 15-minute rows).

    Movement comes from the first pass's 15-minute rows plus ``extra_movers`` (periods
    of items not at hand).  STUCK only changes flags, so the rows are redistributed
    only when some reading's flags changed.
    """
    v = p.validated
    r = v.readings
    stuck = np.zeros(len(r), bool)
    if len(p.stuck_candidates.reading):
        movers = Movers.of(items, p.quarters.item, p.quarters.start, p.quarters.amount)
        if extra_movers is not None:
            movers = Movers.concat([movers, extra_movers])
        stuck = flag_stuck(p.stuck_candidates, movers, len(r))
    quality = apply_stuck(v.quality, stuck, r.quality, keep_stuck)
    if not np.any(quality != v.quality):
        return quality, p.flags, p.quarters
    flags = segment_flags(v.segments, quality)
    return quality, flags, distribute(v.segments, flags, p.quarter_bounds, QUARTER)


def tier_rows(seg: Segments, flags: np.ndarray, quarters: PeriodRows, bounds: dict[int, np.ndarray],
              *, hierarchical: bool = True) -> dict[int, PeriodRows]:
    """Rows of every tier: days, months and years composed from their children (what
    the database path does), or each tier distributed from the segments directly."""
    out = {QUARTER: quarters}
    if not hierarchical:
        for tier in (DAY, MONTH, YEAR):
            out[tier] = distribute(seg, flags, bounds[tier], tier)
        return out
    whole_in = gap_tiers(seg, bounds)
    for tier in (DAY, MONTH, YEAR):
        crossing = GapRows.of(seg, flags, whole_in == tier)
        out[tier] = compose(out[tier - 1], crossing, bounds[tier], tier)
    return out


def compute(readings: Readings, items: ItemTable, calendar: Calendar, *, max_gap_s: float = 1800.0,
            stuck_after_s: float = 6 * 3600.0, hierarchical: bool = True,
            registry_flags: np.ndarray | None = None, suspect: int = SUSPECT,
            replacements: Replacements | None = None) -> Result:
    """Everything the readings given (and the items' recorded meter replacements)
    determine, as if they were the items' whole history
    (``registry_flags`` and ``suspect``: see :func:`first_pass` and periodvalues.finish)."""
    max_gap_us, stuck_after_us = int(max_gap_s * 1e6), int(stuck_after_s * 1e6)
    lo = int(readings.ts.min()) if len(readings) else 0
    hi = int(readings.ts.max()) if len(readings) else 0
    bounds = {tier: calendar.bounds(tier, lo, hi) for tier in TIERS}
    first = first_pass(readings, items, max_gap_us=max_gap_us, stuck_after_us=stuck_after_us,
                       quarter_bounds=bounds[QUARTER], registry_flags=registry_flags,
                       replacements=replacements)
    quality, flags, quarters = second_pass(first, items)
    v = first.validated
    tiers = tier_rows(v.segments, flags, quarters, bounds, hierarchical=hierarchical)
    per_item = Consumption.concat([finish(tiers[t], items, suspect) for t in TIERS])
    # An item's series begins at its first finite reading that is not out of line.
    begins = np.isfinite(readings.value) & ((quality & OUT_OF_LINE) == 0)
    since = first_readings(readings.item[begins], readings.ts[begins], len(items))
    consumption = Consumption.concat([per_item, totals(per_item, items, since)])
    return Result(v, quality, flags, tiers, consumption)
