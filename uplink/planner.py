"""What a target must send: periods that closed go into the outbox with their due time,
and rows whose consumption changed after they were enqueued (late data) become pending
again.

The schedule works from the target's window (``uplink_window``): after a stop it
catches up on every period that closed meanwhile, in slices, so no statement grows with
the length of the stop.

Late data is found through the consumption revisions.  Revisions are handed out in one
order and committed in another, so each range of revisions is looked at twice: as soon
as it is handed out, and once more when the transactions that took it have surely
ended (``settle_s`` later, and only once no transaction that began before the range was
seen is still open).  The second look moves the persisted cursor.
"""

from __future__ import annotations

import time as _time
from collections import deque
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from uplink.metrics import UplinkMetrics
from uplink.outbox import Outbox
from uplink.schedule import (
    STAT_TYPES,
    Clock,
    enqueue_limit,
    initial_through,
    next_start,
    period_start,
)

__all__ = ["Planner"]

# The most a single enqueue statement covers, per statType (months and years are few).
_MAX_SPAN = {0: timedelta(hours=6), 1: timedelta(days=31)}


class Planner:
    """One target's schedule and revision cursor.  :meth:`plan` loads the window and
    cursor on its first call (again after a failure before they were loaded)."""

    def __init__(self, outbox: Outbox, *, zone: ZoneInfo, realtime_delay: timedelta, backfill: timedelta,
                 settle_s: float, metrics: UplinkMetrics, clock: Clock) -> None:
        self._outbox = outbox
        self._name = outbox.target
        self._tz = zone
        self._delay = realtime_delay
        self._backfill = backfill
        self._settle_s = settle_s
        self._metrics = metrics
        self._clock = clock
        self.windows: dict[int, tuple[datetime, datetime]] = {}
        self._seen = 0     # revisions up to here were fed once
        self._cursor = 0   # ... and up to here fed again after settling (persisted)
        self._marks: deque[tuple[float, int, datetime]] = deque()  # (monotonic, last revision, db clock)
        self._started = False

    async def _start(self) -> None:
        now = self._clock()
        initial = {s: initial_through(s, now, self._tz, backfill=self._backfill, realtime_delay=self._delay)
                   for s in STAT_TYPES}
        self.windows = await self._outbox.load_windows(initial)
        self._cursor = await self._outbox.load_cursor(await self._outbox.last_revision())
        self._seen = self._cursor
        self._started = True

    async def plan(self) -> None:
        if not self._started:
            await self._start()
        now = self._clock()
        for s in STAT_TYPES:
            limit = enqueue_limit(s, now, self._tz, self._delay)
            while limit > (through := self.windows[s][1]):
                # After a long stop, catch up in slices: each statement stays small.
                end = limit
                if s in _MAX_SPAN:
                    end = min(limit, max(period_start(s, through + _MAX_SPAN[s], self._tz),
                                         next_start(s, through, self._tz)))
                n = await self._outbox.enqueue(s, through, end, now)
                self.windows[s] = (self.windows[s][0], end)
                self._metrics.queued(self._name, "schedule", n)
        await self._late_data(now)

    async def _late_data(self, now: datetime) -> None:
        # The fast path looks at revisions handed out since the last look...
        last, read_at = await self._outbox.revision_mark()
        if last > self._seen:
            n = await self._outbox.feed(self._seen, last, self.windows, now)
            self._seen = last
            self._metrics.queued(self._name, "revision", n)
        # ... and once a revision has settled (its transaction surely finished), its
        # range is looked at once more: a transaction that took revision 100 may commit
        # after one that took 101 was seen.  Settled means settle_s old and no
        # transaction open that began before it was seen: a database stall longer than
        # settle_s holds a transaction open that long, and its revisions must not be
        # passed over.
        mono = _time.monotonic()
        if not self._marks or self._marks[-1][1] < last:
            self._marks.append((mono, last, read_at))
        settled = None
        if self._marks and self._marks[0][0] <= mono - self._settle_s:
            oldest = await self._outbox.oldest_open_transaction()
            while (self._marks and self._marks[0][0] <= mono - self._settle_s
                   and (oldest is None or oldest > self._marks[0][2])):
                settled = self._marks.popleft()[1]
        if settled is not None and settled > self._cursor:
            n = await self._outbox.feed(self._cursor, settled, self.windows, now)
            self._metrics.queued(self._name, "revision", n)
            self._cursor = settled
            await self._outbox.save_cursor(settled)
