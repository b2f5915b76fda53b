"""The scorecard's SQL statements (the rules they implement are in
:mod:`processing.scorecard` and docs/metrology.md).

Periods are local: ``$1`` is always the time zone, a day ``d`` runs from ``d 00:00`` to
the next local midnight, a month from its 1st to the next 1st.  The 15-minute periods
that count are those that have *settled*: they end at or before the *settled cutoff*
(``now`` minus ``processing.completeness_settle_s``, floored to a period boundary), as
for today's completeness (:mod:`processing.completeness`).

An item counts from the local day it was first registered (its oldest ``items_history``
row, else its ``updated_at``): the whole of that day, as completeness expects an item
added during the day from midnight on.
"""

from __future__ import annotations

__all__ = ["DAY_BOUNDS", "DAY_DELETE", "DAY_INSERT", "DAY_ITEMS_INSERT", "IN_VERIFICATION", "ITEMS_DELETE",
           "MONTH_DELETE", "MONTH_INSERT", "MONTH_ITEMS_INSERT", "PIN_TOLERANCE_S", "SCORE_COLUMNS", "TOLERANCE"]

# A period's start is pinned when the item has a reading this close to it (seconds).
PIN_TOLERANCE_S = 60.0
# Day values agree with their month (15-minute values with their day) within this share.
TOLERANCE = 0.05

SCORE_COLUMNS = ("enterprise, period, period_start, items, expected, received, items_complete, "
                 "agreement_items, agreement_ok, start_values, start_pinned, meters, meters_verified")

# The first local day an item counts: the day of its first registration.
_REGISTERED = """
    date_trunc('day', coalesce(
        (SELECT min(h.changed_at) FROM items_history h WHERE h.enterprise = i.enterprise AND h.code = i.code),
        i.updated_at) AT TIME ZONE $1::text) AT TIME ZONE $1::text"""

# $1 period ('day' | 'month'), $2 its start: the rows a rewrite replaces.
ITEMS_DELETE = "DELETE FROM quality_items WHERE period = $1 AND period_start = $2"
DAY_DELETE = "DELETE FROM quality_daily WHERE period = 'day' AND period_start = $1"
MONTH_DELETE = "DELETE FROM quality_daily WHERE period = 'month' AND period_start = $1"

_ENTERPRISE_ITEMS = """
    SELECT enterprise, count(*) AS items, sum(expected) AS expected, sum(received) AS received,
           count(*) FILTER (WHERE expected > 0 AND received >= 0.9 * expected) AS items_complete,
           count(agrees) AS agreement_items, count(*) FILTER (WHERE agrees) AS agreement_ok,
           sum(pinned) AS pinned
    FROM quality_items WHERE period = {period} AND period_start = {start}
    GROUP BY enterprise"""

_AGREES = """CASE WHEN {kind} = 'instant' OR ({parts} IS NULL AND {whole} IS NULL) THEN NULL
                ELSE abs(coalesce({parts}, 0) - coalesce({whole}, 0)) <= {tol} * abs(coalesce({whole}, 0)) + 1e-9
           END"""

# $1 zone, $2 the local day (date), $3 the settled instant (now - settle): the day's
# start and end, and the end of its settled 15-minute periods.  Computed first and passed
# to the day's statement as values, so that it reads only the chunks of that day.
DAY_BOUNDS = """
WITH b AS (
    SELECT $2::date::timestamp AT TIME ZONE $1::text AS day_start,
           ($2::date + 1)::timestamp AT TIME ZONE $1::text AS day_end
)
SELECT day_start, day_end,
       least(day_end, day_start + floor(greatest(date_part('epoch', $3::timestamptz - day_start), 0) / 900)
                                  * interval '15 minutes') AS cutoff
FROM b
"""

# $1 zone, $2 the local day (date), $3 its start, $4 its end, $5 the end of its settled
# periods (DAY_BOUNDS).  One row per item counted that day.
DAY_ITEMS_INSERT = f"""
WITH reg AS MATERIALIZED (
    SELECT i.enterprise, i.code, i.kind
    FROM items i
    WHERE {_REGISTERED} < $4::timestamptz
), quarters AS MATERIALIZED (  -- every 15-minute value of the day with coverage (settled or not)
    SELECT c.enterprise, c.code, c.period_start, c.value, c.period_start < $5::timestamptz AS settled
    FROM consumption c JOIN reg ON reg.enterprise = c.enterprise AND reg.code = c.code
    WHERE c.stat_type = 0 AND c.coverage > 0 AND c.period_start >= $3::timestamptz AND c.period_start < $4::timestamptz
), pins AS MATERIALIZED (  -- period starts with a finite reading of the item within the tolerance
    SELECT r.enterprise, r.code,
           $3::timestamptz + round(date_part('epoch', r.ts - $3::timestamptz) / 900) * interval '15 minutes'
               AS period_start
    FROM readings r JOIN reg ON reg.enterprise = r.enterprise AND reg.code = r.code
    WHERE r.ts >= $3::timestamptz - interval '{PIN_TOLERANCE_S:g} seconds'
      AND r.ts <= $5::timestamptz + interval '{PIN_TOLERANCE_S:g} seconds'
      AND abs(date_part('epoch', r.ts - $3::timestamptz)
              - round(date_part('epoch', r.ts - $3::timestamptz) / 900) * 900) <= {PIN_TOLERANCE_S}
      AND r.value NOT IN ('NaN'::float8, 'Infinity'::float8, '-Infinity'::float8)
    GROUP BY 1, 2, 3
), per_item AS (
    SELECT reg.enterprise, reg.code, reg.kind,
           count(*) FILTER (WHERE q.settled) AS received,
           count(p.period_start) FILTER (WHERE q.settled) AS pinned,
           sum(q.value) AS parts_sum
    FROM reg
    LEFT JOIN quarters q ON q.enterprise = reg.enterprise AND q.code = reg.code
    LEFT JOIN pins p ON p.enterprise = q.enterprise AND p.code = q.code AND p.period_start = q.period_start
    GROUP BY reg.enterprise, reg.code, reg.kind
)
INSERT INTO quality_items (enterprise, code, period, period_start, expected, received, pinned, parts_sum,
                           whole_value, agrees)
SELECT pi.enterprise, pi.code, 'day', $2::date,
       (date_part('epoch', $5::timestamptz - $3::timestamptz) / 900)::bigint,
       pi.received, pi.pinned, pi.parts_sum, dv.value,
       {_AGREES.format(kind="pi.kind", parts="pi.parts_sum", whole="dv.value", tol=TOLERANCE)}
FROM per_item pi
LEFT JOIN consumption dv ON dv.enterprise = pi.enterprise AND dv.code = pi.code AND dv.stat_type = 1
                        AND dv.period_start = $3::timestamptz AND dv.coverage > 0
"""

# An instrument ``m`` (a row of meters) is in verification on the local date {day}: verified
# or calibrated, with a recorded verification period holding that date.
IN_VERIFICATION = """m.align_state IN ('verified', 'calibrated') AND EXISTS (
    SELECT 1 FROM meter_verifications v WHERE v.enterprise = m.enterprise AND v.ser_no = m.ser_no
      AND v.valid_from <= {day} AND v.valid_until >= {day})"""

# The enterprise rows of one day: its item rows and its instruments.  $1 zone, $2 the
# local day.  An instrument counts on a day unless retired before it began, or recorded
# as the replacement of another one after it ended.
DAY_INSERT = f"""
WITH items AS ({_ENTERPRISE_ITEMS.format(period="'day'", start="$2::date")}
), instruments AS (
    SELECT m.enterprise, count(*) AS meters,
           count(*) FILTER (WHERE {IN_VERIFICATION.format(day="$2::date")}) AS meters_verified
    FROM meters m
    WHERE (m.retired_at IS NULL OR m.retired_at > ($2::date::timestamp AT TIME ZONE $1::text))
      -- a replacing instrument is in service from its replacement on
      AND NOT EXISTS (SELECT 1 FROM meter_replacements r
                      WHERE r.enterprise = m.enterprise AND r.new_ser_no = m.ser_no
                        AND r.replaced_at >= (($2::date + 1)::timestamp AT TIME ZONE $1::text))
    GROUP BY m.enterprise
)
INSERT INTO quality_daily ({SCORE_COLUMNS})
SELECT e.enterprise, 'day', $2::date,
       coalesce(i.items, 0), coalesce(i.expected, 0), coalesce(i.received, 0), coalesce(i.items_complete, 0),
       coalesce(i.agreement_items, 0), coalesce(i.agreement_ok, 0),
       coalesce(i.received, 0), coalesce(i.pinned, 0),
       coalesce(m.meters, 0), coalesce(m.meters_verified, 0)
FROM (SELECT enterprise FROM items UNION SELECT enterprise FROM instruments) e
LEFT JOIN items i ON i.enterprise = e.enterprise
LEFT JOIN instruments m ON m.enterprise = e.enterprise
"""

# $1 zone, $2 the month's 1st.  The month's item rows are sums of its day rows, with
# the sum of the day values against the month value.
MONTH_ITEMS_INSERT = f"""
WITH days AS (
    SELECT enterprise, code, sum(expected) AS expected, sum(received) AS received, sum(pinned) AS pinned,
           sum(whole_value) AS parts_sum
    FROM quality_items
    WHERE period = 'day' AND period_start >= $2::date AND period_start < ($2::date + interval '1 month')
    GROUP BY enterprise, code
)
INSERT INTO quality_items (enterprise, code, period, period_start, expected, received, pinned, parts_sum,
                           whole_value, agrees)
SELECT d.enterprise, d.code, 'month', $2::date, d.expected, d.received, d.pinned, d.parts_sum, mv.value,
       {_AGREES.format(kind="i.kind", parts="d.parts_sum", whole="mv.value", tol=TOLERANCE)}
FROM days d
LEFT JOIN items i ON i.enterprise = d.enterprise AND i.code = d.code
LEFT JOIN consumption mv ON mv.enterprise = d.enterprise AND mv.code = d.code AND mv.stat_type = 2
                        AND mv.coverage > 0 AND mv.period_start = ($2::date::timestamp AT TIME ZONE $1::text)
"""

# $1 the month's 1st: the enterprise rows, from the month's item rows and its day rows
# (instrument-days).
MONTH_INSERT = f"""
WITH items AS ({_ENTERPRISE_ITEMS.format(period="'month'", start="$1::date")}
), days AS (
    SELECT enterprise, sum(meters) AS meters, sum(meters_verified) AS meters_verified
    FROM quality_daily
    WHERE period = 'day' AND period_start >= $1::date AND period_start < ($1::date + interval '1 month')
    GROUP BY enterprise
)
INSERT INTO quality_daily ({SCORE_COLUMNS})
SELECT e.enterprise, 'month', $1::date,
       coalesce(i.items, 0), coalesce(i.expected, 0), coalesce(i.received, 0), coalesce(i.items_complete, 0),
       coalesce(i.agreement_items, 0), coalesce(i.agreement_ok, 0),
       coalesce(i.received, 0), coalesce(i.pinned, 0),
       coalesce(d.meters, 0), coalesce(d.meters_verified, 0)
FROM (SELECT enterprise FROM items UNION SELECT enterprise FROM days) e
LEFT JOIN items i ON i.enterprise = e.enterprise
LEFT JOIN days d ON d.enterprise = e.enterprise
"""
