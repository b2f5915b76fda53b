"""When a period may be sent, and when a failed attempt is tried again.

Periods follow local time: a real-time period is 15 minutes, a day starts
at 00:00, a month on the 1st, a year on 1 January.  A target sends

- real-time periods (statType 0) ``realtime_delay`` after the period closes;
- days at the platform's upload time (``uploadTime`` from registration, else the
  target's ``upload_time``) on the following day;
- months at the upload time on day 2 of the following month;
- years at the upload time on 2 January of the following year.

A period is put in the outbox when it closes (real-time: when it is due), with its
due time; the sender takes it when the due time has passed.  :data:`DUE_SQL` is the
same rule in SQL, used when rows are enqueued server-side; a test checks both agree.

Every function returns UTC datetimes and does its arithmetic in UTC: Python adds a
timedelta to a zone-aware datetime on the wall clock, which is wrong across a DST
change (and compares two datetimes of one zone ignoring ``fold``).

The uplink reads the time from a :data:`Clock` it is given (:func:`utc_now` in
service): schedules, due times and backoffs all follow it, so tests move time instead
of waiting.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

__all__ = [
    "DUE_SQL",
    "REALTIME",
    "STAT_TYPES",
    "Clock",
    "due_at",
    "enqueue_limit",
    "initial_through",
    "next_start",
    "period_start",
    "utc_now",
]

STAT_TYPES = (0, 1, 2, 3)
REALTIME = timedelta(minutes=15)

Clock = Callable[[], datetime]  # the current time, aware


def utc_now() -> datetime:
    return datetime.now(UTC)


def period_start(stat_type: int, t: datetime, tz: ZoneInfo) -> datetime:
    """Start of the period of this type containing t (aware, in tz)."""
    local = t.astimezone(tz)
    if stat_type == 0:
        # Keeps fold, so the repeated hour of a DST change stays the second one.
        return local.replace(minute=local.minute - local.minute % 15, second=0,
                             microsecond=0).astimezone(UTC)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0, fold=0)
    if stat_type == 1:
        return _localize(day, tz)
    if stat_type == 2:
        return _localize(day.replace(day=1), tz)
    if stat_type == 3:
        return _localize(day.replace(month=1, day=1), tz)
    raise ValueError(f"statType {stat_type} is not 0..3")


def next_start(stat_type: int, start: datetime, tz: ZoneInfo) -> datetime:
    """Start of the period after the one starting at ``start``."""
    local = start.astimezone(tz)
    if stat_type == 0:
        return start.astimezone(UTC) + REALTIME
    if stat_type == 1:
        return _localize(local.replace(tzinfo=None) + timedelta(days=1), tz)
    if stat_type == 2:
        y, m = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
        return _localize(local.replace(tzinfo=None, year=y, month=m, day=1), tz)
    if stat_type == 3:
        return _localize(local.replace(tzinfo=None, year=local.year + 1, month=1, day=1), tz)
    raise ValueError(f"statType {stat_type} is not 0..3")


def due_at(stat_type: int, start: datetime, tz: ZoneInfo, *,
           realtime_delay: timedelta, upload_time: time) -> datetime:
    """When the period starting at ``start`` may first be sent."""
    if stat_type == 0:
        return start.astimezone(UTC) + REALTIME + realtime_delay
    end = next_start(stat_type, start, tz).astimezone(tz).replace(tzinfo=None)
    day = end if stat_type == 1 else end + timedelta(days=1)  # months, years: day 2
    return _localize(datetime.combine(day.date(), upload_time), tz)


def enqueue_limit(stat_type: int, now: datetime, tz: ZoneInfo, realtime_delay: timedelta) -> datetime:
    """Periods starting before this instant are ready for the outbox at ``now``:
    real-time ones once they are due, the others once they have closed (their due
    time, which may depend on the device's upload time, is kept per row)."""
    if stat_type == 0:
        # [a, a+15) is due at a+15+delay: all starts before floor(now - delay).
        return period_start(0, now.astimezone(UTC) - realtime_delay, tz)
    return period_start(stat_type, now, tz)


def initial_through(stat_type: int, now: datetime, tz: ZoneInfo, *,
                    backfill: timedelta, realtime_delay: timedelta) -> datetime:
    """Where a new target's window starts: the periods of the last ``backfill``, and at
    least the latest finished period of each type (so a target first started on
    1 December still receives November)."""
    limit = enqueue_limit(stat_type, now, tz, realtime_delay)
    latest = _previous_start(stat_type, limit, tz)
    return min(period_start(stat_type, now.astimezone(UTC) - backfill, tz), latest)


def _previous_start(stat_type: int, start: datetime, tz: ZoneInfo) -> datetime:
    if stat_type == 0:
        return start.astimezone(UTC) - REALTIME
    return period_start(stat_type, start.astimezone(UTC) - timedelta(seconds=1), tz)


def _localize(wall: datetime, tz: ZoneInfo) -> datetime:
    """A local wall-clock time in tz (the first of a repeated hour), as UTC."""
    return wall.replace(tzinfo=tz, fold=0).astimezone(UTC)



# The due-time rule in SQL, for rows enqueued server-side.  Placeholders: {tz} the
# zone name, {delay} the real-time delay (interval), {upload} the upload time (time).
# ``c`` is consumption.
DUE_SQL = """CASE c.stat_type
    WHEN 0 THEN c.period_start + interval '15 minutes' + {delay}
    WHEN 1 THEN (date_trunc('day', c.period_start AT TIME ZONE {tz})
                 + interval '1 day' + ({upload})::interval) AT TIME ZONE {tz}
    WHEN 2 THEN (date_trunc('month', c.period_start AT TIME ZONE {tz})
                 + interval '1 month 1 day' + ({upload})::interval) AT TIME ZONE {tz}
    ELSE (date_trunc('year', c.period_start AT TIME ZONE {tz})
          + interval '1 year 1 day' + ({upload})::interval) AT TIME ZONE {tz}
END"""
