"""One round of sending to one target, and the target's pause.

A round reads the due rows with their current value, groups them by enterprise,
makes sure each enterprise is registered and configured (:mod:`uplink.devices`), and
writes its records in chunks, a few requests at a time.  A rejected chunk of several
records is split in halves until the records the platform refuses are alone, so one
bad record never holds back its neighbours.  Acks, retries (the backoff per record) and
rejections go back to the outbox in one transaction at the end of the round, and also
when the round ends with an unexpected error: what the platform already acknowledged
must never be sent again because something else failed.

Every reply is classified once (:mod:`uplink.http`), and none loops:

- retry later: the records get their own backoff; a time-out, a refused connection, a
  5xx, 408, 429, "busy" (or refused credentials) also pauses the whole target with the
  target's backoff: the requests not yet started in that round are left untouched, so
  an outage costs one failed request per pause, not one per record;
- refresh: the platform says our registration is stale; the enterprise registers (and
  configures) again and the same request is retried once; the same answer again is a
  rejection (``refresh_failed``);
- rejection: the records are kept as rejected with the reason and the platform's
  words, and are not sent again until their value changes or an operator says so
  (``nhjc uplink resend``).

The same round carries the target's due instrument rows (:mod:`uplink.meter_delivery`),
under the same rules, the same per-row backoff and the same target pause.
"""

from __future__ import annotations

import asyncio
import math
import random
import time as _time
from collections.abc import Sequence
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from config.settings import TargetSettings
from runtime.backoff import Backoff, backoff_delay
from runtime.dberrors import describe, is_retryable
from uplink.adapters import Adapter, Enterprise, Registration
from uplink.adapters.meters import MeterSender
from uplink.devices import Devices, call_outcome
from uplink.enterprises import EnterpriseDirectory
from uplink.errors import RefreshError, RejectedError, RetryableError
from uplink.meter_delivery import MeterDelivery
from uplink.meter_outbox import MeterOutbox, MeterOutcomes, MeterRow
from uplink.metrics import UplinkMetrics
from uplink.outbox import DueRow, ItemRow, Outbox, Outcomes
from uplink.records import TOTAL_CODE, Record, scope_of
from uplink.schedule import Clock

__all__ = ["Delivery"]


class Delivery:
    """Sends a target's due records through its adapter; :meth:`round` is one round."""

    def __init__(self, settings: TargetSettings, *, adapter: Adapter, outbox: Outbox,
                 directory: EnterpriseDirectory, zone: ZoneInfo, metrics: UplinkMetrics, clock: Clock,
                 rng: random.Random, meter_outbox: MeterOutbox | None = None) -> None:
        self._name = outbox.target
        self._settings = settings
        self._adapter = adapter
        self._outbox = outbox
        self._directory = directory
        self._tz = zone
        self._metrics = metrics
        self._clock = clock
        self._rng = rng
        self.devices = Devices(settings, adapter=adapter, outbox=outbox, metrics=metrics, clock=clock, rng=rng)
        self._chunk = adapter.records_per_call or settings.batch_size
        self._pause = Backoff(settings.backoff_min_s, settings.backoff_max_s, rng)
        self.paused_until: datetime | None = None
        self._trouble: RetryableError | None = None  # a failure pausing the target, this round
        # Instruments, when the adapter has calls for them and the target sends them.
        self.meters = (MeterDelivery(self._name, sender=adapter, outbox=meter_outbox, devices=self.devices,
                                     metrics=metrics, clock=clock, retry_at=self._retry_at,
                                     trouble=self._note_trouble)
                       if isinstance(adapter, MeterSender) and meter_outbox is not None and meter_outbox.kinds
                       else None)

    async def round(self, stop: asyncio.Event) -> bool:
        """One round of sending; True when there may be more due right now."""
        now = self._clock()
        if self.paused_until is not None and now < self.paused_until:
            return False
        s = self._settings
        limit = s.batch_size * s.concurrency
        rows = await self._outbox.fetch_due(now, limit)
        meter_rows = await self.meters.outbox.fetch_due(now, limit) if self.meters is not None else []
        if not rows and not meter_rows:
            return False
        out, meter_out = Outcomes(), MeterOutcomes()
        # The platforms hear only what was measured: a period whose coverage fell to 0
        # (or whose row is gone) is not sent.  Never sent, it is simply dropped; sent
        # before, it is withdrawn: kept and counted, what the platform holds left as is.
        await self._outbox.forget([r for r in rows if not r.measured and not r.sent])
        withdrawn = [r for r in rows if not r.measured and r.sent]
        self._metrics.withdrawn(self._name, await self._outbox.withdraw(withdrawn, now))
        by_enterprise: dict[str, list[Record]] = {}
        for row in rows:
            if not row.measured:
                continue
            record = self._record(row)
            if not math.isfinite(record.value):
                reason = "value is not a finite number (not sent)"
                out.rejected.append((record, 0, reason, "not_sendable"))
                self._metrics.not_sendable(self._name, record, reason, self._tz)
                continue
            by_enterprise.setdefault(row.enterprise, []).append(record)
        meters_by: dict[str, list[MeterRow]] = {}
        for mrow in meter_rows:
            meters_by.setdefault(mrow.call.enterprise, []).append(mrow)
        self._trouble = None
        try:
            codes = sorted(by_enterprise.keys() | meters_by.keys())
            items = await self._outbox.items(codes)
            enterprises = await self._directory.lookup(codes)
            sem = asyncio.Semaphore(s.concurrency)
            async with asyncio.TaskGroup() as tg:
                for code, records in by_enterprise.items():
                    tg.create_task(self._deliver_enterprise(enterprises[code], records, items[code], out,
                                                            sem, stop))
                if self.meters is not None:
                    for code, mrows in meters_by.items():
                        tg.create_task(self.meters.deliver(enterprises[code], mrows, items[code], meter_out, sem,
                                                           lambda: self._halted(stop)))
        except Exception:
            # Something unexpected (a bug, the database away while saving a device) left
            # the round: its other requests were cancelled, their rows stay due as they
            # were.  What the platform already answered is recorded before the error
            # goes on to the stage runner; a cancellation (the service giving up on a
            # stalled database) records nothing, as the database is what it gave up on.
            await self._save(out, meter_out)
            raise
        await self._save(out, meter_out)
        if self._trouble is not None:
            pause = max(self._pause.next_delay(), self._trouble.retry_after_s or 0.0)
            self.paused_until = self._clock() + timedelta(seconds=pause)
            self._metrics.paused(self._name, self._trouble, pause, self._pause.failures)
            return False
        if self._pause.failures:
            self._metrics.answers_again(self._name, self._pause.failures)
        self._pause.reset()
        self.paused_until = None
        # An instrument acknowledged may free its verifications and replacements: look again.
        return (len(rows) == limit or len(meter_rows) == limit or bool(meter_out.acked)) and not stop.is_set()

    async def _save(self, out: Outcomes, meter_out: MeterOutcomes) -> None:
        await self._outbox.record(out, self._clock())
        if self.meters is not None:
            await self.meters.outbox.record(meter_out, self._clock())

    def _record(self, row: DueRow) -> Record:
        assert row.value is not None and row.revision is not None
        total = row.code == TOTAL_CODE
        return Record(
            enterprise=row.enterprise, code=row.code,
            data_code=self._settings.total_code if total else row.code,
            stat_type=row.stat_type, period_start=row.period_start, value=float(row.value),
            valid=bool(row.valid), scope=1 if total else (row.scope or scope_of(row.code)),
            input_type=row.input_type or 4, revision=row.revision, attempts=row.attempts)

    def _halted(self, stop: asyncio.Event) -> bool:
        """No new request: stopping, or the target failed in a way that pauses it."""
        return stop.is_set() or self._trouble is not None

    async def _deliver_enterprise(self, enterprise: Enterprise, records: list[Record], items: list[ItemRow],
                                  out: Outcomes, sem: asyncio.Semaphore, stop: asyncio.Event) -> None:
        """One enterprise's part of the round.  An unexpected error here (a bug met with
        this enterprise's data, or a reply nobody foresaw) costs this enterprise alone:
        its records without an outcome yet wait for their retry (reason ``internal``,
        with their backoff) and the other enterprises' requests go on, so one broken
        enterprise cannot hold up a target.  The database being away is not one
        enterprise's fault: that goes on to the stage runner."""
        try:
            await self._deliver_requests(enterprise, records, items, out, sem, stop)
        except Exception as exc:
            if is_retryable(exc):
                raise
            answered = {id(r) for r, *_ in (*out.acked, *out.retried, *out.rejected)}
            waiting = [r for r in records if id(r) not in answered]
            self._metrics.enterprise_failed(self._name, enterprise.code, exc, len(waiting))
            self._retry(waiting, RetryableError("internal", describe(exc)), out, sent=False)

    async def _deliver_requests(self, enterprise: Enterprise, records: list[Record], items: list[ItemRow],
                                out: Outcomes, sem: asyncio.Semaphore, stop: asyncio.Event) -> None:
        if self._halted(stop):
            return
        try:
            registration = await self.devices.ready(enterprise, records, items, sem)
        except RetryableError as exc:
            self._retry(records, exc, out, sent=False)
            return
        n = self._chunk
        async with asyncio.TaskGroup() as tg:
            for i in range(0, len(records), n):
                tg.create_task(self._deliver_chunk(enterprise, registration, records[i:i + n], items, out, sem,
                                                   stop))

    async def _deliver_chunk(self, enterprise: Enterprise, registration: Registration, chunk: Sequence[Record],
                             items: list[ItemRow], out: Outcomes, sem: asyncio.Semaphore, stop: asyncio.Event,
                             *, refreshed: bool = False) -> None:
        """Write one chunk.  ``refreshed``: the enterprise already registered anew for
        these records in this round, so a second refresh is not asked for again."""
        rejection: RejectedError | None = None
        refresh: RefreshError | None = None
        async with sem:
            if self._halted(stop):
                return  # abandoned before it started: the rows stay due, untouched
            uploaded_at = self._clock()
            t0 = _time.monotonic()
            try:
                await self._adapter.write(enterprise, registration, chunk, uploaded_at)
            except RetryableError as exc:
                self._data_request(exc, t0, len(chunk))
                self._retry(chunk, exc, out, sent=True)
                return
            except RefreshError as exc:
                self._data_request(exc, t0, len(chunk))
                if refreshed:
                    # Registered anew a moment ago and refused the same way: asking
                    # again would only loop.  Not split either: it is not one record's fault.
                    self._reject(chunk, exc.exhausted(), out)
                    return
                refresh = exc
            except RejectedError as exc:
                self._data_request(exc, t0, len(chunk))
                rejection = exc
            else:
                self._data_request(None, t0, len(chunk))
                out.acked.extend((r, uploaded_at) for r in chunk)
                self._metrics.acked(self._name, len(chunk))
                return
        if refresh is not None:
            await self._refresh_and_retry(enterprise, registration, chunk, items, out, sem, stop, refresh)
            return
        if len(chunk) > 1:  # find the records the platform refuses
            mid = len(chunk) // 2
            await self._deliver_chunk(enterprise, registration, chunk[:mid], items, out, sem, stop,
                                      refreshed=refreshed)
            await self._deliver_chunk(enterprise, registration, chunk[mid:], items, out, sem, stop,
                                      refreshed=refreshed)
            return
        assert rejection is not None
        self._reject(chunk, rejection, out)

    async def _refresh_and_retry(self, enterprise: Enterprise, stale: Registration, chunk: Sequence[Record],
                                 items: list[ItemRow], out: Outcomes, sem: asyncio.Semaphore,
                                 stop: asyncio.Event, refresh: RefreshError) -> None:
        """Register (and configure) again, then the same request once more."""
        self._metrics.refreshing(self._name, enterprise.code, refresh.reason, refresh.detail)
        try:
            registration = await self.devices.refresh(enterprise, stale, chunk, items, sem)
        except RetryableError as exc:
            self._retry(chunk, exc, out, sent=True)
            return
        await self._deliver_chunk(enterprise, registration, chunk, items, out, sem, stop, refreshed=True)

    def _reject(self, records: Sequence[Record], rejection: RejectedError, out: Outcomes) -> None:
        for record in records:
            out.rejected.append((record, rejection.status, rejection.message, rejection.reason))
            self._metrics.rejected(self._name, record, rejection.status, rejection.message, self._tz,
                                   reason=rejection.reason)

    def _data_request(self, exc: Exception | None, t0: float, n_records: int) -> None:
        self._metrics.request(self._name, "data", call_outcome(exc), _time.monotonic() - t0, records=n_records)

    def _retry(self, records: Sequence[Record], exc: RetryableError, out: Outcomes, *, sent: bool) -> None:
        for r in records:
            out.retried.append((r, self._retry_at(r.attempts, exc), str(exc)[:500], sent))
        self._metrics.retried(self._name, exc.reason, len(records))
        self._note_trouble(exc)

    def _retry_at(self, attempts: int, exc: RetryableError) -> datetime:
        """When a record (or instrument row) that failed its attempt ``attempts + 1``
        goes again: its own backoff, never before the platform's Retry-After."""
        s = self._settings
        delay = backoff_delay(attempts + 1, s.backoff_min_s, s.backoff_max_s, self._rng)
        return self._clock() + timedelta(seconds=max(delay, exc.retry_after_s or 0.0))

    def _note_trouble(self, exc: RetryableError) -> None:
        """A failure that would fail every request alike pauses the target after this round."""
        if exc.pauses_target and self._trouble is None:
            self._trouble = exc
