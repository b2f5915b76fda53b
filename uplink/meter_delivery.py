"""Sending one enterprise's due instrument rows in a round of :class:`uplink.delivery.Delivery`.

The rules are the data's, and so is the machinery: the enterprise registers through
the same :class:`~uplink.devices.Devices` (its refusal backoff included; no item
configuration is needed), every reply is classified by :mod:`uplink.http`, a retry gets
the round's own per-row backoff and a failure of the platform pauses the whole target
through the round (``retry_at`` and ``trouble`` are the round's).  A refresh
registers anew and tries once more; the same answer again is a rejection.

An enterprise's rows go one call at a time, in the order fetched (instrument records
first), so an ``add`` is acknowledged, with its dataIndex, before anything quotes it.
"""

from __future__ import annotations

import asyncio
import time as _time
from collections.abc import Callable, Sequence
from datetime import datetime

from runtime.dberrors import describe, is_retryable
from uplink.adapters import Enterprise, Registration
from uplink.adapters.meters import MeterSender
from uplink.devices import Devices, call_outcome
from uplink.errors import RefreshError, RejectedError, RetryableError
from uplink.meter_outbox import MeterOutbox, MeterOutcomes, MeterRow
from uplink.metrics import UplinkMetrics
from uplink.outbox import ItemRow
from uplink.schedule import Clock

__all__ = ["MeterDelivery"]


class MeterDelivery:
    def __init__(self, target: str, *, sender: MeterSender, outbox: MeterOutbox, devices: Devices,
                 metrics: UplinkMetrics, clock: Clock, retry_at: Callable[[int, RetryableError], datetime],
                 trouble: Callable[[RetryableError], None]) -> None:
        self._name = target
        self._sender = sender
        self.outbox = outbox
        self._devices = devices
        self._metrics = metrics
        self._clock = clock
        self._retry_at = retry_at
        self._trouble = trouble

    async def deliver(self, enterprise: Enterprise, rows: Sequence[MeterRow], items: list[ItemRow],
                      out: MeterOutcomes, sem: asyncio.Semaphore, halted: Callable[[], bool]) -> None:
        """One enterprise's rows.  An unexpected error costs this enterprise alone, as
        for its records: its rows without an outcome wait for their retry (``internal``);
        the database being away goes on to the stage runner."""
        try:
            await self._deliver(enterprise, rows, items, out, sem, halted)
        except Exception as exc:
            if is_retryable(exc):
                raise
            answered = {id(r) for r, *_ in (*out.acked, *out.retried, *out.rejected)}
            waiting = [r for r in rows if id(r) not in answered]
            self._metrics.enterprise_failed(self._name, enterprise.code, exc, len(waiting))
            self._retry(waiting, RetryableError("internal", describe(exc)), out, sent=False)

    async def _deliver(self, enterprise: Enterprise, rows: Sequence[MeterRow], items: list[ItemRow],
                       out: MeterOutcomes, sem: asyncio.Semaphore, halted: Callable[[], bool]) -> None:
        if halted():
            return
        try:
            registration = await self._devices.ready(enterprise, [], items, sem, configure=False)
        except RetryableError as exc:
            self._retry(rows, exc, out, sent=False)
            return
        for row in rows:
            if halted():
                return  # not started: the rows stay due, untouched
            await self._send(enterprise, registration, row, items, out, sem, halted)

    async def _send(self, enterprise: Enterprise, registration: Registration, row: MeterRow,
                    items: list[ItemRow], out: MeterOutcomes, sem: asyncio.Semaphore,
                    halted: Callable[[], bool], *, refreshed: bool = False) -> None:
        async with sem:
            if halted():
                return
            at, t0 = self._clock(), _time.monotonic()
            try:
                reply = await self._sender.send_meter(enterprise, registration, row.call)
            except RetryableError as exc:
                self._request(row, exc, t0)
                self._retry([row], exc, out, sent=True)
                return
            except RejectedError as exc:
                if exc.status:  # status 0: refused before any request
                    self._request(row, exc, t0)
                self._reject(row, exc, out)
                return
            except RefreshError as exc:
                self._request(row, exc, t0)
                if refreshed:
                    self._reject(row, exc.exhausted(), out)
                    return
                refresh = exc
            else:
                if reply.sent:
                    self._request(row, None, t0)
                out.acked.append((row, reply.data_index, reply.deleted, reply.sent, at))
                self._metrics.meter_acked(self._name, row.call.kind, reply.sent)
                return
        self._metrics.refreshing(self._name, enterprise.code, refresh.reason, refresh.detail)
        try:
            registration = await self._devices.refresh(enterprise, registration, [], items, sem, configure=False)
        except RetryableError as exc:
            self._retry([row], exc, out, sent=True)
            return
        await self._send(enterprise, registration, row, items, out, sem, halted, refreshed=True)

    def _request(self, row: MeterRow, exc: Exception | None, t0: float) -> None:
        self._metrics.request(self._name, f"meter_{row.call.kind}", call_outcome(exc), _time.monotonic() - t0)

    def _reject(self, row: MeterRow, exc: RejectedError, out: MeterOutcomes) -> None:
        out.rejected.append((row, exc.status, exc.message, exc.reason))
        self._metrics.meter_rejected(self._name, row.call.enterprise, row.call.ser_no, row.call.kind, exc.status,
                                     exc.message, reason=exc.reason)

    def _retry(self, rows: Sequence[MeterRow], exc: RetryableError, out: MeterOutcomes, *, sent: bool) -> None:
        for row in rows:
            out.retried.append((row, self._retry_at(row.attempts, exc), str(exc)[:500], sent))
        self._metrics.meter_retried(self._name, exc.reason, len(rows))
        self._trouble(exc)
