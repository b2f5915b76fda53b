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

__all__ = ["DAY_DELETE", "DAY_INSERT", "ITEMS_DELETE", "ITEMS_INSERT", "MONTH_DELETE", "MONTH_INSERT",
           "PIN_TOLERANCE_S", "SCORE_COLUMNS", "TOLERANCE"]

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

# $1 zone, $2 the local day (date), $3 the settled instant (now - settle).  Rows for every
# enterprise with a counted item or an instrument.
DAY_DELETE = "DELETE FROM quality_daily WHERE period = 'day' AND period_start = $1"
DAY_INSERT = f"""
WITH bounds AS (
    SELECT $2::date AS d,
           $2::date::timestamp AT TIME ZONE $1::text AS day_start,
           ($2::date + 1)::timestamp AT TIME ZONE $1::text AS day_end
), span AS (
    SELECT d, day_start, day_end,
           least(day_end, day_start + floor(greatest(extract(epoch FROM $3::timestamptz - day_start), 0) / 900)
                                      * interval '15 minutes') AS cutoff
    FROM bounds
), reg AS (
    SELECT i.enterprise, i.code, i.kind
    FROM items i CROSS JOIN span
    WHERE {_REGISTERED} < span.day_end
), quarters AS (  -- every 15-minute value of the day with coverage (settled or not)
    SELECT c.enterprise, c.code, c.period_start, c.value, c.period_start < span.cutoff AS settled
    FROM consumption c JOIN reg ON reg.enterprise = c.enterprise AND reg.code = c.code CROSS JOIN span
    WHERE c.stat_type = 0 AND c.coverage > 0 AND c.period_start >= span.day_start AND c.period_start < span.day_end
), pins AS (  -- period starts with a finite reading of the item within the tolerance
    SELECT DISTINCT r.enterprise, r.code,
           span.day_start + round(extract(epoch FROM r.ts - span.day_start) / 900) * interval '15 minutes'
               AS period_start
    FROM readings r JOIN reg ON reg.enterprise = r.enterprise AND reg.code = r.code CROSS JOIN span
    WHERE r.ts >= span.day_start - make_interval(secs => {PIN_TOLERANCE_S})
      AND r.ts <= span.cutoff + make_interval(secs => {PIN_TOLERANCE_S})
      AND abs(extract(epoch FROM r.ts - span.day_start)
              - round(extract(epoch FROM r.ts - span.day_start) / 900) * 900) <= {PIN_TOLERANCE_S}
      AND r.value NOT IN ('NaN'::float8, 'Infinity'::float8, '-Infinity'::float8)
), per_item AS (
    SELECT reg.enterprise, reg.code, reg.kind,
           count(*) FILTER (WHERE q.settled) AS received,
           count(p.period_start) FILTER (WHERE q.settled) AS pinned,
           count(q.period_start) AS quarters,
           coalesce(sum(q.value), 0) AS quarter_sum
    FROM reg
    LEFT JOIN quarters q ON q.enterprise = reg.enterprise AND q.code = reg.code
    LEFT JOIN pins p ON p.enterprise = q.enterprise AND p.code = q.code AND p.period_start = q.period_start
    GROUP BY reg.enterprise, reg.code, reg.kind
), compared AS (  -- the day value against the sum of the day's 15-minute values
    SELECT pi.*, dv.value AS day_value,
           CASE WHEN pi.kind = 'instant' OR (dv.value IS NULL AND pi.quarters = 0) THEN NULL
                ELSE abs(pi.quarter_sum - coalesce(dv.value, 0)) <= {TOLERANCE} * abs(coalesce(dv.value, 0)) + 1e-9
           END AS agrees
    FROM per_item pi CROSS JOIN span
    LEFT JOIN consumption dv ON dv.enterprise = pi.enterprise AND dv.code = pi.code AND dv.stat_type = 1
                            AND dv.period_start = span.day_start AND dv.coverage > 0
), by_enterprise AS (
    SELECT c.enterprise, count(*) AS items,
           count(*) * n.quarters AS expected,
           sum(c.received) AS received,
           count(*) FILTER (WHERE n.quarters > 0 AND c.received >= 0.9 * n.quarters) AS items_complete,
           count(c.agrees) AS agreement_items,
           count(*) FILTER (WHERE c.agrees) AS agreement_ok,
           sum(c.received) AS start_values,
           sum(c.pinned) AS start_pinned
    FROM compared c
    CROSS JOIN (SELECT (extract(epoch FROM cutoff - day_start) / 900)::bigint AS quarters FROM span) n
    GROUP BY c.enterprise, n.quarters
), instruments AS (
    SELECT m.enterprise, count(*) AS meters,
           count(*) FILTER (WHERE m.align_state IN ('verified', 'calibrated') AND EXISTS (
               SELECT 1 FROM meter_verifications v
               WHERE v.enterprise = m.enterprise AND v.ser_no = m.ser_no
                 AND v.valid_from <= span.d AND v.valid_until >= span.d)) AS meters_verified
    FROM meters m CROSS JOIN span
    WHERE m.retired_at IS NULL OR m.retired_at > span.day_start
    GROUP BY m.enterprise
)
INSERT INTO quality_daily ({SCORE_COLUMNS})
SELECT e.enterprise, 'day', $2::date,
       coalesce(b.items, 0), coalesce(b.expected, 0), coalesce(b.received, 0), coalesce(b.items_complete, 0),
       coalesce(b.agreement_items, 0), coalesce(b.agreement_ok, 0),
       coalesce(b.start_values, 0), coalesce(b.start_pinned, 0),
       coalesce(m.meters, 0), coalesce(m.meters_verified, 0)
FROM (SELECT enterprise FROM by_enterprise UNION SELECT enterprise FROM instruments) e
LEFT JOIN by_enterprise b ON b.enterprise = e.enterprise
LEFT JOIN instruments m ON m.enterprise = e.enterprise
"""

# $1 zone, $2 the month's 1st (date), $3 the settled instant.  One row per counted item.
ITEMS_DELETE = "DELETE FROM quality_items WHERE month = $1"
ITEMS_INSERT = f"""
WITH bounds AS (
    SELECT $2::date::timestamp AT TIME ZONE $1::text AS m_start,
           ($2::date + interval '1 month')::timestamp AT TIME ZONE $1::text AS m_end
), span AS (
    SELECT m_start, m_end,
           least(m_end, m_start + floor(greatest(extract(epoch FROM $3::timestamptz - m_start), 0) / 900)
                                  * interval '15 minutes') AS cutoff
    FROM bounds
), reg AS (
    SELECT i.enterprise, i.code, i.kind, greatest(span.m_start, {_REGISTERED}) AS from_ts
    FROM items i CROSS JOIN span
), counted AS (
    SELECT reg.*, span.m_start, span.m_end, span.cutoff
    FROM reg CROSS JOIN span WHERE reg.from_ts < span.m_end
), per_item AS (
    SELECT c.enterprise, c.code, c.kind,
           greatest(floor(extract(epoch FROM c.cutoff - c.from_ts) / 900), 0)::bigint AS expected,
           (SELECT count(*) FROM consumption q
             WHERE q.enterprise = c.enterprise AND q.code = c.code AND q.stat_type = 0 AND q.coverage > 0
               AND q.period_start >= c.from_ts AND q.period_start < c.cutoff) AS received,
           (SELECT sum(d.value) FROM consumption d
             WHERE d.enterprise = c.enterprise AND d.code = c.code AND d.stat_type = 1 AND d.coverage > 0
               AND d.period_start >= c.m_start AND d.period_start < c.m_end) AS day_sum,
           (SELECT m.value FROM consumption m
             WHERE m.enterprise = c.enterprise AND m.code = c.code AND m.stat_type = 2 AND m.coverage > 0
               AND m.period_start = c.m_start) AS month_value
    FROM counted c
)
INSERT INTO quality_items (enterprise, code, month, expected, received, day_sum, month_value, agrees)
SELECT enterprise, code, $2::date, expected, received, day_sum, month_value,
       CASE WHEN kind = 'instant' OR (day_sum IS NULL AND month_value IS NULL) THEN NULL
            ELSE abs(coalesce(day_sum, 0) - coalesce(month_value, 0)) <= {TOLERANCE} * abs(coalesce(month_value, 0)) + 1e-9
       END
FROM per_item
"""

# $1 the month's 1st: the enterprise rows, from the month's item rows (completeness,
# agreement) and its day rows (period starts, instrument-days).
MONTH_DELETE = "DELETE FROM quality_daily WHERE period = 'month' AND period_start = $1"
MONTH_INSERT = f"""
WITH days AS (
    SELECT enterprise, sum(start_values) AS start_values, sum(start_pinned) AS start_pinned,
           sum(meters) AS meters, sum(meters_verified) AS meters_verified
    FROM quality_daily
    WHERE period = 'day' AND period_start >= $1::date AND period_start < ($1::date + interval '1 month')
    GROUP BY enterprise
), items AS (
    SELECT enterprise, count(*) AS items, sum(expected) AS expected, sum(received) AS received,
           count(*) FILTER (WHERE expected > 0 AND received >= 0.9 * expected) AS items_complete,
           count(agrees) AS agreement_items, count(*) FILTER (WHERE agrees) AS agreement_ok
    FROM quality_items WHERE month = $1::date
    GROUP BY enterprise
)
INSERT INTO quality_daily ({SCORE_COLUMNS})
SELECT e.enterprise, 'month', $1::date,
       coalesce(i.items, 0), coalesce(i.expected, 0), coalesce(i.received, 0), coalesce(i.items_complete, 0),
       coalesce(i.agreement_items, 0), coalesce(i.agreement_ok, 0),
       coalesce(d.start_values, 0), coalesce(d.start_pinned, 0),
       coalesce(d.meters, 0), coalesce(d.meters_verified, 0)
FROM (SELECT enterprise FROM items UNION SELECT enterprise FROM days) e
LEFT JOIN items i ON i.enterprise = e.enterprise
LEFT JOIN days d ON d.enterprise = e.enterprise
"""
