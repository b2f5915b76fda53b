"""The platforms' scorecard, computed ahead of them: per enterprise and local day and
month, the four figures the provincial platforms judge an enterprise's data by, kept in
``quality_daily`` (and per item in ``quality_items``) and exported as a few
bounded gauges.  :class:`ScorecardJob` is a stage for :class:`runtime.runner.StageRunner`.

The four measures (docs/metrology.md says why each is measured this way):

- **completeness**: received ÷ expected 15-minute values.  Expected: every registered
  item × the settled 15-minute periods of the day (a past day: all of them; today: those
  ended ``processing.completeness_settle_s`` ago), from the local day the item was first
  registered.  Received: ``consumption`` rows with ``stat_type = 0`` and ``coverage > 0``
  (a row with coverage 0 carries no measured value: a withdrawn period, or the mark of a
  reset), valid or not (the platforms receive, and count, values marked not valid too).
  An item is *complete* at 90 % or more, the platforms' line;
- **agreement**: per consumption item (cumulative or interval; instant items are
  averages, not sums), the sum of its day values against its month value for a month,
  and the sum of its 15-minute values against its day value for a day; it agrees within
  5 % of the coarser value.  A missing coarser value against finer ones disagrees;
- **period-start accuracy**: of the received 15-minute values, the share whose start
  has a finite reading of the item within 60 s.  A value whose start lies between two
  readings farther apart is split by time from a segment around it: its start is
  interpolated, not measured.  A month adds up its days;
- **verification**: of the enterprise's instruments in service on the day (not retired
  before it), the share in verification (``align_state`` verified or calibrated and a
  ``meter_verifications`` period containing the day).  A month counts instrument-days.

Each step recomputes the last ``processing.scorecard_days`` local days (late readings
change them) and any day of the current or previous month that has no row yet (the
first steps after a start fill them, at most :data:`DAYS_PER_STEP` a step), then the
months of those days.  Each day and month is rewritten whole, in one transaction.  A
day reads its own 15-minute values and readings; a month adds up its days' item rows and
reads only its month values, so a round costs the same on the 1st and the 31st.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge

from config.settings import ProcessingSettings
from processing import scorecard_sql as sql
from processing.completeness import BANDS, band

__all__ = ["DAYS_PER_STEP", "MEASURES", "PERIODS", "Score", "ScorecardJob", "ScorecardMetrics",
           "month_of", "refresh", "refresh_month", "scores"]

log = logging.getLogger("nhjc.scorecard")

DAYS_PER_STEP = 8  # days filled in by one step; more waiting makes the runner step again
MEASURES = ("completeness", "agreement", "start", "verification")
PERIODS = ("day", "month")


@dataclass(frozen=True, slots=True)
class Score:
    """One row of ``quality_daily``."""

    enterprise: str
    period: str
    period_start: date
    items: int
    expected: int
    received: int
    items_complete: int
    agreement_items: int
    agreement_ok: int
    start_values: int
    start_pinned: int
    meters: int
    meters_verified: int

    @staticmethod
    def _share(n: int, of: int) -> float | None:
        return n / of if of else None

    @property
    def completeness(self) -> float | None:
        return self._share(self.received, self.expected)

    @property
    def agreement(self) -> float | None:
        return self._share(self.agreement_ok, self.agreement_items)

    @property
    def start_accuracy(self) -> float | None:
        return self._share(self.start_pinned, self.start_values)

    @property
    def verification(self) -> float | None:
        return self._share(self.meters_verified, self.meters)

    def ratio(self, measure: str) -> float | None:
        return {"completeness": self.completeness, "agreement": self.agreement,
                "start": self.start_accuracy, "verification": self.verification}[measure]

    def fractions(self, measure: str) -> tuple[int, int]:
        """(numerator, denominator) of ``measure``."""
        return {"completeness": (self.received, self.expected),
                "agreement": (self.agreement_ok, self.agreement_items),
                "start": (self.start_pinned, self.start_values),
                "verification": (self.meters_verified, self.meters)}[measure]


def month_of(d: date) -> date:
    return d.replace(day=1)


def _previous_month(m: date) -> date:
    return month_of(m - timedelta(days=1))


@contextlib.asynccontextmanager
async def _connection(db: asyncpg.Pool | asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            yield conn
    else:
        yield db


async def refresh(db: asyncpg.Pool | asyncpg.Connection, days: Iterable[date], *, zone: ZoneInfo,
                  settle_s: float, now: datetime) -> set[date]:
    """Rewrite the day rows of ``days`` and the month rows (and item rows) of their months,
    in one transaction; return the months rewritten."""
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    settled = now - timedelta(seconds=settle_s)
    days = sorted(set(days))
    months = {month_of(d) for d in days}
    async with _connection(db) as conn, conn.transaction():
        # A day's values and readings are joined in memory: room for them without spilling.
        await conn.execute("SET LOCAL work_mem = '64MB'")
        for d in days:
            await conn.execute(sql.ITEMS_DELETE, "day", d)
            b = await conn.fetchrow(sql.DAY_BOUNDS, zone.key, d, settled)
            await conn.execute(sql.DAY_ITEMS_INSERT, zone.key, d, b["day_start"], b["day_end"], b["cutoff"])
            await conn.execute(sql.DAY_DELETE, d)
            await conn.execute(sql.DAY_INSERT, zone.key, d)
        for m in sorted(months):  # from their days' rows: the month's values are not read again
            await conn.execute(sql.ITEMS_DELETE, "month", m)
            await conn.execute(sql.MONTH_ITEMS_INSERT, zone.key, m)
            await conn.execute(sql.MONTH_DELETE, m)
            await conn.execute(sql.MONTH_INSERT, m)
    return months


async def refresh_month(db: asyncpg.Pool | asyncpg.Connection, month: date, *, zone: ZoneInfo,
                        settle_s: float, now: datetime) -> None:
    """Rewrite every day of ``month`` up to today (local) and the month itself."""
    today = now.astimezone(zone).date()
    first = month_of(month)
    days = [first + timedelta(days=k) for k in range(31)]
    days = [d for d in days if month_of(d) == first and d <= today]
    if days:
        await refresh(db, days, zone=zone, settle_s=settle_s, now=now)


async def scores(db: asyncpg.Pool | asyncpg.Connection, period: str, start: date,
                 enterprise: str | None = None) -> list[Score]:
    """The stored rows of one day or month, by enterprise."""
    rows = await db.fetch(
        f"SELECT {sql.SCORE_COLUMNS} FROM quality_daily WHERE period = $1 AND period_start = $2"
        " AND ($3::text IS NULL OR enterprise = $3) ORDER BY enterprise", period, start, enterprise)
    return [Score(**dict(r)) for r in rows]


class ScorecardMetrics:
    """The scorecard job's named events, each logged and counted together: computed and
    failed.  Labels: ``period`` (day, month), ``measure`` (four) and ``band`` (three)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._ratio = Gauge(
            "nhjc_scorecard_ratio",
            "The platforms' scorecard over all enterprises, by period (day: the last whole local day; "
            "month: the current month so far) and measure (NaN when nothing is counted)",
            ["period", "measure"], registry=registry)
        self._enterprises = Gauge(
            "nhjc_enterprises_by_scorecard", "Enterprises by their own score, by period, measure and band",
            ["period", "measure", "band"], registry=registry)
        self._updated = Gauge(
            "nhjc_scorecard_updated_timestamp_seconds", "Unix time of the last successful scorecard update",
            registry=registry)
        self._errors = Counter(
            "nhjc_scorecard_errors_total", "Scorecard updates that failed", registry=registry)
        # Every series exists from the start, so a panel or an alert never sees "no data".
        self.cleared()

    def cleared(self) -> None:
        """No figures (at the start, and in an instance that no longer runs the job: the
        owner shows them now)."""
        for p in PERIODS:
            for m in MEASURES:
                self._ratio.labels(p, m).set(math.nan)
                for b in BANDS:
                    self._enterprises.labels(p, m, b).set(0)

    def computed(self, by_period: dict[str, list[Score]], days: int) -> None:
        for p in PERIODS:
            rows = by_period.get(p, [])
            for m in MEASURES:
                num = sum(s.fractions(m)[0] for s in rows)
                den = sum(s.fractions(m)[1] for s in rows)
                self._ratio.labels(p, m).set(num / den if den else math.nan)
                counts = dict.fromkeys(BANDS, 0)
                for s in rows:
                    r = s.ratio(m)
                    if r is not None:
                        counts[band(r)] += 1
                for b, n in counts.items():
                    self._enterprises.labels(p, m, b).set(n)
        self._updated.set(time.time())
        log.debug("scorecard: %d day(s) recomputed", days)

    def failed(self, exc: BaseException) -> None:
        """An update failed.  Counted here; the stage runner says it in the log."""
        self._errors.inc()
        log.debug("scorecard not updated: %s: %s", type(exc).__name__, exc)


class ScorecardJob:
    """Recomputes the scorecard's recent days and months and sets the gauges, once per
    step (the runner steps it every ``processing.scorecard_interval_s``, at once while
    missing days of the current and previous month are being filled in)."""

    name = "scorecard"

    def __init__(self, settings: ProcessingSettings, *, pool: asyncpg.Pool | asyncpg.Connection,
                 registry: CollectorRegistry) -> None:
        self._pool = pool
        self._zone = settings.zone
        self._settle_s = settings.completeness_settle_s
        self._recent = settings.scorecard_days
        self.metrics = ScorecardMetrics(registry)
        self._done: set[date] = set()  # days this job has computed (those without rows too)

    async def _missing(self, today: date) -> list[date]:
        first = _previous_month(month_of(today))
        stored = {r["period_start"] for r in await self._pool.fetch(
            "SELECT DISTINCT period_start FROM quality_daily WHERE period = 'day' AND period_start >= $1", first)}
        days = [first + timedelta(days=k) for k in range((today - first).days + 1)]
        return [d for d in days if d not in stored and d not in self._done]

    async def update(self, now: datetime | None = None) -> bool:
        """One round; True when days of the current or previous month still wait."""
        now = now or datetime.now(UTC)
        today = now.astimezone(self._zone).date()
        recent = [today - timedelta(days=k) for k in range(self._recent)]
        missing = [d for d in await self._missing(today) if d not in recent]
        todo = recent + missing[-DAYS_PER_STEP:]  # the newest first: they matter most
        await refresh(self._pool, todo, zone=self._zone, settle_s=self._settle_s, now=now)
        first = _previous_month(month_of(today))
        self._done = {d for d in self._done | set(todo) if d >= first}
        yesterday = today - timedelta(days=1)
        self.metrics.computed({"day": await scores(self._pool, "day", yesterday),
                               "month": await scores(self._pool, "month", month_of(today))}, len(todo))
        return len(missing) > DAYS_PER_STEP

    def disowned(self) -> None:
        """Another instance runs the job now (runtime.ownership): show no stale figures."""
        self.metrics.cleared()

    async def step(self) -> bool:
        try:
            return await self.update()
        except Exception as exc:
            self.metrics.failed(exc)  # the documented error count stays the stage's own
            raise
