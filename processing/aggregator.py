"""The aggregator: turns ``pending_recompute`` rows into ``consumption`` rows.  A stage
for :class:`runtime.runner.StageRunner`: each step is one run.

One run, in one transaction:

1. claim a bounded chunk of pending rows (FOR UPDATE SKIP LOCKED) of enterprises it
   can lock (a transaction-level advisory try-lock: enterprises another instance is
   working on are left to it, so two instances never compute the same coarse periods
   or totals from each other's half-written children);
2. per item, find the readings around each pending range and load the 15-minute windows
   they touch plus one reading either side (:mod:`processing.windows`);
3. validate and distribute with the pure functions (:mod:`processing.pipeline`), only
   keeping the 15-minute periods that lie wholly inside a loaded window;
4. rebuild day, month and year periods from their children in the database plus the
   crossing gap segments (table ``gap_segments``), then the 0000 totals
   (:mod:`processing.totalrows`);
5. upsert (the revision moves only when value, kgce, valid or coverage changed) and
   withdraw, update reading flags and meter events (:mod:`processing.writes`), delete
   the claimed pending rows.

Readings, items and consumption of other instances are only read under the enterprise
lock, so a run sees a consistent picture of the enterprises it works on.  The statements
are in :mod:`processing.queries`.
"""

from __future__ import annotations

import time

import asyncpg
import numpy as np
from prometheus_client import CollectorRegistry

from config.settings import ProcessingSettings
from ingest import quality as q
from processing import lookups
from processing import queries as sql
from processing.itemtable import CUMULATIVE, INSTANT, ItemTable
from processing.metrics import ProcessingMetrics
from processing.periods import DAY, MONTH, QUARTER, QUARTER_US, TIERS, YEAR, Calendar
from processing.periodvalues import NO_READING, GapRows, PeriodRows, compose, finish
from processing.pipeline import first_pass, second_pass
from processing.replacing import Replacements
from processing.segments import Readings
from processing.stuck import Movers
from processing.totalrows import Begun, EnterpriseTotals
from processing.verification import unverified_flags
from processing.windows import (
    holes,
    inside,
    link_groups,
    merge_intervals,
    quarter_windows,
    stretches,
)
from processing.writes import (
    RunTally,
    item_keys,
    settle,
    strings_at,
    write_events,
    write_flags,
    write_gaps,
)

__all__ = ["Aggregator"]


_BRIDGE_US = 3_600_000_000  # pending ranges of an item less than an hour apart are merged
_FAR_FUTURE = 7_258_118_400_000_000  # 2200-01-01: "until now and ever after", as a time
_MORE_PER_ITEM = 50  # extra pending rows of a claimed item taken in the same run


class Aggregator:
    """Recomputes the periods that pending readings touch.  Several instances may run
    against one database.

    A step that fails leaves nothing half done: the claimed rows go back with the rolled
    back transaction, and the next step claims them again."""

    name = "aggregator"

    def __init__(self, settings: ProcessingSettings, *, pool: asyncpg.Pool,
                 registry: CollectorRegistry) -> None:
        self._pool = pool
        self._zone = settings.zone
        self._calendar = Calendar(self._zone)
        self._max_gap_us = int(settings.max_gap_s * 1e6)
        self._stuck_after_us = int(settings.stuck_after_s * 1e6)
        self._chunk = settings.chunk
        self._out_of_line_us = int(settings.out_of_line_s * 1e6)
        self._totals = EnterpriseTotals(self._calendar)
        # "flag": UNVERIFIED readings are flagged, their periods stay valid.
        self._suspect = q.SUSPECT if settings.unverified == "invalid" else q.SUSPECT & ~q.UNVERIFIED
        self.metrics = ProcessingMetrics(registry)

    async def step(self) -> bool:
        """One run; True when it claimed a full chunk, so more is likely waiting now.

        A run that claimed less took all there was: the next one waits the stage's
        interval, and the work that comes meanwhile gathers.  Run at once, the aggregator
        would keep pace with ingest one reading per item per run, its most expensive
        case per reading, and take the database from ingest; a moment later, one run
        takes several readings of each item for about the price of one."""
        try:
            return (await self._run_once()).claimed >= self._chunk
        except Exception as exc:
            # The runner logs it and pauses; the aggregator's own count stays, as the
            # dashboards and alerts read it.
            self.metrics.run_failed(exc)
            raise

    async def run_once(self) -> int:
        """One chunk of pending rows, in one transaction; the number processed."""
        return (await self._run_once()).pending

    async def _run_once(self) -> RunTally:
        started = time.perf_counter()
        run = RunTally()
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                await self._run(conn, run)
            self.metrics.backlog_seen(await conn.fetchval(sql.BACKLOG))
        if run.pending == 0:
            return run
        self.metrics.run_finished(
            seconds=time.perf_counter() - started, pending=run.pending, readings=run.readings,
            flagged=run.flagged, computed=run.computed, changed=run.changed, events=run.events)
        return run

    # -- one run -----------------------------------------------------------------------

    async def _run(self, conn: asyncpg.Connection, run: RunTally) -> None:
        claims = await conn.fetch(sql.CLAIM, self._chunk)
        if not claims:
            return
        run.claimed = len(claims)
        await conn.execute(sql.PLANNER)
        pairs = sorted({(c["enterprise"], c["code"]) for c in claims})
        claims += await conn.fetch(sql.CLAIM_MORE, [p[0] for p in pairs], [p[1] for p in pairs],
                                   [c["id"] for c in claims], _MORE_PER_ITEM)
        enterprises = sorted({c["enterprise"] for c in claims})
        items = ItemTable.from_records(dict(r) for r in await conn.fetch(sql.ITEMS, enterprises))
        item = items.lookup((c["enterprise"] for c in claims), (c["code"] for c in claims))
        lo = np.fromiter((c["lo"] for c in claims), np.int64, len(claims))
        hi = np.fromiter((c["hi"] for c in claims), np.int64, len(claims))
        known = item >= 0  # readings exist only for registered items; be safe anyway
        if known.any():
            # Ranges of an item close together become one: what lies between them is
            # loaded anyway, and one neighbour lookup is cheaper than many.
            merged = merge_intervals(item[known], lo[known], hi[known], bridge=_BRIDGE_US)
            await self._recompute(conn, items, *merged, run)
        await conn.execute(sql.DELETE_CLAIMED, [c["id"] for c in claims])
        run.pending = len(claims)

    async def _recompute(self, conn: asyncpg.Connection, items: ItemTable, item: np.ndarray,
                         lo: np.ndarray, hi: np.ndarray, run: RunTally) -> None:
        """Everything the readings of ``item`` in ``[lo, hi]`` (merged per item) touch."""
        w_item, w_lo, w_hi, begun = await self._windows(conn, items, item, lo, hi, run)
        readings = await self._load(conn, items, w_item, w_lo, w_hi)
        if readings is None:
            return
        run.readings += len(readings)
        self._totals.note(items, readings)
        cal = self._calendar
        span_lo, span_hi = int(readings.ts.min()), int(readings.ts.max())
        bounds = {t: cal.bounds(t, span_lo, span_hi) for t in TIERS}

        # Validate, stuck registers included (who moved: this run's rows and the database's).
        run_since, keep_stuck = await self._run_since(conn, items, readings)
        registry_flags = await unverified_flags(conn, items, readings, self._zone)
        first = first_pass(readings, items, max_gap_us=self._max_gap_us,
                           stuck_after_us=self._stuck_after_us, quarter_bounds=bounds[QUARTER],
                           run_since=run_since, registry_flags=registry_flags,
                           replacements=await self._replacements(conn, items, readings))
        # Only the 15-minute periods inside a window are complete.
        keep_q = inside(first.quarters.item, first.quarters.start, first.quarters.end,
                        w_item, w_lo, w_hi)
        stored = None
        cand = first.stuck_candidates
        if len(cand.reading):
            stored = await self._stored_movers(conn, items, cand.ent, cand.lo, cand.hi,
                                               first.quarters.take(keep_q))
        quality, flags, quarters = second_pass(first, items, stored, keep_stuck)
        v = first.validated
        g_item, g_t0, g_tier = await write_gaps(conn, items, readings, v.segments, flags,
                                                      bounds)
        if len(g_t0) and int(g_t0.min()) < span_lo:  # a stored gap reaching before the stretch
            bounds = {t: cal.bounds(t, int(g_t0.min()), span_hi) for t in TIERS}

        # Tiers: 15 minutes from the readings, the rest from their children.  Rows a
        # period no longer deserves are withdrawn, and their parents recomputed too.
        child = finish(quarters.take(keep_q), items, self._suspect)
        e_item, e_start = await self._stored_quarters(
            conn, items, *holes(w_item, w_lo, w_hi, child.item, child.start, child.end))
        keys = [await settle(conn, items, QUARTER, child, e_item, e_start, run)]
        for tier in (DAY, MONTH, YEAR):
            # The children written or withdrawn, and the gap segments (stored before or
            # now) that this tier's periods hold whole: a period may hold nothing else.
            c_item, c_start, _ = keys[-1]
            c_item = np.concatenate([c_item, g_item[g_tier == tier]])
            c_start = np.concatenate([c_start, g_t0[g_tier == tier]])
            rows = await self._coarse(conn, items, c_item, c_start, bounds[tier], tier)
            p_item, p_start = self._parents(c_item, c_start, bounds[tier])
            keys.append(await settle(conn, items, tier, finish(rows, items, self._suspect), p_item,
                                           p_start, run))
        await self._totals.write(conn, items, keys, begun, run)

        await write_flags(conn, items, readings, quality, run)
        await write_events(conn, items, readings, v.ends_segment, v.event_reading,
                           v.event_kind, v.event_reason, run)

    async def _windows(self, conn: asyncpg.Connection, items: ItemTable, item: np.ndarray,
                       lo: np.ndarray, hi: np.ndarray, run: RunTally,
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Begun]:
        """The merged 15-minute windows around each range and its finite neighbours, and
        the ranges with no reading before them: their item's series now begins there.
        Out-of-line readings of the ranges are flagged on the way."""
        ents, codes = item_keys(items, item)
        rows = await lookups.neighbours(conn, ents, codes, lo, hi)
        rk = np.fromiter((r["k"] for r in rows), np.int64, len(rows))
        a, b = lo.copy(), hi.copy()  # no neighbour: the range's own end
        a[rk] = [lo[i] if r["before"] is None else r["before"] for i, r in zip(rk, rows, strict=True)]
        b[rk] = [hi[i] if r["after"] is None else r["after"] for i, r in zip(rk, rows, strict=True)]
        await self._flag_out_of_line(conn, items, item, lo, hi, b, run)
        qb = self._calendar.bounds(QUARTER, int(a.min()), int(b.max()))
        ws, we = quarter_windows(qb, a, b)
        first = np.ones(len(item), bool)
        first[rk] = [r["before"] is None for r in rows]
        until = np.full(len(item), NO_READING, np.int64)  # where it began before, at most
        until[rk] = [NO_READING if r["after"] is None else r["after"] for r in rows]
        begun = Begun(item[first], lo[first], np.minimum(until[first], _FAR_FUTURE))
        return (*merge_intervals(item, ws, we), begun)

    async def _flag_out_of_line(self, conn: asyncpg.Connection, items: ItemTable,
                                item: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                                after: np.ndarray, run: RunTally) -> None:
        """Flag the readings of the ranges whose next finite reading lies more than
        ``out_of_line_s`` later and arrived no later (``after``: the next finite reading
        after each range, or its end).  Before loading, so that the flag rides with the
        readings like ingest's.  Only readings that far before ``after`` can be out of
        line: a range of current readings sends nothing."""
        below = np.minimum(hi + 1, after - self._out_of_line_us)
        ask = below > lo
        if not ask.any():
            return
        ents, codes = item_keys(items, item[ask])
        flagged = await conn.fetch(sql.FLAG_OUT_OF_LINE, ents, codes, lo[ask].tolist(),
                                   below[ask].tolist(), q.OUT_OF_LINE, self._out_of_line_us)
        run.flagged[q.FLAG_NAMES[q.OUT_OF_LINE]] += len(flagged)

    async def _load(self, conn: asyncpg.Connection, items: ItemTable, w_item: np.ndarray,
                    w_lo: np.ndarray, w_hi: np.ndarray) -> Readings | None:
        ents, codes = item_keys(items, w_item)
        cols = await lookups.load(conn, ents, codes, w_lo, w_hi)
        if len(cols[0]) == 0:
            return None
        lg = cols[0]
        return link_groups(w_item[lg], cols[1], cols[2], cols[3], lg)

    @staticmethod
    async def _replacements(conn: asyncpg.Connection, items: ItemTable, r: Readings,
                            ) -> Replacements:
        """The recorded meter replacements inside the loaded stretches of cumulative
        items (a replacement only matters between two readings of a register)."""
        s_first, s_last = stretches(r)
        ask = (items.kind[r.item[s_first]] == CUMULATIVE) & (s_last > s_first)
        s_first, s_last = s_first[ask], s_last[ask]
        if len(s_first) == 0:
            return Replacements.of(*(np.zeros(0),) * 4)
        ents, codes = item_keys(items, r.item[s_first])
        rows = await conn.fetch(sql.REPLACEMENTS, np.arange(len(s_first), dtype=np.int32).tolist(),
                                ents, codes, r.ts[s_first].tolist(), r.ts[s_last].tolist())
        k = np.fromiter((row[0] for row in rows), np.int64, len(rows))
        return Replacements.of(
            r.item[s_first[k]], np.fromiter((row[1] for row in rows), np.int64, len(rows)),
            np.fromiter((row[2] for row in rows), np.float64, len(rows)),
            np.fromiter((row[3] for row in rows), np.float64, len(rows)))

    async def _run_since(self, conn: asyncpg.Connection, items: ItemTable, r: Readings,
                         ) -> tuple[np.ndarray, np.ndarray]:
        """For each stretch's first reading: since when its register has shown its value
        (looked up only when the stretch begins with an unchanged register), and where
        its stored STUCK flag is kept instead (when it was not looked up)."""
        n = len(r)
        since = np.full(n, np.iinfo(np.int64).max, np.int64)
        first = np.flatnonzero(~r.linked)
        nxt = np.minimum(first + 1, n - 1)
        ask = ((items.kind[r.item[first]] == CUMULATIVE) & (nxt > first) & r.linked[nxt]
               & (r.value[nxt] == r.value[first]))
        keep = np.zeros(n, bool)
        keep[first[~ask]] = True
        idx = first[ask]
        if len(idx):
            ents, codes = item_keys(items, r.item[idx])
            t = r.ts[idx]
            k, at = await lookups.run_since(conn, ents, codes, t, r.value[idx],
                                            t - self._stuck_after_us)
            since[idx[k]] = at
        return since, keep

    async def _stored_movers(self, conn: asyncpg.Connection, items: ItemTable, ent: np.ndarray,
                             lo: np.ndarray, hi: np.ndarray, recomputed: PeriodRows) -> Movers:
        """Other items' movement from the database, for the stuck candidates' windows;
        periods this run recomputes are taken from the run, not from the database."""
        u_ent = np.unique(ent)
        w_lo = np.array([lo[ent == e].min() for e in u_ent], np.int64) - QUARTER_US
        w_hi = np.array([hi[ent == e].max() for e in u_ent], np.int64)
        rows = await conn.fetch(sql.MOVERS, strings_at(items.enterprises, u_ent), w_lo.tolist(),
                                w_hi.tolist())
        item = items.lookup((r["enterprise"] for r in rows), (r["code"] for r in rows))
        start = np.fromiter((r["start"] for r in rows), np.int64, len(rows))
        ok = item >= 0
        item, start = item[ok], start[ok]
        fresh = ~np.isin((item << 32) | (start // 1_000_000),
                         (recomputed.item << 32) | (recomputed.start // 1_000_000))
        return Movers.of(items, item[fresh], start[fresh], np.ones(int(fresh.sum())))

    @staticmethod
    def _parents(item: np.ndarray, start: np.ndarray, bounds: np.ndarray,
                 ) -> tuple[np.ndarray, np.ndarray]:
        """(item, start) of the periods of ``bounds`` holding the given child periods."""
        p = np.searchsorted(bounds, start, "right") - 1
        key = np.unique(item * np.int64(len(bounds)) + p)
        return key // len(bounds), bounds[key % len(bounds)]

    async def _coarse(self, conn: asyncpg.Connection, items: ItemTable, c_item: np.ndarray,
                      c_start: np.ndarray, bounds: np.ndarray, tier: int) -> PeriodRows:
        """Every period of ``tier`` containing one of the child periods (just written or
        withdrawn), rebuilt from all its children in the database and its crossing gap
        segments."""
        if len(c_item) == 0:
            z = np.zeros(0, np.int64)
            return PeriodRows(tier, z, z, z, np.zeros(0), z, np.zeros(0, np.int32))
        p = np.searchsorted(bounds, c_start, "right") - 1
        key = np.unique(c_item * np.int64(len(bounds)) + p)
        t_item, t_p = key // len(bounds), key % len(bounds)
        t_lo, t_hi = bounds[t_p], bounds[t_p + 1]
        ents, codes = item_keys(items, t_item)
        k = np.arange(len(key), dtype=np.int32).tolist()
        inst = (items.kind[t_item] == INSTANT).tolist()
        # (A failure rolls the transaction back, and the setting with it.)
        await conn.execute(sql.EXCLUSION_OFF)
        sums = await conn.fetch(sql.CHILDREN, k, ents, codes, t_lo.tolist(), t_hi.tolist(), inst,
                                tier - 1, self._zone.key, int(t_lo.min()), int(t_hi.max()))
        await conn.execute(sql.EXCLUSION_ON)
        sk = np.fromiter((r[0] for r in sums), np.int64, len(sums))
        summed = PeriodRows(
            tier - 1, t_item[sk], t_lo[sk], t_hi[sk],
            np.fromiter((r[1] for r in sums), np.float64, len(sums)),
            np.fromiter((r[2] for r in sums), np.int64, len(sums)),
            np.fromiter((r[3] for r in sums), np.int32, len(sums)),
        )
        gap_rows = await conn.fetch(sql.GAPS, k, ents, codes, t_lo.tolist(), t_hi.tolist(), tier)
        gk = np.fromiter((r[0] for r in gap_rows), np.int64, len(gap_rows))
        gaps = GapRows(
            t_item[gk],
            np.fromiter((r[1] for r in gap_rows), np.int64, len(gap_rows)),
            np.fromiter((r[2] for r in gap_rows), np.int64, len(gap_rows)),
            np.fromiter((r[3] for r in gap_rows), np.float64, len(gap_rows)),
            np.fromiter((r[4] for r in gap_rows), np.int32, len(gap_rows)),
        )
        return compose(summed, gaps, bounds, tier)

    async def _stored_quarters(self, conn: asyncpg.Connection, items: ItemTable,
                               h_item: np.ndarray, h_lo: np.ndarray, h_hi: np.ndarray,
                               ) -> tuple[np.ndarray, np.ndarray]:
        """(item, start) of the stored 15-minute rows that say something in the parts of
        the windows where this run produced no row (``holes``): each is recomputed and
        produced nothing, so it is withdrawn.  Where the run produced a row the upsert
        overwrites the stored one, so a run whose windows it covers whole (readings
        closer than 15 minutes, the usual case) sends nothing."""
        if len(h_item) == 0:
            return h_item, h_lo
        ents, codes = item_keys(items, h_item)
        k = np.arange(len(h_item), dtype=np.int32).tolist()
        rows = await conn.fetch(sql.STORED_QUARTERS, k, ents, codes, h_lo.tolist(),
                                h_hi.tolist())
        hk = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        return h_item[hk], np.fromiter((r[1] for r in rows), np.int64, len(rows))
