"""What one aggregator run writes, and the tally of what it did: consumption rows
upserted or withdrawn, gap segments, reading flags and meter events.  The statements
are in :mod:`processing.queries`; every function sends one or two, whatever the
number of rows.
"""

from __future__ import annotations

from collections import Counter as Tally
from dataclasses import dataclass, field

import asyncpg
import numpy as np

from ingest import quality as q
from processing import queries as sql
from processing.itemtable import ItemTable
from processing.periods import DAY, YEAR
from processing.periodvalues import Consumption, gap_tiers
from processing.replacing import REASONS
from processing.segments import EVENT_KINDS, Readings, Segments
from processing.windows import stretches

__all__ = ["RunTally", "item_keys", "period_key", "settle", "strings_at", "write_events",
           "write_flags", "write_gaps"]


@dataclass(slots=True)
class RunTally:
    """What one run did, for the metrics."""

    pending: int = 0
    claimed: int = 0  # of them by the chunk's claim (the rest: the same items' other rows)
    readings: int = 0
    flagged: Tally[str] = field(default_factory=Tally)
    computed: Tally[int] = field(default_factory=Tally)
    changed: Tally[int] = field(default_factory=Tally)
    events: Tally[str] = field(default_factory=Tally)


def period_key(item: np.ndarray, start: np.ndarray, tier: np.ndarray | int) -> np.ndarray:
    """One int64 per (item, period start, tier): starts are whole seconds after 1970."""
    k: np.ndarray = ((item.astype(np.int64) << 35) | ((start // 1_000_000) << 2)
                     | np.asarray(tier, np.int64))
    return k


def strings_at(values: list[str], index: np.ndarray) -> list[str]:
    """``values[index]`` for an index array, as a list (for a statement's text array)."""
    picked: list[str] = np.asarray(values, dtype=object)[index].tolist()
    return picked


def item_keys(items: ItemTable, item: np.ndarray) -> tuple[list[str], list[str]]:
    """Enterprise and code lists of the given items."""
    return strings_at(items.enterprise, item), strings_at(items.code, item)


async def write_gaps(conn: asyncpg.Connection, items: ItemTable, r: Readings,
                     seg: Segments, flags: np.ndarray, bounds: dict[int, np.ndarray],
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Replace the stored gap segments of each loaded stretch by the current ones;
    (item, t0, tier) of the gaps removed and written."""
    s_first, s_last = stretches(r)
    ents, codes = item_keys(items, r.item[s_first])
    gone = await conn.fetch(sql.DELETE_GAPS, ents, codes, r.ts[s_first].tolist(),
                            r.ts[s_last].tolist())
    g_item = items.lookup((g[0] for g in gone), (g[1] for g in gone))
    g_t0 = np.fromiter((g[2] for g in gone), np.int64, len(gone))
    g_tier = np.fromiter((g[3] for g in gone), np.int64, len(gone))
    whole_in = gap_tiers(seg, bounds)
    keep = (whole_in >= DAY) & (whole_in <= YEAR)
    if keep.any():
        ents, codes = item_keys(items, seg.item[keep])
        await conn.execute(sql.INSERT_GAPS, ents, codes, seg.t0[keep].tolist(),
                           seg.t1[keep].tolist(), whole_in[keep].tolist(),
                           seg.amount[keep].tolist(), flags[keep].tolist())
    return (np.concatenate([g_item, seg.item[keep]]), np.concatenate([g_t0, seg.t0[keep]]),
            np.concatenate([g_tier, whole_in[keep].astype(np.int64)]))


async def settle(conn: asyncpg.Connection, items: ItemTable, tier: int | np.ndarray,
                 c: Consumption, cand_item: np.ndarray, cand_start: np.ndarray, run: RunTally,
                 ) -> tuple[np.ndarray, np.ndarray, Consumption]:
    """Write the rows of ``c`` and withdraw the candidate periods (of ``tier``, one or
    one per candidate) it no longer holds; (item, start) of both, and ``c``."""
    await _upsert(conn, items, c, run)
    tiers = np.broadcast_to(np.asarray(tier, np.int64), cand_item.shape)
    gone = ~np.isin(period_key(cand_item, cand_start, tiers), period_key(c.item, c.start, c.tier))
    if gone.any():
        ents, codes = item_keys(items, cand_item[gone])
        result = await conn.fetch(sql.WITHDRAW, ents, codes, tiers[gone].tolist(),
                                  cand_start[gone].tolist())
        for t, n in zip(*np.unique(tiers[gone], return_counts=True), strict=True):
            run.computed[int(t)] += int(n)
        for r in result:
            if r["changed"]:
                run.changed[r["stat_type"]] += 1
    return (np.concatenate([c.item, cand_item[gone]]),
            np.concatenate([c.start, cand_start[gone]]), c)


async def _upsert(conn: asyncpg.Connection, items: ItemTable, c: Consumption,
                  run: RunTally) -> Consumption:
    # The revision moves only where value, kgce, valid or coverage changed (the statement
    # decides), so a repeated recomputation changes nothing the uplink would resend.
    if len(c):
        ents, codes = item_keys(items, c.item)
        result = await conn.fetch(
            sql.UPSERT, ents, codes, c.tier.tolist(), c.start.tolist(), c.value.tolist(),
            c.kgce.tolist(), c.valid.tolist(), c.coverage.tolist(), c.flags.tolist())
        for tier, n in zip(*np.unique(c.tier, return_counts=True), strict=True):
            run.computed[int(tier)] += int(n)
        for r in result:
            if r["changed"]:
                run.changed[r["stat_type"]] += 1
    return c


async def write_flags(conn: asyncpg.Connection, items: ItemTable, r: Readings,
                      quality: np.ndarray, run: RunTally) -> None:
    """Write back the readings whose flags the run changed; count the flags gained."""
    changed = quality != r.quality
    if not changed.any():
        return
    ents, codes = item_keys(items, r.item[changed])
    await conn.execute(sql.UPDATE_QUALITY, ents, codes, r.ts[changed].tolist(),
                       quality[changed].tolist())
    gained = quality[changed] & ~r.quality[changed]
    for bit, name in q.FLAG_NAMES.items():
        if bit & q.PROCESSING_FLAGS:
            run.flagged[name] += int(np.count_nonzero(gained & bit))


async def write_events(conn: asyncpg.Connection, items: ItemTable, r: Readings,
                       ends_segment: np.ndarray, at: np.ndarray, kind: np.ndarray,
                       reason: np.ndarray, run: RunTally) -> None:
    """Meter events of the readings whose segment was recomputed: the current ones
    written, stale ones (the readings around them changed) removed."""
    none = ends_segment | ~np.isfinite(r.value)
    none[at] = False
    if none.any():
        # Only in the stretches that hold any event at all (usually none).
        s_first, s_last = stretches(r)
        ents, codes = item_keys(items, r.item[s_first])
        held = await conn.fetch(sql.EVENTS_IN, np.arange(len(s_first), dtype=np.int32).tolist(),
                                ents, codes, r.ts[s_first].tolist(), r.ts[s_last].tolist())
        stretch = np.cumsum(~r.linked) - 1
        none &= np.isin(stretch, np.fromiter((h[0] for h in held), np.int64, len(held)))
    if none.any():
        ents, codes = item_keys(items, r.item[none])
        await conn.execute(sql.DELETE_EVENTS, ents, codes, r.ts[none].tolist())
    if len(at) == 0:
        return
    # The value before is the previous finite reading's (a segment's start).
    prev = np.maximum.accumulate(np.where(np.isfinite(r.value), np.arange(len(r)), 0))
    before = r.value[prev[np.maximum(at - 1, 0)]]
    ents, codes = item_keys(items, r.item[at])
    kinds = [EVENT_KINDS[k] for k in kind.tolist()]
    reasons = [REASONS[k] for k in reason.tolist()]
    result = await conn.fetch(sql.UPSERT_EVENTS, ents, codes, r.ts[at].tolist(), kinds,
                              before.tolist(), r.value[at].tolist(), reasons)
    for row in result:
        run.events[row["kind"]] += 1
