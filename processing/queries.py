"""The aggregator's SQL: every statement one run sends, in the order a run sends them.

Times cross the wire as int8 microseconds since the epoch, converted exactly on the
server (:func:`_ts`, :func:`_us`), so no float or time zone conversion of the driver
stands between the numpy columns and the tables.  Lists go as arrays and are unnested on
the server: one round trip per statement, whatever the number of items.
"""

from __future__ import annotations

from ingest.quality import OUT_OF_LINE
from processing.itemtable import TOTAL_CODE
from processing.periods import QUARTER_US

__all__ = [
    "BACKLOG", "CHILDREN", "CLAIM", "CLAIM_MORE", "DELETE_CLAIMED", "DELETE_EVENTS",
    "DELETE_GAPS", "EVENTS_IN", "EXCLUSION_OFF", "EXCLUSION_ON", "FIRST_READINGS", "FLAG_OUT_OF_LINE", "GAPS",
    "INSERT_GAPS", "ITEMS", "LOAD", "MOVERS", "NEIGHBOURS", "NO_FLOOR", "PLANNER", "REPLACEMENTS", "RUN_SINCE",
    "STORED_QUARTERS", "STORED_TOTALS", "TOTAL_INPUTS",
    "UPDATE_QUALITY", "UPSERT", "UPSERT_EVENTS", "WITHDRAW",
]


def _ts(param: str) -> str:
    """SQL for an int8 of microseconds since the epoch as timestamptz (exact)."""
    return f"(timestamptz 'epoch' + {param} * interval '1 microsecond')"


def _us(column: str) -> str:
    """SQL for a timestamptz as int8 microseconds since the epoch (exact)."""
    return f"(extract(epoch FROM {column}) * 1000000)::int8"


# Claim pending rows of enterprises no other instance is working on: the advisory
# try-lock (held to the end of the transaction) is taken in the scan, so rows of an
# enterprise another instance holds are passed over, not waited for.  Two instances
# never compute the same coarse periods or totals from each other's half-written
# children.
CLAIM = f"""
SELECT id, enterprise, code, {_us('from_ts')} AS lo, {_us('to_ts')} AS hi
FROM pending_recompute
WHERE pg_try_advisory_xact_lock(hashtextextended('nhjc.aggregate:' || enterprise, 0))
ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
"""

# Once behind, an item has many pending rows far apart in the queue (one per batch).
# Taking the claimed items' other pending rows too lets one run merge them: the backlog
# is then worked off in bigger steps instead of one batch at a time.
CLAIM_MORE = f"""
SELECT p.id, p.enterprise, p.code, {_us('p.from_ts')} AS lo, {_us('p.to_ts')} AS hi
FROM unnest($1::text[], $2::text[]) AS u(e, c)
CROSS JOIN LATERAL (
  SELECT * FROM pending_recompute p
  WHERE p.enterprise = u.e AND p.code = u.c AND NOT p.id = ANY($3::int8[])
  ORDER BY p.id LIMIT $4 FOR UPDATE SKIP LOCKED
) AS p
"""

# Every query of a run is driven by a short list of keys (items, periods, timestamps)
# into large tables.  Nested loops over the primary-key indexes are always right for
# that; a hash or merge join would read whole chunks when the planner misjudges a list.
# No JIT: a statement over a hypertable of many chunks is estimated dear enough to be
# compiled, and compiling the scans of a hundred chunks took seconds a run, for
# statements that then run in milliseconds.
PLANNER = """
SET LOCAL enable_hashjoin = off;
SET LOCAL enable_mergejoin = off;
SET LOCAL max_parallel_workers_per_gather = 0;
SET LOCAL jit = off;
"""

ITEMS = """
SELECT enterprise, code, energy, kind, multiplier, rollover, min, max, scope, coefficient
FROM items WHERE enterprise = ANY($1::text[])
"""

# A floor below every reading (the year 69: still a valid timestamptz).
NO_FLOOR = -60_000_000_000_000_000

_UNNEST_RANGES = "unnest($1::int4[], $2::text[], $3::text[], $4::int8[], $5::int8[]) AS u(k, e, c, lo, hi)"

# Only finite values make segments; NaN sorts above +Infinity in PostgreSQL.
_FINITE = "r.value < 'Infinity'::float8 AND r.value > '-Infinity'::float8"

# Constant bounds of the look-ups around the ranges of a call: $6 no earlier than
# (the caller's floor: a while before the earliest range), $7 before (the latest range's
# start), $8 after (the earliest range's end).  With them TimescaleDB leaves every
# other chunk of readings out once, at the start; without, each range's look-up went
# through every chunk of the table (about 5 µs a chunk: a hundred days of readings made
# a run of a thousand items take seconds).  A reading before the floor is not found:
# the caller asks again without it (floor _NO_FLOOR) for the ranges that found nothing.
_BEFORE = f"r.ts >= {_ts('$6')} AND r.ts < {_ts('$7')}"
_AFTER = f"r.ts > {_ts('$8')}"

# The finite readings just before and just after each pending range ($6 to $8: the
# bounds above).
NEIGHBOURS = f"""
SELECT u.k,
  (SELECT {_us('max(r.ts)')} FROM readings r
    WHERE r.enterprise = u.e AND r.code = u.c AND r.ts < {_ts('u.lo')} AND {_BEFORE}
      AND {_FINITE}) AS before,
  (SELECT {_us('min(r.ts)')} FROM readings r
    WHERE r.enterprise = u.e AND r.code = u.c AND r.ts > {_ts('u.hi')} AND {_AFTER}
      AND {_FINITE}) AS after
FROM {_UNNEST_RANGES}
"""

# Every reading of each window, widened to the finite reading before and the one after
# it (non-finite readings in between included: the segment across them rests on them).
# Returned as arrays: asyncpg decodes arrays in C, much faster than a Record per row.
# OFFSET 0 keeps each LATERAL subquery a per-window index scan: flattened into a join,
# the planner may scan whole chunks instead.
# $6 to $8 bound the look-ups as in NEIGHBOURS; the fifth array holds the windows
# that found no reading before them after the floor (their rows are to be loaded again
# without it).
LOAD = f"""
WITH b AS (
  SELECT u.k, u.e, u.c, coalesce(b.f, {_ts('u.lo')}) AS f, b.f IS NULL AS none_before,
    coalesce((SELECT min(r.ts) FROM readings r WHERE r.enterprise = u.e AND r.code = u.c
               AND r.ts > {_ts('u.hi')} AND {_AFTER} AND {_FINITE}), {_ts('u.hi')}) AS l
  FROM {_UNNEST_RANGES}
  CROSS JOIN LATERAL (SELECT (SELECT max(r.ts) FROM readings r
    WHERE r.enterprise = u.e AND r.code = u.c AND r.ts < {_ts('u.lo')} AND {_BEFORE}
      AND {_FINITE}) AS f OFFSET 0) AS b
)
SELECT array_agg(b.k), array_agg({_us('x.ts')}), array_agg(x.value), array_agg(x.quality),
  (SELECT array_agg(k) FROM b WHERE none_before)
FROM b
CROSS JOIN LATERAL (
  SELECT r.ts, r.value, r.quality FROM readings r
  WHERE r.enterprise = b.e AND r.code = b.c AND r.ts >= b.f AND r.ts <= b.l
    AND r.ts >= {_ts('$6')} OFFSET 0
) AS x
"""

# The recorded meter replacements inside each loaded stretch (lo, hi]: (stretch, time,
# old final, new initial).  A replacement at a stretch's first reading belongs to the
# segment before it, which the stretch does not hold.
REPLACEMENTS = f"""
SELECT u.k, {_us('m.replaced_at')}, m.old_final, m.new_initial
FROM {_UNNEST_RANGES}
JOIN meter_replacements m ON m.enterprise = u.e AND m.code = u.c
  AND m.replaced_at > {_ts('u.lo')} AND m.replaced_at <= {_ts('u.hi')}
"""

# Since when (clamped to t - stuck_after) a register has shown the value v it shows at
# t: the earliest reading after the last different one, looking back no further than
# the reading just before t - stuck_after.  since is NULL for: since t.  Bounded as
# NEIGHBOURS: $7 the floor, $8 the latest lo, $9 the earliest lo, $10 the latest t.  A k
# with no row of found = true found no reading before its lo after the floor (or none
# at all): the caller asks again without the floor.
RUN_SINCE = f"""
WITH w AS (
  SELECT u.k, u.lo, x.ts, x.value <> u.v AS differs, x.before
  FROM unnest($1::int4[], $2::text[], $3::text[], $4::int8[], $5::float8[], $6::int8[])
    AS u(k, e, c, t, v, lo)
  CROSS JOIN LATERAL (
    (SELECT r.ts, r.value, true AS before FROM readings r
      WHERE r.enterprise = u.e AND r.code = u.c AND r.ts < {_ts('u.lo')}
        AND r.ts >= {_ts('$7')} AND r.ts < {_ts('$8')} ORDER BY r.ts DESC LIMIT 1)
    UNION ALL
    (SELECT r.ts, r.value, false FROM readings r
      WHERE r.enterprise = u.e AND r.code = u.c AND r.ts >= {_ts('u.lo')} AND r.ts < {_ts('u.t')}
        AND r.ts >= {_ts('$9')} AND r.ts < {_ts('$10')})
  ) AS x
), marked AS (
  SELECT k, lo, ts, before,
    ts > coalesce(max(ts) FILTER (WHERE differs) OVER (PARTITION BY k), '-infinity') AS same
  FROM w
)
SELECT k, CASE WHEN bool_or(same) THEN greatest(lo, {_us('min(ts) FILTER (WHERE same)')}) END
    AS since, bool_or(before) AS found
FROM marked GROUP BY k, lo
"""

# 15-minute periods in which the enterprise's items recorded consumption.
MOVERS = f"""
SELECT u.e AS enterprise, c.code, {_us('c.period_start')} AS start
FROM unnest($1::text[], $2::int8[], $3::int8[]) AS u(e, lo, hi)
CROSS JOIN LATERAL (
  SELECT c.code, c.period_start FROM consumption c
  WHERE c.enterprise = u.e AND c.stat_type = 0 AND c.code <> '{TOTAL_CODE}'
    AND c.period_start > {_ts('u.lo')} AND c.period_start < {_ts('u.hi')} AND c.value > 0
  OFFSET 0
) AS c
"""

_CHANGED = """(c.valid IS DISTINCT FROM EXCLUDED.valid
  OR abs(c.value - EXCLUDED.value) > 1e-12 * greatest(1.0, abs(c.value))
  OR abs(c.kgce - EXCLUDED.kgce) > 1e-12 * greatest(1.0, abs(c.kgce))
  OR abs(c.coverage - EXCLUDED.coverage) > 1e-12)"""

UPSERT = f"""
INSERT INTO consumption AS c (enterprise, code, stat_type, period_start, value, kgce, valid,
                              coverage, flags)
SELECT u.e, u.c, u.st, {_ts('u.ps')}, u.v, u.kg, u.ok, u.cov, u.fl
FROM unnest($1::text[], $2::text[], $3::int2[], $4::int8[], $5::float8[], $6::float8[],
            $7::bool[], $8::float8[], $9::int2[]) AS u(e, c, st, ps, v, kg, ok, cov, fl)
ON CONFLICT (enterprise, code, stat_type, period_start) DO UPDATE SET
  value = EXCLUDED.value, kgce = EXCLUDED.kgce, valid = EXCLUDED.valid,
  coverage = EXCLUDED.coverage, flags = EXCLUDED.flags,
  computed_at = CASE WHEN {_CHANGED} THEN now() ELSE c.computed_at END,
  revision = CASE WHEN {_CHANGED} THEN nextval('consumption_revision') ELSE c.revision END
WHERE {_CHANGED} OR c.flags IS DISTINCT FROM EXCLUDED.flags
RETURNING c.stat_type, c.computed_at = now() AS changed
"""

# Child sums of coarse periods: amount (instant items: value x known seconds), known
# microseconds (coverage x the child's length) and flags.  $7 is the children's
# stat_type, $8 the time zone's name (a child day or month is 23 to 25 hours or 28 to
# 31 days long in local time).  OFFSET 0 keeps it a per-period index scan: as a join,
# the statistics of a fresh chunk led the planner to scan every chunk of consumption
# once and filter the run's thousand periods against all of it (most of a real-time run).
# $9 and $10 bound every period of the call: the chunks outside are excluded once at the
# start, so that it can run without TimescaleDB's per-period runtime exclusion
# (EXCLUSION_OFF), which cost three times the index look-up it saved.
CHILDREN = f"""
SELECT u.k,
  coalesce(sum(CASE WHEN u.inst THEN c.value * round(c.coverage * d.us) / 1e6 ELSE c.value END), 0),
  coalesce(sum(round(c.coverage * d.us)), 0)::int8,
  coalesce(bit_or(c.flags), 0)::int4
FROM unnest($1::int4[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::bool[])
  AS u(k, e, c, lo, hi, inst)
CROSS JOIN LATERAL (
  SELECT c.value, c.coverage, c.flags, c.period_start FROM consumption c
  WHERE c.enterprise = u.e AND c.code = u.c AND c.stat_type = $7
    AND c.period_start >= {_ts('u.lo')} AND c.period_start < {_ts('u.hi')}
    AND c.period_start >= {_ts('$9')} AND c.period_start < {_ts('$10')}
  OFFSET 0
) AS c
CROSS JOIN LATERAL (SELECT CASE $7::int
  WHEN 0 THEN {QUARTER_US}::float8
  WHEN 1 THEN extract(epoch FROM ((c.period_start AT TIME ZONE $8) + interval '1 day')
                                  AT TIME ZONE $8 - c.period_start) * 1e6
  ELSE extract(epoch FROM ((c.period_start AT TIME ZONE $8) + interval '1 month')
                          AT TIME ZONE $8 - c.period_start) * 1e6
  END AS us) AS d
GROUP BY u.k
"""

# Around CHILDREN (see there); SET LOCAL: to the end of the run's transaction at most.
EXCLUSION_OFF = "SET LOCAL timescaledb.enable_runtime_exclusion = off"
EXCLUSION_ON = "SET LOCAL timescaledb.enable_runtime_exclusion = on"

GAPS = f"""
SELECT u.k, {_us('g.t0')}, {_us('g.t1')}, g.amount, g.flags
FROM {_UNNEST_RANGES}
CROSS JOIN LATERAL (
  SELECT g.t0, g.t1, g.amount, g.flags FROM gap_segments g
  WHERE g.enterprise = u.e AND g.code = u.c AND g.tier = $6
    AND g.t0 >= {_ts('u.lo')} AND g.t0 < {_ts('u.hi')}
  OFFSET 0
) AS g
"""

# The stored gap segments of loaded stretches, replaced by the current ones; the periods
# that held them are recomputed (a gap may be all a day, month or year holds).
DELETE_GAPS = f"""
DELETE FROM gap_segments g
USING unnest($1::text[], $2::text[], $3::int8[], $4::int8[]) AS u(e, c, f, l)
WHERE g.enterprise = u.e AND g.code = u.c AND g.t0 < {_ts('u.l')} AND g.t1 > {_ts('u.f')}
RETURNING g.enterprise, g.code, {_us('g.t0')}, g.tier
"""

INSERT_GAPS = f"""
INSERT INTO gap_segments (enterprise, code, t0, t1, tier, amount, flags)
SELECT u.e, u.c, {_ts('u.t0')}, {_ts('u.t1')}, u.tier, u.amount, u.flags
FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int2[], $6::float8[], $7::int2[])
  AS u(e, c, t0, t1, tier, amount, flags)
ON CONFLICT (enterprise, code, t0) DO UPDATE SET t1 = EXCLUDED.t1, tier = EXCLUDED.tier,
  amount = EXCLUDED.amount, flags = EXCLUDED.flags
"""

TOTAL_INPUTS = f"""
SELECT u.e, c.code, u.st, {_us('c.period_start')}, c.kgce, c.coverage, c.valid, c.flags
FROM unnest($1::text[], $2::int2[], $3::int8[]) AS u(e, st, ps)
CROSS JOIN LATERAL (
  SELECT c.code, c.period_start, c.kgce, c.coverage, c.valid, c.flags FROM consumption c
  WHERE c.enterprise = u.e AND c.stat_type = u.st AND c.period_start = {_ts('u.ps')}
    AND c.code = ANY($4::text[])
  OFFSET 0
) AS c
"""

UPDATE_QUALITY = f"""
UPDATE readings r SET quality = u.q
FROM unnest($1::text[], $2::text[], $3::int8[], $4::int2[]) AS u(e, c, t, q)
WHERE r.enterprise = u.e AND r.code = u.c AND r.ts = {_ts('u.t')}
"""

# The stretches ($3, $4: first and last reading's time) that hold a meter event at
# all: a range probe per stretch, where deleting reading by reading probed every
# loaded reading (most of them, in the usual run, hold none).
EVENTS_IN = f"""
SELECT u.k FROM unnest($1::int4[], $2::text[], $3::text[], $4::int8[], $5::int8[]) AS u(k, e, c, lo, hi)
WHERE EXISTS (SELECT 1 FROM meter_events m WHERE m.enterprise = u.e AND m.code = u.c
                AND m.ts >= {_ts('u.lo')} AND m.ts <= {_ts('u.hi')})
"""

DELETE_EVENTS = f"""
DELETE FROM meter_events m USING unnest($1::text[], $2::text[], $3::int8[]) AS u(e, c, t)
WHERE m.enterprise = u.e AND m.code = u.c AND m.ts = {_ts('u.t')}
"""

UPSERT_EVENTS = f"""
INSERT INTO meter_events AS m (enterprise, code, ts, kind, value_before, value_after, reason)
SELECT u.e, u.c, {_ts('u.t')}, u.kind, u.vb, u.va, u.why
FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::float8[], $6::float8[],
            $7::text[]) AS u(e, c, t, kind, vb, va, why)
ON CONFLICT (enterprise, code, ts) DO UPDATE SET kind = EXCLUDED.kind,
  value_before = EXCLUDED.value_before, value_after = EXCLUDED.value_after,
  reason = EXCLUDED.reason, detected_at = now()
WHERE (m.kind, m.value_before, m.value_after, m.reason)
  IS DISTINCT FROM (EXCLUDED.kind, EXCLUDED.value_before, EXCLUDED.value_after, EXCLUDED.reason)
RETURNING m.kind
"""

# Stored 15-minute rows that say something in parts of the windows where the run
# produced no row ($4, $5: [lo, hi) of each part): a recomputation that no longer
# produces them withdraws them.  (Where it produced a row, the upsert overwrites it.)
# OFFSET 0 keeps it a per-part index scan: as a join, the statistics of a fresh chunk
# led the planner to a nested loop over every stored row, 200 ms a run.
STORED_QUARTERS = f"""
SELECT u.k, {_us('c.period_start')} AS start
FROM {_UNNEST_RANGES}
CROSS JOIN LATERAL (
  SELECT c.period_start FROM consumption c
  WHERE c.enterprise = u.e AND c.code = u.c AND c.stat_type = 0
    AND c.period_start >= {_ts('u.lo')} AND c.period_start < {_ts('u.hi')}
    AND (c.coverage > 0 OR c.valid OR c.flags <> 0)
  OFFSET 0
) AS c
"""

_SAID = "(c.coverage <> 0 OR c.value <> 0 OR c.kgce <> 0 OR c.valid)"

# A period that measured nothing any more: its row stays, withdrawn (value, kgce and
# coverage 0, not valid, no flags), with a new revision when it had said something, so
# that whoever sent it learns that it is gone.  Rows already withdrawn are left alone.
WITHDRAW = f"""
UPDATE consumption c SET value = 0, kgce = 0, coverage = 0, valid = false, flags = 0,
  computed_at = CASE WHEN {_SAID} THEN now() ELSE c.computed_at END,
  revision = CASE WHEN {_SAID} THEN nextval('consumption_revision') ELSE c.revision END
FROM unnest($1::text[], $2::text[], $3::int2[], $4::int8[]) AS u(e, c, st, ps)
WHERE c.enterprise = u.e AND c.code = u.c AND c.stat_type = u.st
  AND c.period_start = {_ts('u.ps')} AND ({_SAID} OR c.flags <> 0)
RETURNING c.stat_type, c.computed_at = now() AS changed
"""

# Stored totals of periods ending after $2 and starting before $3 (per enterprise): an
# item's series now begins at $2 where it began at $3 before.  OFFSET 0: a per-enterprise
# index scan, whatever the statistics of a fresh chunk promise (see LOAD).
STORED_TOTALS = f"""
SELECT u.e, c.stat_type, {_us('c.period_start')}
FROM unnest($1::text[], $2::int8[], $3::int8[]) AS u(e, lo, hi)
CROSS JOIN LATERAL (
  SELECT c.stat_type, c.period_start FROM consumption c
  WHERE c.enterprise = u.e AND c.code = '{TOTAL_CODE}' AND c.period_start < {_ts('u.hi')}
    AND c.period_start > {_ts('u.lo')} - CASE c.stat_type WHEN 0 THEN interval '15 minutes'
      WHEN 1 THEN interval '25 hours' WHEN 2 THEN interval '31 days' ELSE interval '366 days' END
    AND c.coverage > 0
  OFFSET 0
) AS c
"""

# The first finite reading of each item: a counted item takes part in its enterprise's
# totals from there on.
FIRST_READINGS = f"""
SELECT u.k, (SELECT {_us('min(r.ts)')} FROM readings r
             WHERE r.enterprise = u.e AND r.code = u.c AND {_FINITE}
               AND r.quality & {OUT_OF_LINE} = 0) AS since
FROM unnest($1::int4[], $2::text[], $3::text[]) AS u(k, e, c)
"""

# Readings in [$3, $4) of each item that arrived when their item already had a reading
# more than $6 microseconds later (the next finite reading after it, received no later
# than it): a clock error or a stray old value.  The caller sends only the ranges where
# such a reading can be (older than $6 before the range's end or the next reading after
# it) and puts that bound in $4, so that the scan and the per-reading look at its next
# reading cover those readings alone, not every reading of the range.
FLAG_OUT_OF_LINE = f"""
UPDATE readings r SET quality = r.quality | $5::int2
FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[]) AS u(e, c, lo, below)
WHERE r.enterprise = u.e AND r.code = u.c AND r.ts >= {_ts('u.lo')} AND r.ts < {_ts('u.below')}
  AND r.quality & $5::int2 = 0
  AND (SELECT n.ts > r.ts + $6 * interval '1 microsecond' AND n.received_at <= r.received_at
       FROM readings n
       WHERE n.enterprise = r.enterprise AND n.code = r.code AND n.ts > r.ts
         AND n.value < 'Infinity'::float8 AND n.value > '-Infinity'::float8
       ORDER BY n.ts LIMIT 1)
RETURNING 1
"""

DELETE_CLAIMED = "DELETE FROM pending_recompute WHERE id = ANY($1::int8[])"

BACKLOG = "SELECT count(*) FROM pending_recompute"
