"""The enterprise totals (code 0000) an aggregator run rebuilds, and the first reading of
each counted item, from which on it takes part in them.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import numpy as np

from ingest import quality as q
from processing import queries as sql
from processing.itemtable import TOTAL_CODE, ItemTable
from processing.periods import TIERS, Calendar
from processing.periodvalues import NO_READING, Consumption, first_readings, totals
from processing.segments import Readings
from processing.writes import RunTally, item_keys, settle, strings_at

__all__ = ["Begun", "EnterpriseTotals"]


@dataclass(frozen=True, slots=True)
class Begun:
    """Ranges with which an item's series begins: ``lo``, and ``until`` where it began
    before (NO_READING for an item heard from for the first time)."""

    item: np.ndarray
    lo: np.ndarray
    until: np.ndarray


class EnterpriseTotals:
    """Writes the 0000 rows of the periods a run touched.  Keeps the first finite reading
    per counted item once looked up: it only ever moves earlier, and every reading this
    instance processes passes through :meth:`note`.  (A backfill processed by another
    instance is seen after a restart.)"""

    def __init__(self, calendar: Calendar) -> None:
        self._calendar = calendar
        self._since: dict[tuple[str, str], int] = {}

    async def write(self, conn: asyncpg.Connection, items: ItemTable,
                    keys: list[tuple[np.ndarray, np.ndarray, Consumption]], begun: Begun,
                    run: RunTally) -> None:
        """0000 rows of every (enterprise, tier, period) recomputed or withdrawn for some
        item, from all the enterprise's counted items in the database, a counted item
        without a row counting as measuring nothing from its first reading on.  Not only
        counted items' periods: an item that stopped counting (its scope changed) must
        leave the total too.  Where a counted item's series now begins earlier, the
        stored totals between its new and its old beginning are recomputed as well: it
        takes part in them now."""
        tiers = np.concatenate([np.full(len(k[0]), t, np.int64) for t, k in zip(TIERS, keys,
                                                                                strict=True)])
        item = np.concatenate([k[0] for k in keys])
        starts = np.concatenate([k[1] for k in keys])
        ent = items.ent[item]
        b_ok = items.in_total()[begun.item]
        if b_ok.any():
            ents, _ = item_keys(items, begun.item[b_ok])
            stale = await conn.fetch(sql.STORED_TOTALS, ents, begun.lo[b_ok].tolist(),
                                     begun.until[b_ok].tolist())
            ent = np.concatenate([ent, items.ent[items.lookup(
                (r[0] for r in stale), (TOTAL_CODE for _ in stale))]])
            tiers = np.concatenate([tiers, np.fromiter((r[1] for r in stale), np.int64, len(stale))])
            starts = np.concatenate([starts, np.fromiter((r[2] for r in stale), np.int64,
                                                         len(stale))])
        if len(ent) == 0:
            return
        key = np.unique(np.stack([ent, tiers, starts]), axis=1)
        counted = np.flatnonzero(items.in_total() & np.isin(items.ent, key[0]))
        counted_codes = sorted({items.code[i] for i in counted})
        rows = await conn.fetch(sql.TOTAL_INPUTS, strings_at(items.enterprises, key[0]),
                                key[1].tolist(), key[2].tolist(), counted_codes)
        item = items.lookup((r[0] for r in rows), (r[1] for r in rows))
        ok = item >= 0
        n = len(rows)
        tier = np.fromiter((r[2] for r in rows), np.int8, n)[ok]
        start = np.fromiter((r[3] for r in rows), np.int64, n)[ok]
        end = np.empty(len(start), np.int64)
        for t in TIERS:
            m = tier == t
            if m.any():
                b = self._calendar.bounds(t, int(start[m].min()), int(start[m].max()) + 1)
                end[m] = b[np.searchsorted(b, start[m], "right")]
        kgce = np.fromiter((r[4] for r in rows), np.float64, n)[ok]
        inputs = Consumption(
            tier, item[ok], start, end, kgce, kgce,
            np.fromiter((r[5] for r in rows), np.float64, n)[ok],
            np.fromiter((r[6] for r in rows), bool, n)[ok],
            np.fromiter((r[7] for r in rows), np.int32, n)[ok],
        )
        since = await self._first_readings(conn, items, counted)
        result = totals(inputs, items, since)
        await settle(conn, items, key[1], result, items.total[key[0]], key[2], run)

    def note(self, items: ItemTable, r: Readings) -> None:
        """Move the first readings already looked up earlier where ``r`` (readings this
        run processes) begins before them."""
        fin = np.isfinite(r.value) & ((r.quality & q.OUT_OF_LINE) == 0)
        first = first_readings(r.item[fin], r.ts[fin], len(items))
        for i in np.flatnonzero(first < NO_READING):
            key = (items.enterprise[i], items.code[i])
            if key in self._since:
                self._since[key] = min(self._since[key], int(first[i]))

    async def _first_readings(self, conn: asyncpg.Connection, items: ItemTable,
                              counted: np.ndarray) -> np.ndarray:
        """Per item, its first finite reading (NO_READING for items not asked about or
        never heard from)."""
        since = np.full(len(items), NO_READING, np.int64)
        ask = [int(i) for i in counted
               if (items.enterprise[i], items.code[i]) not in self._since]
        if ask:
            ents, codes = item_keys(items, np.array(ask, np.int64))
            rows = await conn.fetch(sql.FIRST_READINGS, list(range(len(ask))), ents, codes)
            for r in rows:
                if r["since"] is not None:
                    i = ask[r["k"]]
                    self._since[(items.enterprise[i], items.code[i])] = r["since"]
        for i in counted:
            since[i] = self._since.get((items.enterprise[i], items.code[i]), NO_READING)
        return since
