"""The uplink's named events: each method is one thing that happened to a target, and it
logs and counts together, so a log line and its count cannot drift apart.  Labels stay
low-cardinality: the target name and a reason from a fixed list
(:data:`uplink.errors.REASONS`), never an enterprise, a URL or a platform's message
(those go to the log line and the outbox only)."""

from __future__ import annotations

import contextlib
import logging
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from uplink.records import Record

__all__ = ["UplinkMetrics"]

log = logging.getLogger("nhjc.uplink")


class UplinkMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._queued = Counter(
            "nhjc_uplink_queued_total", "Records put in the outbox (cause: schedule or revision)",
            ["target", "cause"], registry=registry)
        self._sent = Counter(
            "nhjc_uplink_sent_total", "Records carried by a request to the platform",
            ["target"], registry=registry)
        self._acked = Counter(
            "nhjc_uplink_acked_total", "Records the platform acknowledged", ["target"], registry=registry)
        self._rejected = Counter(
            "nhjc_uplink_rejected_total", "Records the platform rejected (kept, not retried), by reason",
            ["target", "reason"], registry=registry)
        self._refreshes = Counter(
            "nhjc_uplink_refreshes_total",
            "Registrations done again because the platform said ours was stale, by reason",
            ["target", "reason"], registry=registry)
        self._withdrawn = Counter(
            "nhjc_uplink_withdrawn_total",
            "Records sent earlier whose period has nothing measured any more (coverage 0), not sent again",
            ["target"], registry=registry)
        self._retries = Counter(
            "nhjc_uplink_retries_total", "Records scheduled for another attempt, by reason",
            ["target", "reason"], registry=registry)
        self._requests = Histogram(
            "nhjc_uplink_request_seconds", "Duration of platform requests, by call and outcome",
            ["target", "call", "outcome"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=registry)
        self._backlog = Gauge(
            "nhjc_uplink_backlog", "Records due and not yet acknowledged", ["target"], registry=registry)
        self._waiting = Gauge(
            "nhjc_uplink_waiting", "Records queued whose due time has not come", ["target"], registry=registry)
        self._oldest = Gauge(
            "nhjc_uplink_oldest_unacked_seconds", "Age of the oldest due, unacknowledged record",
            ["target"], registry=registry)
        self._rejected_kept = Gauge(
            "nhjc_uplink_rejected_records", "Rejected records kept in the outbox", ["target"],
            registry=registry)
        # Measuring instruments (uplink_meter_outbox): kind is gauge, verify or replace.
        self._meter_queued = Counter(
            "nhjc_uplink_meter_queued_total", "Instrument rows made pending (new or changed), by kind",
            ["target", "kind"], registry=registry)
        self._meter_acked = Counter(
            "nhjc_uplink_meter_acked_total", "Instrument calls the platform acknowledged, by kind",
            ["target", "kind"], registry=registry)
        self._meter_rejected = Counter(
            "nhjc_uplink_meter_rejected_total", "Instrument rows refused (kept, not retried), by kind and reason",
            ["target", "kind", "reason"], registry=registry)
        self._meter_retries = Counter(
            "nhjc_uplink_meter_retries_total", "Instrument rows scheduled for another attempt, by reason",
            ["target", "reason"], registry=registry)
        self._meter_backlog = Gauge(
            "nhjc_uplink_meter_backlog", "Instrument rows pending and due", ["target"], registry=registry)
        self._meter_rejected_kept = Gauge(
            "nhjc_uplink_meter_rejected_rows", "Refused instrument rows kept in the outbox", ["target"],
            registry=registry)
        self._up = Gauge(
            "nhjc_uplink_target_up", "1 when the last request to the target got an answer",
            ["target"], registry=registry)

    # -- a target's life -----------------------------------------------------------------

    def started(self, target: str, url: str, flavour: str) -> None:
        log.info("uplink %s: delivering to %s (%s)", target, url, flavour)

    def stopped(self, target: str) -> None:
        log.info("uplink %s: stopped", target)

    def paused(self, target: str, error: Exception, pause_s: float, failures: int) -> None:
        """The platform failed in a way that would fail every record alike: the target
        sends nothing for ``pause_s`` (the request that failed is in the retry count)."""
        log.warning("uplink %s: %s; pausing %.1fs (failure %d in a row)", target, error, pause_s, failures)

    def answers_again(self, target: str, failures: int) -> None:
        log.info("uplink %s: target answers again after %d failed rounds", target, failures)

    def enterprise_failed(self, target: str, enterprise: str, exc: BaseException, waiting: int) -> None:
        """An unexpected error (a bug met with this enterprise's data or replies) ended
        its part of a round; its records wait, counted as retries (reason ``internal``)
        by :meth:`retried`, and the other enterprises went on."""
        log.error("uplink %s: %s: unexpected error; %d record(s) wait for their retry, "
                  "the other enterprises go on", target, enterprise, waiting, exc_info=exc)

    def device_error(self, target: str, enterprise: str, error: str) -> None:
        """Registration or item configuration failed: the enterprise's records wait (they
        are counted as retries by :meth:`retried`)."""
        log.warning("uplink %s: %s: %s", target, enterprise, error)

    # -- records -------------------------------------------------------------------------

    def queued(self, target: str, cause: str, n: int) -> None:
        if n:
            self._queued.labels(target, cause).inc(n)

    def request(self, target: str, call: str, outcome: str, seconds: float, *, records: int = 0) -> None:
        """One call to the platform (register, config, dictionary, data) and how it ended:
        ok, retry, down, refresh or rejected; a data call carried ``records`` records."""
        self._requests.labels(target, call, outcome).observe(seconds)
        self._up.labels(target).set(0 if outcome == "down" else 1)
        if call == "data":
            self._sent.labels(target).inc(records)

    def withdrawn(self, target: str, n: int) -> None:
        """``n`` periods sent earlier lost their measurement (coverage fell to 0, or the
        row is gone): they are withdrawn, not sent; the platform keeps what it had."""
        if n:
            self._withdrawn.labels(target).inc(n)
            log.info("uplink %s: %d period(s) sent earlier have nothing measured any more; withdrawn,"
                     " not sent again", target, n)

    def acked(self, target: str, n: int) -> None:
        self._acked.labels(target).inc(n)

    def rejected(self, target: str, record: Record, status: int, message: str, zone: ZoneInfo, *,
                 reason: str) -> None:
        """The platform refused this one record (a chunk is split until the refused
        records are alone): it is kept with the platform's words, never retried as is.
        ``reason`` is one of :data:`uplink.errors.REJECT_REASONS`."""
        self._rejected.labels(target, reason).inc()
        log.warning("uplink %s: rejected %s %s statType %d %s (%s): HTTP %d %s", target, record.enterprise,
                    record.data_code, record.stat_type, record.period_start.astimezone(zone), reason, status,
                    message)

    def not_sendable(self, target: str, record: Record, message: str, zone: ZoneInfo) -> None:
        """A record refused before sending (a value that is not a finite number): kept
        as rejected, like one the platform refused, with the reason ``not_sendable``."""
        self._rejected.labels(target, "not_sendable").inc()
        log.warning("uplink %s: rejected %s %s statType %d %s: %s", target, record.enterprise,
                    record.data_code, record.stat_type, record.period_start.astimezone(zone), message)

    # -- what the platform said about an enterprise ----------------------------------------

    def refreshing(self, target: str, enterprise: str, reason: str, detail: str) -> None:
        """The platform refused a request because our registration is stale (a device id
        not this enterprise's, a key it no longer takes, a token refused): the enterprise
        registers again and the same request is retried once."""
        self._refreshes.labels(target, reason).inc()
        log.warning("uplink %s: %s: %s (%s); registering again, then retrying once", target, enterprise,
                    reason, detail)

    def not_in_registry(self, target: str, enterprise: str, region: str) -> None:
        """The enterprise is not in the enterprise registry: it registers with ``region``
        from the target's setting or its credit code (said once per target and enterprise)."""
        log.warning("uplink %s: %s is not in the enterprise registry (nhjc enterprises load); registering"
                    " with region %s from the target's region setting or the credit code", target,
                    enterprise, region)

    def dictionary_changed(self, target: str, enterprise: str, old: str | None, new: str | None) -> None:
        """The platform's dictionary version changed: the item configuration is sent again."""
        log.info("uplink %s: %s: dictionary version %s -> %s; sending the item configuration again",
                 target, enterprise, old, new)

    def retried(self, target: str, reason: str, n: int) -> None:
        self._retries.labels(target, reason).inc(n)

    # -- measuring instruments --------------------------------------------------------------

    def meter_queued(self, target: str, queued: dict[str, int]) -> None:
        """Instrument rows made pending because their record changed (or is new)."""
        for kind, n in queued.items():
            if n:
                self._meter_queued.labels(target, kind).inc(n)
                log.info("uplink %s: %d instrument row(s) of kind %s to send", target, n, kind)

    def meter_acked(self, target: str, kind: str, sent: bool) -> None:
        """An instrument row settled: acknowledged by the platform, or (``sent`` False)
        nothing needed sending (a delete of what the platform never had)."""
        if sent:
            self._meter_acked.labels(target, kind).inc()

    def meter_rejected(self, target: str, enterprise: str, ser_no: str, kind: str, status: int, message: str, *,
                       reason: str) -> None:
        """An instrument row refused: kept with the platform's words, sent again only when
        its record changes or an operator says so (``nhjc uplink resend``)."""
        self._meter_rejected.labels(target, kind, reason).inc()
        log.warning("uplink %s: rejected instrument %s %s (%s, %s): HTTP %d %s", target, enterprise, ser_no, kind,
                    reason, status, message)

    def meter_retried(self, target: str, reason: str, n: int) -> None:
        self._meter_retries.labels(target, reason).inc(n)

    def meter_backlog(self, target: str, *, due: int, rejected: int) -> None:
        self._meter_backlog.labels(target).set(due)
        self._meter_rejected_kept.labels(target).set(rejected)

    def disowned(self, target: str) -> None:
        """Another instance sends to this target now: its gauges are that instance's."""
        for gauge in (self._backlog, self._waiting, self._oldest, self._rejected_kept, self._up,
                      self._meter_backlog, self._meter_rejected_kept):
            with contextlib.suppress(KeyError):
                gauge.remove(target)

    def backlog(self, target: str, *, due: int, waiting: int, oldest_s: float, rejected: int) -> None:
        self._backlog.labels(target).set(due)
        self._waiting.labels(target).set(waiting)
        self._oldest.labels(target).set(oldest_s)
        self._rejected_kept.labels(target).set(rejected)
