"""The aggregator's named events, each logged and counted together.  Labels stay
low-cardinality: flag names, tier numbers and event kinds are fixed lists; never an
enterprise or a code.  (Completeness has its own, in :mod:`processing.completeness`.)"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ingest.quality import FLAG_NAMES

__all__ = ["ProcessingMetrics"]

log = logging.getLogger("nhjc.aggregator")

_RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ProcessingMetrics:
    """What the aggregator did: a run finished, the backlog was seen, a run failed."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._flagged = Counter(
            "nhjc_readings_flagged_total",
            "Readings that gained a quality flag in processing, by flag", ["flag"], registry=registry)
        self._periods = Counter(
            "nhjc_periods_computed_total",
            "Consumption rows recomputed, by stat_type (0 15 min, 1 day, 2 month, 3 year)",
            ["stat_type"], registry=registry)
        self._changed = Counter(
            "nhjc_periods_changed_total",
            "Consumption rows inserted or changed (revision bumped), by stat_type",
            ["stat_type"], registry=registry)
        self._events = Counter(
            "nhjc_meter_events_total",
            "Meter events recorded, by kind (rollover, reset, replacement, replacement_refused)",
            ["kind"], registry=registry)
        self._readings = Counter(
            "nhjc_aggregator_readings_loaded_total",
            "Readings loaded to recompute periods (new ones and their surroundings)",
            registry=registry)
        self._pending_done = Counter(
            "nhjc_aggregator_pending_processed_total", "pending_recompute rows processed",
            registry=registry)
        self._run_seconds = Histogram(
            "nhjc_aggregator_run_seconds", "Time of one aggregator run that found work",
            buckets=_RUN_BUCKETS, registry=registry)
        self._backlog = Gauge(
            "nhjc_aggregator_pending_rows", "pending_recompute rows waiting", registry=registry)
        self._errors = Counter(
            "nhjc_aggregator_errors_total", "Aggregator runs that failed (retried later)",
            registry=registry)
        # Make every label value visible from the start (a 0 is a statement too).
        for name in FLAG_NAMES.values():
            self._flagged.labels(name)
        for tier in range(4):
            self._periods.labels(str(tier))
            self._changed.labels(str(tier))
        for kind in ("rollover", "reset", "replacement", "replacement_refused"):
            self._events.labels(kind)

    def run_finished(self, *, seconds: float, pending: int, readings: int,
                     flagged: Mapping[str, int], computed: Mapping[int, int],
                     changed: Mapping[int, int], events: Mapping[str, int]) -> None:
        """One committed aggregator run."""
        self._run_seconds.observe(seconds)
        self._pending_done.inc(pending)
        self._readings.inc(readings)
        for name, n in flagged.items():
            if n:
                self._flagged.labels(name).inc(n)
        for tier, n in computed.items():
            self._periods.labels(str(tier)).inc(n)
        for tier, n in changed.items():
            self._changed.labels(str(tier)).inc(n)
        for kind, n in events.items():
            if n:
                self._events.labels(kind).inc(n)
        log.debug("aggregated %d pending row(s), %d reading(s) loaded, %d period row(s) "
                  "computed, in %.3fs", pending, readings, sum(computed.values()), seconds)

    def backlog_seen(self, rows: int) -> None:
        """``rows`` pending rows wait after a run (a gauge: no log line)."""
        self._backlog.set(rows)

    def run_failed(self, exc: BaseException) -> None:
        """A run failed and was rolled back.  Counted here; the stage runner says it in
        the log (once per outage or streak), so this line is only for debugging."""
        self._errors.inc()
        log.debug("aggregator run failed: %s: %s", type(exc).__name__, exc)
