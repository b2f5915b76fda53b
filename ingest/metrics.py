"""Ingest's named events, each counted in Prometheus (labels stay low-cardinality:
reasons are a fixed list, never a topic or an enterprise)."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["FAILURE_STAGES", "IngestMetrics"]

log = logging.getLogger("nhjc.ingest")

# Where one message's handling failed: decoding or validating it, applying its items, or
# storing what it carried.
FAILURE_STAGES = ("decode", "items", "store")

_LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400, 604800)


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.frames = Counter("nhjc_frames_received_total", "Readings frames received", registry=registry)
        self.readings_received = Counter(
            "nhjc_readings_received_total", "Readings received (accepted + quarantined)", registry=registry)
        self.readings_accepted = Counter(
            "nhjc_readings_accepted_total", "Readings accepted and committed", registry=registry)
        self.quarantined = Counter(
            "nhjc_quarantined_total", "Frames or readings quarantined, by reason and level",
            ["reason", "level"], registry=registry)
        self.batch_rows = Histogram(
            "nhjc_batch_rows", "Readings per committed batch",
            buckets=(1, 10, 50, 100, 500, 1000, 2500, 5000, 10000, 25000), registry=registry)
        self.commit_seconds = Histogram(
            "nhjc_commit_seconds", "Time to commit one batch",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=registry)
        self.lag = Histogram(
            "nhjc_commit_lag_seconds", "Lag to commit, from the reading's time or from its arrival",
            ["since"], buckets=_LAG_BUCKETS, registry=registry)
        self.queue_depth = Gauge("nhjc_queue_depth", "Messages received, waiting for a batch", registry=registry)
        self.unacked = Gauge("nhjc_unacked_messages", "Messages received and not yet acknowledged", registry=registry)
        self.unacked_peak = Gauge(
            "nhjc_unacked_messages_peak", "The most messages held unacknowledged at once since start", registry=registry)
        self.window_paused = Gauge(
            "nhjc_ingest_window_paused", "1 while the broker is not read because the receive window is full",
            registry=registry)
        self.broker_up = Gauge("nhjc_broker_connected", "1 when connected to the broker", registry=registry)
        self.database_up = Gauge("nhjc_database_up", "1 when the last database operation succeeded", registry=registry)
        self.write_retries = Counter(
            "nhjc_write_retries_total", "Batch writes retried after a database error", registry=registry)
        self.message_errors = Counter(
            "nhjc_message_errors_total",
            "Messages whose decoding, items or storing failed with an error that is not the "
            "infrastructure's, by stage and exception class", ["stage", "error_type"], registry=registry)

    def batch_committed(self, *, frames: int, accepted: int, quarantine_reasons: list[tuple[str, str]],
                        seconds: float, reading_lag_s: float | None, receive_lag_s: float | None) -> None:
        """One committed batch.  Lags are observed once per batch, not per reading: the
        freshest reading's age (how far behind real time we are) and the longest wait of
        a message in the batch (how long intake took)."""
        self.frames.inc(frames)
        self.readings_accepted.inc(accepted)
        self.readings_received.inc(accepted + sum(1 for _, level in quarantine_reasons if level == "reading"))
        for reason, level in quarantine_reasons:
            self.quarantined.labels(reason, level).inc()
        self.batch_rows.observe(accepted)
        self.commit_seconds.observe(seconds)
        if reading_lag_s is not None:
            self.lag.labels("reading").observe(max(0.0, reading_lag_s))
        if receive_lag_s is not None:
            self.lag.labels("receive").observe(max(0.0, receive_lag_s))
        self.database_up.set(1)

    def message_failed(self, stage: str, topic: str, exc: BaseException,
                       outcome: str = "quarantined") -> None:
        """One message whose handling raised an error that is its own fault (not the
        database's or the broker's): counted by exception class, logged with its topic.
        The traceback goes to the debug log only: a gateway repeating a poison message
        must not be able to flood the log."""
        kind = type(exc).__name__
        self.message_errors.labels(stage, kind).inc()
        log.warning("message on %s: %s failed (%s); %s", _shown(topic), stage, kind, outcome)
        log.debug("message on %s: %s failed", _shown(topic), stage, exc_info=exc)


def _shown(topic: str) -> str:
    """A topic for a log line: escaped (it is the sender's text) and bounded."""
    return ascii(topic[:200])
