"""Consumption of every simulated item at once: load shape x slow noise, summed up the tree.

All items of all enterprises sit in flat numpy arrays (one column per item, in gateway
order), so one call computes a block of ticks for the whole fleet: 2,000 enterprises x 100
items is one (ticks x 200,000) array, not 200,000 Python objects.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tools.sim import load
from tools.sim.enterprises import Enterprise, Item

__all__ = ["KIND_CUMULATIVE", "KIND_INSTANT", "KIND_INTERVAL", "Plant"]

KIND_CUMULATIVE, KIND_INTERVAL, KIND_INSTANT = 0, 1, 2
_KINDS = {"cumulative": KIND_CUMULATIVE, "interval": KIND_INTERVAL, "instant": KIND_INSTANT}

_AR_SIGMA = 0.08     # slow wandering of each consumer around its load shape (log scale)
_AR_TAU_S = 3600.0   # ... with a correlation time of about an hour
_WHITE_SIGMA = 0.03  # reading-to-reading jitter
_FLOW_SIGMA = 0.01   # an instant reading is not exactly the interval's average


class Plant:
    """The fleet's items as columns; ``consumption`` draws the next block of ticks."""

    def __init__(self, enterprises: Sequence[Enterprise], *, seed: int) -> None:
        items: list[Item] = []
        index: dict[tuple[str, str], int] = {}
        for e in enterprises:
            for g in e.gateways:
                for it in g.items:
                    index[(e.code, it.code)] = len(items)
                    items.append(it)
        owner = [e.code for e in enterprises for g in e.gateways for _ in g.items]
        self.items = items
        self.n = n = len(items)
        self.kind = np.array([_KINDS[i.kind] for i in items], np.int8)
        self.rate = np.array([i.rate for i in items], np.float64)
        self.profile = np.array([load.profile_index(i.profile) for i in items], np.intp)
        self.season = np.array([load.season_index(i.season) for i in items], np.intp)
        self.max = np.array([i.max for i in items], np.float64)
        parent = np.array([index[(o, i.parent)] if i.parent else -1 for o, i in zip(owner, items, strict=True)])
        self.source = np.array([index[(o, i.source)] if i.source else -1 for o, i in zip(owner, items, strict=True)])
        # Every (descendant, ancestor) pair: an ancestor's measurement includes the
        # descendant's own consumption.  Trees are at most four levels deep.
        desc, anc = [], []
        for j in range(n):
            a = parent[j]
            while a >= 0:
                desc.append(j)
                anc.append(a)
                a = parent[a]
        self._desc = np.array(desc, np.intp)
        self._anc = np.array(anc, np.intp)
        self._instant = np.flatnonzero(self.kind == KIND_INSTANT)
        self._ar = np.zeros(n)
        self._rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,)))

    def consumption(self, times: np.ndarray, interval_s: float) -> tuple[np.ndarray, np.ndarray]:
        """For the intervals ending at ``times`` (K Unix seconds): (consumption, flow), each of
        shape (K, n).  consumption is in each item's unit, children included; flow is the
        instant items' value (the source's average rate per hour, with a little jitter) and
        NaN elsewhere."""
        k = len(times)
        shape = load.shape(np.asarray(times, np.float64) - interval_s / 2, self.profile, self.season)
        phi = np.exp(-interval_s / _AR_TAU_S)
        step = _AR_SIGMA * np.sqrt(1 - phi * phi)
        noise = np.empty((k, self.n))
        eps = self._rng.standard_normal((k, self.n))
        ar = self._ar
        for r in range(k):  # AR(1) in time, vectorised over items
            ar = phi * ar + step * eps[r]
            noise[r] = ar
        self._ar = ar
        white = self._rng.standard_normal((k, self.n))
        factor = np.exp(noise - _AR_SIGMA**2 / 2) * np.clip(1 + _WHITE_SIGMA * white, 0.0, None)
        own = self.rate * shape * factor * (interval_s / 3600.0)
        total = own.copy()
        if len(self._desc):
            # numpy's stubs do not know ufunc.at takes a tuple index; it does.
            np.add.at(total, (slice(None), self._anc), own[:, self._desc])  # type: ignore[arg-type]
        flow = np.full((k, self.n), np.nan)
        if len(self._instant):
            src = self.source[self._instant]
            jitter = 1 + _FLOW_SIGMA * self._rng.standard_normal((k, len(self._instant)))
            flow[:, self._instant] = total[:, src] / (interval_s / 3600.0) * jitter
        return total, flow
