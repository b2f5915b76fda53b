"""Data items as columns, so that per-reading lookups are numpy indexing.

Item ``i`` is row ``i`` of every array.  Each enterprise also gets one pseudo item, its
total (code ``0000``, kind TOTAL), so that every consumption row can name its item by
index.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from processing.coefficients import coefficient_for

__all__ = ["CUMULATIVE", "INSTANT", "INTERVAL", "KIND_CODES", "TOTAL", "TOTAL_CODE", "ItemTable"]

CUMULATIVE, INTERVAL, INSTANT, TOTAL = 0, 1, 2, 3
KIND_CODES = {"cumulative": CUMULATIVE, "interval": INTERVAL, "instant": INSTANT}
TOTAL_CODE = "0000"


@dataclass(frozen=True, slots=True, eq=False)
class ItemTable:
    enterprise: list[str]  # per item
    code: list[str]  # per item
    ent: np.ndarray  # int64 enterprise index (into ``enterprises``)
    kind: np.ndarray  # int8: CUMULATIVE, INTERVAL, INSTANT or TOTAL
    multiplier: np.ndarray  # float64
    rollover: np.ndarray  # float64, NaN when none
    min: np.ndarray  # float64, NaN when none
    max: np.ndarray  # float64, NaN when none
    scope: np.ndarray  # int8
    coefficient: np.ndarray  # float64 kgce per unit, NaN when unknown
    enterprises: list[str]
    total: np.ndarray  # int64 per enterprise: index of its 0000 pseudo item
    index: dict[tuple[str, str], int] = field(repr=False)

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> ItemTable:
        """From mappings with the columns of the ``items`` table (enterprise, code,
        energy, kind, multiplier, rollover, min, max, scope, coefficient)."""
        recs = list(records)
        enterprises = sorted({r["enterprise"] for r in recs})
        ent_index = {e: i for i, e in enumerate(enterprises)}
        n = len(recs)

        def floats(name: str, default: float = np.nan) -> np.ndarray:
            vals = (r.get(name) for r in recs)
            return np.fromiter((default if v is None else v for v in vals), np.float64, n)

        coef = np.fromiter(
            (np.nan if (c := coefficient_for(str(r["energy"]), r.get("coefficient"))) is None else c
             for r in recs), np.float64, n)
        multiplier = floats("multiplier", 1.0)
        kind = np.fromiter((KIND_CODES[r["kind"]] for r in recs), np.int8, n)
        scope = np.fromiter((r.get("scope") or 1 for r in recs), np.int8, n)
        ne = len(enterprises)
        # Pseudo items for the totals, after the real ones.
        total = np.arange(n, n + ne, dtype=np.int64)
        nan_e = np.full(ne, np.nan)
        return cls(
            enterprise=[r["enterprise"] for r in recs] + enterprises,
            code=[r["code"] for r in recs] + [TOTAL_CODE] * ne,
            ent=np.concatenate([
                np.fromiter((ent_index[r["enterprise"]] for r in recs), np.int64, n),
                np.arange(ne, dtype=np.int64)]),
            kind=np.concatenate([kind, np.full(ne, TOTAL, np.int8)]),
            multiplier=np.concatenate([multiplier, np.ones(ne)]),
            rollover=np.concatenate([floats("rollover"), nan_e]),
            min=np.concatenate([floats("min"), nan_e]),
            max=np.concatenate([floats("max"), nan_e]),
            scope=np.concatenate([scope, np.ones(ne, np.int8)]),
            coefficient=np.concatenate([coef, np.ones(ne)]),  # a total's value is kgce
            enterprises=enterprises,
            total=total,
            index={(r["enterprise"], r["code"]): i for i, r in enumerate(recs)}
            | {(e, TOTAL_CODE): n + i for i, e in enumerate(enterprises)},
        )

    def __len__(self) -> int:
        return len(self.code)

    def in_total(self) -> np.ndarray:
        """Items whose kgce goes into their enterprise's 0000 total: whole-plant (scope 1)
        items that measure consumption and have a coefficient.  Sub-meters would count
        the same energy twice; instant items are averages, not consumption."""
        counted: np.ndarray = ((self.scope == 1) & (self.kind != INSTANT) & (self.kind != TOTAL)
                               & np.isfinite(self.coefficient))
        return counted

    def lookup(self, enterprise: Iterable[str], code: Iterable[str]) -> np.ndarray:
        """Item indices for pairs of enterprise and code (-1 when unknown)."""
        get = self.index.get
        return np.fromiter((get((e, c), -1) for e, c in zip(enterprise, code, strict=True)), np.int64)
