"""Today's data completeness, the platforms' first quality score (received ÷ expected
values; the platforms want at least 90 %), computed from the database and exported as a
few bounded Prometheus gauges.  :class:`CompletenessUpdater` is a stage for
:class:`runtime.runner.StageRunner`: each step computes it once.

Exactly what is counted, for the local day that contains ``now`` (``processing.timezone``):

- **quarters**: the 15-minute real-time periods of today that have *settled*, i.e. that
  start at local midnight or later and end at least ``settle_s`` before ``now`` (the
  aggregator needs the first reading after a period's end to close it).  Between
  midnight and midnight + 15 min + ``settle_s`` no period has settled yet;
- **expected values** of an enterprise: its items in the registry (``items``, every
  kind) × quarters.  An item added during the day is expected from midnight on;
- **received values**: rows of ``consumption`` with ``stat_type = 0``, a code that is
  in the registry (so never the total ``0000``), ``coverage > 0`` (at least part of the
  period is measured), starting in one of those quarters;
- an enterprise's **ratio** is received ÷ expected; the **overall ratio** is the sum of
  received over the sum of expected (every value weighs the same, as the platforms
  count them).  Nothing expected yet gives no ratio (NaN for the overall gauge, and the
  enterprise is left out of the bands).

The Grafana table "Completeness today, by enterprise" (config/grafana/dashboards/
energy.json) runs this query with ``now()``, the ``$tz`` constant and a 900 s settle
written in; tests/test_observability.py shows both give the same figures.

Metrics (all bounded: no enterprise or item ever becomes a label):

- ``nhjc_completeness_ratio``: the overall ratio;
- ``nhjc_completeness_values{kind="expected"|"received"}``: the two sums;
- ``nhjc_enterprises_by_completeness{band="<50%"|"50-90%"|">=90%"}``: enterprises per band;
- ``nhjc_completeness_updated_timestamp_seconds``: when the last update succeeded;
- ``nhjc_completeness_errors_total``: updates that failed (the database was away).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge

from config.settings import ProcessingSettings

__all__ = [
    "BANDS", "QUARTER_S", "TODAY_SQL", "Completeness", "CompletenessMetrics",
    "CompletenessUpdater", "EnterpriseCompleteness", "band", "completeness_today",
]

log = logging.getLogger("nhjc.completeness")

QUARTER_S = 900
BANDS = ("<50%", "50-90%", ">=90%")

# $1 time zone, $2 now, $3 settle seconds.  One row per enterprise of the registry.
TODAY_SQL = """
WITH day AS (
    SELECT d AS day_start,
           d + floor(greatest(extract(epoch FROM ($2::timestamptz - make_interval(secs => $3::float8)) - d), 0)
                     / 900) * interval '15 minutes' AS cutoff
    FROM (SELECT date_trunc('day', $2::timestamptz AT TIME ZONE $1::text) AT TIME ZONE $1::text AS d) AS t
), registry AS (
    SELECT enterprise, count(*) AS items FROM items GROUP BY enterprise
), received AS (
    SELECT c.enterprise, count(*) AS n
    FROM consumption c
    JOIN items i ON i.enterprise = c.enterprise AND i.code = c.code
    CROSS JOIN day
    WHERE c.stat_type = 0 AND c.coverage > 0
      AND c.period_start >= day.day_start AND c.period_start < day.cutoff
    GROUP BY c.enterprise
)
SELECT r.enterprise,
       r.items,
       (extract(epoch FROM day.cutoff - day.day_start) / 900)::bigint AS quarters,
       r.items * (extract(epoch FROM day.cutoff - day.day_start) / 900)::bigint AS expected,
       coalesce(v.n, 0) AS received
FROM registry r CROSS JOIN day LEFT JOIN received v ON v.enterprise = r.enterprise
ORDER BY r.enterprise
"""


def band(ratio: float) -> str:
    """The band of an enterprise's ratio: ``<50%``, ``50-90%`` or ``>=90%``."""
    if ratio < 0.5:
        return BANDS[0]
    if ratio < 0.9:
        return BANDS[1]
    return BANDS[2]


@dataclass(frozen=True, slots=True)
class EnterpriseCompleteness:
    enterprise: str
    items: int
    expected: int
    received: int

    @property
    def ratio(self) -> float | None:
        return self.received / self.expected if self.expected else None


@dataclass(frozen=True, slots=True)
class Completeness:
    """Today's completeness at ``now``: ``quarters`` settled periods since midnight."""

    now: datetime
    quarters: int
    enterprises: tuple[EnterpriseCompleteness, ...]

    @property
    def expected(self) -> int:
        return sum(e.expected for e in self.enterprises)

    @property
    def received(self) -> int:
        return sum(e.received for e in self.enterprises)

    @property
    def ratio(self) -> float | None:
        return self.received / self.expected if self.expected else None

    def bands(self) -> dict[str, int]:
        counts = dict.fromkeys(BANDS, 0)
        for e in self.enterprises:
            if e.ratio is not None:
                counts[band(e.ratio)] += 1
        return counts


async def completeness_today(db: asyncpg.Pool | asyncpg.Connection, *, zone: ZoneInfo,
                             settle_s: float, now: datetime | None = None) -> Completeness:
    """Today's completeness in ``zone`` (see the module's docstring for exactly what
    counts)."""
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    rows = await db.fetch(TODAY_SQL, zone.key, now, float(settle_s))
    quarters = int(rows[0]["quarters"]) if rows else 0
    return Completeness(now=now, quarters=quarters, enterprises=tuple(
        EnterpriseCompleteness(r["enterprise"], int(r["items"]), int(r["expected"]), int(r["received"]))
        for r in rows))


class CompletenessMetrics:
    """The completeness updater's named events, each logged and counted together:
    computed and failed."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._ratio = Gauge(
            "nhjc_completeness_ratio",
            "Today's received / expected real-time values over all enterprises (NaN until a period settles)",
            registry=registry)
        self._values = Gauge(
            "nhjc_completeness_values", "Today's expected and received real-time values",
            ["kind"], registry=registry)
        self._enterprises = Gauge(
            "nhjc_enterprises_by_completeness", "Enterprises by today's completeness band",
            ["band"], registry=registry)
        self._updated = Gauge(
            "nhjc_completeness_updated_timestamp_seconds", "Unix time of the last successful update",
            registry=registry)
        self._errors = Counter(
            "nhjc_completeness_errors_total", "Completeness updates that failed", registry=registry)
        # Every series exists from the start, so a panel or an alert never sees "no data".
        self.reset()

    def reset(self) -> None:
        """Nothing computed here (at start, and once another instance owns the job):
        the ratio NaN and the sums and bands 0, which the alerts' max() passes over."""
        self._ratio.set(math.nan)
        for kind in ("expected", "received"):
            self._values.labels(kind).set(0)
        for b in BANDS:
            self._enterprises.labels(b).set(0)

    def computed(self, c: Completeness) -> None:
        ratio = c.ratio
        self._ratio.set(math.nan if ratio is None else ratio)
        self._values.labels("expected").set(c.expected)
        self._values.labels("received").set(c.received)
        for b, n in c.bands().items():
            self._enterprises.labels(b).set(n)
        self._updated.set(time.time())
        log.debug("completeness: %d of %d values over %d quarters (%s)", c.received, c.expected,
                  c.quarters, "n/a" if ratio is None else f"{ratio:.1%}")

    def failed(self, exc: BaseException) -> None:
        """An update failed.  Counted here; the stage runner says it in the log (once
        per outage or streak), so this line is only for debugging."""
        self._errors.inc()
        log.debug("completeness not updated: %s: %s", type(exc).__name__, exc)


class CompletenessUpdater:
    """Computes today's completeness and sets the gauges, once per step (the runner
    steps it every ``processing.completeness_interval_s``).  ``last`` is the latest
    result."""

    name = "completeness"

    def __init__(self, settings: ProcessingSettings, *, pool: asyncpg.Pool | asyncpg.Connection,
                 registry: CollectorRegistry) -> None:
        self._pool = pool
        self._zone = settings.zone
        self._settle_s = settings.completeness_settle_s
        self.metrics = CompletenessMetrics(registry)
        self.last: Completeness | None = None

    async def update(self, now: datetime | None = None) -> Completeness:
        c = await completeness_today(self._pool, zone=self._zone, settle_s=self._settle_s, now=now)
        self.metrics.computed(c)
        self.last = c
        return c

    def disowned(self) -> None:
        """Another instance computes completeness now (runtime.ownership)."""
        self.metrics.reset()

    async def step(self) -> bool:
        """One update; never more work waiting (the runner sleeps the interval)."""
        try:
            await self.update()
        except Exception as exc:
            self.metrics.failed(exc)  # the documented error count stays the stage's own
            raise
        return False
