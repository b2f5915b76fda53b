"""Ingest's named events, each counted in Prometheus (labels stay low-cardinality:
reasons are a fixed list, never a topic or an enterprise)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["FAILURE_STAGES", "IngestMetrics", "ReceiveWindow"]

log = logging.getLogger("nhjc.ingest")

# Where one message's handling failed: decoding or validating it, applying its items, or
# storing what it carried.
FAILURE_STAGES = ("decode", "items", "store")

class ReceiveWindow(Protocol):
    """What the metrics read of the collector's receive window."""

    @property
    def queue(self) -> asyncio.Queue[Any]: ...
    @property
    def unacked(self) -> int: ...
    @property
    def peak_unacked(self) -> int: ...
    @property
    def window_paused(self) -> bool: ...


_LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400, 604800)


class IngestMetrics:
    """Ingest's events, each named for what happened; the instruments are its own."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._frames = Counter("nhjc_frames_received_total", "Readings frames received", registry=registry)
        self._readings_received = Counter(
            "nhjc_readings_received_total", "Readings received (accepted + quarantined)", registry=registry)
        self._readings_accepted = Counter(
            "nhjc_readings_accepted_total", "Readings accepted and committed", registry=registry)
        self._quarantined = Counter(
            "nhjc_quarantined_total", "Frames or readings quarantined, by reason and level",
            ["reason", "level"], registry=registry)
        self._batch_rows = Histogram(
            "nhjc_batch_rows", "Readings per committed batch",
            buckets=(1, 10, 50, 100, 500, 1000, 2500, 5000, 10000, 25000), registry=registry)
        self._commit_seconds = Histogram(
            "nhjc_commit_seconds", "Time to commit one batch",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=registry)
        self._lag = Histogram(
            "nhjc_commit_lag_seconds", "Lag to commit, from the reading's time or from its arrival",
            ["since"], buckets=_LAG_BUCKETS, registry=registry)
        self._queue_depth = Gauge("nhjc_queue_depth", "Messages received, waiting for a batch", registry=registry)
        self._unacked = Gauge("nhjc_unacked_messages", "Messages received and not yet acknowledged", registry=registry)
        self._unacked_peak = Gauge(
            "nhjc_unacked_messages_peak", "The most messages held unacknowledged at once since start", registry=registry)
        self._window_paused = Gauge(
            "nhjc_ingest_window_paused", "1 while the broker is not read because the receive window is full",
            registry=registry)
        self._broker_up = Gauge("nhjc_broker_connected", "1 when connected to the broker", registry=registry)
        self._database_up = Gauge(
            "nhjc_database_up", "1 when the last database operation succeeded", registry=registry)
        self._write_retries = Counter(
            "nhjc_write_retries_total", "Batch writes retried after a database error", registry=registry)
        self._message_errors = Counter(
            "nhjc_message_errors_total",
            "Messages whose decoding, items or storing failed with an error that is not the "
            "infrastructure's, by stage and exception class", ["stage", "error_type"], registry=registry)

    def collector_started(self, window: ReceiveWindow) -> None:
        """The collector's receive window, read at every scrape: the messages waiting for
        a batch, those held unacknowledged (now and at most), and whether reading is
        paused because the window is full."""
        self._queue_depth.set_function(window.queue.qsize)
        self._unacked.set_function(lambda: window.unacked)
        self._unacked_peak.set_function(lambda: window.peak_unacked)
        self._window_paused.set_function(lambda: 1 if window.window_paused else 0)

    def broker_changed(self, connected: bool) -> None:
        """The broker connection came up or went down (the collector logs which)."""
        self._broker_up.set(1 if connected else 0)

    def database_changed(self, up: bool) -> None:
        """The database went up or down (the health state logs which)."""
        self._database_up.set(1 if up else 0)

    def commit_retried(self) -> None:
        """A batch write failed because the database is away; the batch is kept and
        tried again first (the outage is logged once, by the health state)."""
        self._write_retries.inc()

    def batch_committed(self, *, frames: int, accepted: int, quarantine_reasons: list[tuple[str, str]],
                        seconds: float, reading_lag_s: float | None, receive_lag_s: float | None) -> None:
        """One committed batch.  Lags are observed once per batch, not per reading: the
        freshest reading's age (how far behind real time we are) and the longest wait of
        a message in the batch (how long intake took)."""
        self._frames.inc(frames)
        self._readings_accepted.inc(accepted)
        self._readings_received.inc(accepted + sum(1 for _, level in quarantine_reasons if level == "reading"))
        for reason, level in quarantine_reasons:
            self._quarantined.labels(reason, level).inc()
        self._batch_rows.observe(accepted)
        self._commit_seconds.observe(seconds)
        if reading_lag_s is not None:
            self._lag.labels("reading").observe(max(0.0, reading_lag_s))
        if receive_lag_s is not None:
            self._lag.labels("receive").observe(max(0.0, receive_lag_s))
        self._database_up.set(1)

    def message_failed(self, stage: str, topic: str, exc: BaseException,
                       outcome: str = "quarantined") -> None:
        """One message whose handling raised an error that is its own fault (not the
        database's or the broker's): counted by exception class, logged with its topic.
        The traceback goes to the debug log only: a gateway repeating a poison message
        must not be able to flood the log."""
        kind = type(exc).__name__
        self._message_errors.labels(stage, kind).inc()
        log.warning("message on %s: %s failed (%s); %s", _shown(topic), stage, kind, outcome)
        log.debug("message on %s: %s failed", _shown(topic), stage, exc_info=exc)


def _shown(topic: str) -> str:
    """A topic for a log line: escaped (it is the sender's text) and bounded."""
    return ascii(topic[:200])
