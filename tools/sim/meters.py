"""What the meters show: cumulative registers (multiplier, rollover), interval and instant
values, with the register faults (resets, spikes) applied where the scenario asks.

A register holds consumption divided by its multiplier (CT/PT or pulse ratio) and wraps at
its rollover value, so a reading r after a wrap relates to the one before, p, as
consumption = R - p + r, R being the rollover value.  Registers show a fixed number of decimals and are
floored, as meter displays are, so they never go down between two readings except at a wrap
or a reset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tools.sim.plant import KIND_CUMULATIVE, KIND_INSTANT, KIND_INTERVAL, Plant

__all__ = ["Meters", "Readout"]


@dataclass(frozen=True, slots=True)
class Readout:
    values: np.ndarray                      # (K, n) what each meter shows at each tick
    rollovers: list[tuple[int, int]]        # (tick, item) where a register wrapped
    resets: list[tuple[int, int]]           # applied resets
    spikes: list[tuple[int, int]]           # applied spikes
    # applied meter replacements: (tick, item, the old register's final value)
    replacements: list[tuple[int, int, float]] = field(default_factory=list)


class Meters:
    def __init__(self, plant: Plant) -> None:
        self.plant = plant
        items = plant.items
        self.multiplier = np.array([i.multiplier for i in items], np.float64)
        self.rollover = np.array([i.rollover or np.inf for i in items], np.float64)
        self.scale = 10.0 ** np.array([i.decimals for i in items], np.float64)
        self.register = np.array([i.start for i in items], np.float64)
        self._cum = plant.kind == KIND_CUMULATIVE

    def read(self, total: np.ndarray, flow: np.ndarray, *,
             resets: Sequence[tuple[int, int, float]] = (),
             spikes: Sequence[tuple[int, int, float]] = (),
             replacements: Sequence[tuple[int, int, float, float]] = ()) -> Readout:
        """Advance by a block of ticks.  ``resets``: (tick, item, value the new register
        starts at); ``spikes``: (tick, item, size in multiples of the item's max);
        ``replacements``: (tick, item, share of the interval before the tick that has
        passed at the replacement, the new register's initial value): a recorded meter
        replacement, whose old final value is returned."""
        kind = self.plant.kind
        path = self.register + np.cumsum(total / self.multiplier, axis=0)
        done_replacements = []
        for k, i, frac, start in replacements:
            if kind[i] != KIND_CUMULATIVE:
                continue
            prev = path[k - 1, i] if k else self.register[i]
            # The old register at the replacement, as its display showed it (floored):
            # the new register takes on from there, so no consumption is made or lost.
            at = prev + frac * (path[k, i] - prev)
            final = np.floor(at * self.scale[i] + 1e-6) / self.scale[i]
            path[k:, i] += start - final
            done_replacements.append((k, i, float(np.fmod(final, self.rollover[i]))))
        values = np.where(kind == KIND_INSTANT, flow, total)
        done_resets, done_spikes = [], []
        for k, i, start in resets:
            shown = np.fmod(path[k, i], self.rollover[i])
            # Only a register that has counted something can drop; and just below the wrap,
            # a drop to zero would be a rollover, not a reset.
            floor = 0.01 * self.rollover[i] if np.isfinite(self.rollover[i]) else 100.0
            if kind[i] != KIND_CUMULATIVE or not floor < shown < 0.9 * self.rollover[i]:
                continue
            path[k:, i] += start - path[k, i]  # a new meter: the register starts again
            done_resets.append((k, i))
        for k, i, size in spikes:
            jump = size * self.plant.max[i]
            if kind[i] == KIND_CUMULATIVE:
                # A step: the register jumps and carries on from there.  Never across the
                # wrap, or the spike would look like a (plausible-sized) rollover or a reset.
                jump /= self.multiplier[i]
                if np.fmod(path[k, i], self.rollover[i]) + jump >= 0.999 * self.rollover[i]:
                    continue
                path[k:, i] += jump
            else:
                values[k, i] = jump  # one implausible reading, then back to normal
            done_spikes.append((k, i))
        cum = self._cum
        wraps = np.floor(path[:, cum] / self.rollover[cum])
        before = np.floor(self.register[cum] / self.rollover[cum])
        steps = np.diff(np.vstack([before, wraps]), axis=0)
        cols = np.flatnonzero(cum)
        rollovers = [(int(k), int(cols[j])) for k, j in zip(*np.nonzero(steps > 0), strict=True)]
        shown = np.fmod(path, self.rollover)
        values[:, cum] = shown[:, cum]
        self.register = np.where(cum, shown[-1], self.register)
        # Registers are floored (a display shows completed units); the tiny epsilon keeps
        # 0.29 * 100 = 28.999... from showing 0.28.  Other values are rounded.
        floored = np.floor(values * self.scale + 1e-6) / self.scale
        rounded = np.round(values * self.scale) / self.scale
        values = np.where(cum, floored, rounded)
        values[:, kind == KIND_INTERVAL] = np.maximum(values[:, kind == KIND_INTERVAL], 0.0)
        return Readout(values, rollovers, done_resets, done_spikes, done_replacements)
