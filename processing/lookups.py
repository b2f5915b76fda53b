"""The aggregator's look-ups of readings around its ranges, bounded so that TimescaleDB
leaves the chunks of ``readings`` outside a run's times out once per statement.

"The last reading before t" can only be bounded above, and TimescaleDB cannot exclude
older chunks for it: unbounded, each item's look-up rescanned every chunk of the table
(about 5 µs a chunk, so a run over a hundred days of readings took seconds).  Each
look-up here first goes back no further than :data:`HORIZON_US` before the call's
earliest range; the ranges that find nothing after that floor (an item silent for
longer, or heard from for the first time) are asked again without it.  The statements
are in :mod:`processing.queries` (NEIGHBOURS, LOAD, RUN_SINCE).
"""

from __future__ import annotations

from typing import Any

import asyncpg
import numpy as np

from processing import queries as sql
from processing.writes import strings_at

__all__ = ["HORIZON_US", "load", "neighbours", "run_since"]

HORIZON_US = 2 * 86_400_000_000  # how far before a call's earliest range at first


def _lists(columns: list[Any]) -> list[list[Any]]:
    """Statement arguments from arrays (as lists) or lists."""
    return [c.tolist() if isinstance(c, np.ndarray) else c for c in columns]


async def neighbours(conn: asyncpg.Connection, ents: list[str], codes: list[str],
                     lo: np.ndarray, hi: np.ndarray) -> list[dict[str, Any]]:
    """Per range k: the finite readings just before and after it (None: none)."""
    k = np.arange(len(lo), dtype=np.int32)
    bounds = [int(lo.min()) - HORIZON_US, int(lo.max()), int(hi.min())]
    # Bounded, the look-ups leave the other chunks out at the start: the check for each
    # range again (runtime exclusion) costs more than it saves.
    await conn.execute(sql.EXCLUSION_OFF)
    rows = [dict(r) for r in await conn.fetch(sql.NEIGHBOURS, k.tolist(), ents, codes,
                                              lo.tolist(), hi.tolist(), *bounds)]
    again = np.array([r["k"] for r in rows if r["before"] is None], np.int64)
    if len(again):
        found = {r["k"]: r["before"] for r in await conn.fetch(
            sql.NEIGHBOURS, again.tolist(), strings_at(ents, again), strings_at(codes, again),
            lo[again].tolist(), hi[again].tolist(), sql.NO_FLOOR, *bounds[1:])}
        for r in rows:
            r["before"] = found.get(r["k"], r["before"])
    await conn.execute(sql.EXCLUSION_ON)
    return rows


async def load(conn: asyncpg.Connection, ents: list[str], codes: list[str],
               w_lo: np.ndarray, w_hi: np.ndarray) -> list[np.ndarray]:
    """Every reading of each window [w_lo, w_hi], widened to the finite reading before
    and after it: (window, ts, value, quality) columns."""
    g = np.arange(len(w_lo), dtype=np.int32)
    bounds = [int(w_lo.min()) - HORIZON_US, int(w_lo.max()), int(w_hi.min())]
    await conn.execute(sql.EXCLUSION_OFF)  # as in neighbours()
    loaded = await conn.fetchrow(sql.LOAD, g.tolist(), ents, codes, w_lo.tolist(),
                                 w_hi.tolist(), *bounds)
    types = (np.int64, np.int64, np.float64, np.int32)
    cols = [np.array(loaded[i] or [], t) for i, t in enumerate(types)]
    if loaded[4]:
        # Windows with no reading before them after the floor: loaded again without it
        # (their rows so far begin at the window, perhaps wrongly).
        again = np.array(loaded[4], np.int64)
        redo = await conn.fetchrow(sql.LOAD, again.tolist(), strings_at(ents, again),
                                   strings_at(codes, again), w_lo[again].tolist(),
                                   w_hi[again].tolist(), sql.NO_FLOOR, *bounds[1:])
        keep = ~np.isin(cols[0], again)
        cols = [np.concatenate([c[keep], np.array(redo[i] or [], c.dtype)])
                for i, c in enumerate(cols)]
    await conn.execute(sql.EXCLUSION_ON)
    return cols


async def run_since(conn: asyncpg.Connection, ents: list[str], codes: list[str],
                    t: np.ndarray, value: np.ndarray, lo: np.ndarray,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(k, since) of the registers showing ``value`` at ``t`` since some time in
    [lo, t); the others have shown it since t."""
    args = [np.arange(len(t)), np.asarray(ents, dtype=object), np.asarray(codes, dtype=object),
            t, value, lo]
    bounds = [int(lo.min()) - HORIZON_US, int(lo.max()), int(lo.min()), int(t.max())]
    await conn.execute(sql.EXCLUSION_OFF)  # as in neighbours()
    rows = list(await conn.fetch(sql.RUN_SINCE, *_lists(args), *bounds))
    # Those that found no reading before lo after the floor: again without it.
    again = np.ones(len(t), bool)
    again[[r["k"] for r in rows if r["found"]]] = False
    if again.any():
        a_k = np.flatnonzero(again)
        rows = [r for r in rows if r["found"]]
        rows += await conn.fetch(sql.RUN_SINCE, *_lists([a[a_k] for a in args]), sql.NO_FLOOR,
                                 *bounds[1:])
    await conn.execute(sql.EXCLUSION_ON)
    rows = [r for r in rows if r["since"] is not None]
    return (np.fromiter((r["k"] for r in rows), np.int64, len(rows)),
            np.fromiter((r["since"] for r in rows), np.int64, len(rows)))
