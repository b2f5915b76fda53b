"""Processing's named events, each counted in Prometheus.  Labels stay low-cardinality:
flag names, tier numbers and event kinds are fixed lists; never an enterprise or a code."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ingest.quality import FLAG_NAMES

__all__ = ["ProcessingMetrics"]

_RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ProcessingMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.flagged = Counter(
            "nhjc_readings_flagged_total",
            "Readings that gained a quality flag in processing, by flag", ["flag"], registry=registry)
        self.periods = Counter(
            "nhjc_periods_computed_total",
            "Consumption rows recomputed, by stat_type (0 15 min, 1 day, 2 month, 3 year)",
            ["stat_type"], registry=registry)
        self.changed = Counter(
            "nhjc_periods_changed_total",
            "Consumption rows inserted or changed (revision bumped), by stat_type",
            ["stat_type"], registry=registry)
        self.events = Counter(
            "nhjc_meter_events_total", "Meter events recorded, by kind (rollover, reset)",
            ["kind"], registry=registry)
        self.readings = Counter(
            "nhjc_aggregator_readings_loaded_total",
            "Readings loaded to recompute periods (new ones and their surroundings)",
            registry=registry)
        self.pending_done = Counter(
            "nhjc_aggregator_pending_processed_total", "pending_recompute rows processed",
            registry=registry)
        self.run_seconds = Histogram(
            "nhjc_aggregator_run_seconds", "Time of one aggregator run that found work",
            buckets=_RUN_BUCKETS, registry=registry)
        self.backlog = Gauge(
            "nhjc_aggregator_pending_rows", "pending_recompute rows waiting", registry=registry)
        self.errors = Counter(
            "nhjc_aggregator_errors_total", "Aggregator runs that failed (retried later)",
            registry=registry)
        # Make every label value visible from the start (a 0 is a statement too).
        for name in FLAG_NAMES.values():
            self.flagged.labels(name)
        for tier in range(4):
            self.periods.labels(str(tier))
            self.changed.labels(str(tier))
        for kind in ("rollover", "reset"):
            self.events.labels(kind)

    def run_finished(self, *, seconds: float, pending: int, readings: int,
                     flagged: Mapping[str, int], computed: Mapping[int, int],
                     changed: Mapping[int, int], events: Mapping[str, int]) -> None:
        """One committed aggregator run."""
        self.run_seconds.observe(seconds)
        self.pending_done.inc(pending)
        self.readings.inc(readings)
        for name, n in flagged.items():
            if n:
                self.flagged.labels(name).inc(n)
        for tier, n in computed.items():
            self.periods.labels(str(tier)).inc(n)
        for tier, n in changed.items():
            self.changed.labels(str(tier)).inc(n)
        for kind, n in events.items():
            if n:
                self.events.labels(kind).inc(n)

    def backlog_seen(self, rows: int) -> None:
        self.backlog.set(rows)

    def run_failed(self) -> None:
        self.errors.inc()
