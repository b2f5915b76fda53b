"""The uplink's named events, counted in Prometheus.  Labels stay low-cardinality: the
target name and a reason from a fixed list (:data:`uplink.errors.REASONS`), never an
enterprise, a URL or a platform's message."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["UplinkMetrics"]


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
            "nhjc_uplink_rejected_total", "Records the platform rejected (kept, not retried)",
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
        self._up = Gauge(
            "nhjc_uplink_target_up", "1 when the last request to the target got an answer",
            ["target"], registry=registry)

    def queued(self, target: str, cause: str, n: int) -> None:
        if n:
            self._queued.labels(target, cause).inc(n)

    def request(self, target: str, call: str, outcome: str, seconds: float) -> None:
        """One HTTP call (register, config, data, token...) and how it ended:
        ok, retry or rejected."""
        self._requests.labels(target, call, outcome).observe(seconds)
        self._up.labels(target).set(0 if outcome == "down" else 1)

    def sent(self, target: str, n: int) -> None:
        self._sent.labels(target).inc(n)

    def acked(self, target: str, n: int) -> None:
        self._acked.labels(target).inc(n)

    def rejected(self, target: str, n: int) -> None:
        self._rejected.labels(target).inc(n)

    def retried(self, target: str, reason: str, n: int) -> None:
        self._retries.labels(target, reason).inc(n)

    def backlog(self, target: str, *, due: int, waiting: int, oldest_s: float, rejected: int) -> None:
        self._backlog.labels(target).set(due)
        self._waiting.labels(target).set(waiting)
        self._oldest.labels(target).set(oldest_s)
        self._rejected_kept.labels(target).set(rejected)
