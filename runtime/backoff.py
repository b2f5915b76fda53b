"""The one backoff: how long to wait after the n-th failure in a row.  Used by the stage
runner's pause after an error, the collector's reconnects, the ingest's commit retries
and the uplink's per-record retries and target pauses."""

from __future__ import annotations

import random

__all__ = ["Backoff", "backoff_delay"]


def backoff_delay(attempt: int, minimum_s: float, maximum_s: float,
                  rng: random.Random | None = None) -> float:
    """Seconds before attempt ``attempt + 1``: exponential from ``minimum_s``, capped at
    ``maximum_s``, with "equal jitter" (half fixed, half random) so that many records,
    or many instances, failing together do not come back together."""
    ceiling = min(maximum_s, minimum_s * 2.0 ** max(0, min(attempt - 1, 62)))
    return ceiling / 2 + (rng or random).random() * ceiling / 2


class Backoff:
    """A streak of failures: each ``next_delay()`` counts one and says how long to wait;
    ``reset()`` after a success starts the next streak from ``minimum_s`` again."""

    def __init__(self, minimum_s: float, maximum_s: float, rng: random.Random | None = None) -> None:
        if not 0 < minimum_s <= maximum_s:
            raise ValueError(f"backoff needs 0 < minimum ({minimum_s}) <= maximum ({maximum_s})")
        self.minimum_s, self.maximum_s = minimum_s, maximum_s
        self._rng = rng
        self.failures = 0

    def next_delay(self) -> float:
        self.failures += 1
        return backoff_delay(self.failures, self.minimum_s, self.maximum_s, self._rng)

    def reset(self) -> None:
        self.failures = 0
