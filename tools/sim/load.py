"""Daily, weekly and seasonal load shapes, evaluated for many times at once.

A profile is 24 hourly factors plus 7 weekday factors, normalised so that its average over a
week is 1: an item's ``rate`` is then its mean consumption per hour and the shape only moves
it around in time.  Times are Unix seconds; shapes follow China Standard Time (UTC+08:00, no
daylight saving), where all simulated enterprises are.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = [
    "PROFILES", "SEASONS", "UTC_OFFSET_S", "peak_factor", "profile_index", "season_index", "shape",
]

UTC_OFFSET_S = 8 * 3600

_HOURLY: dict[str, list[float]] = {
    # Continuous process plants (kilns, furnaces, electrolysis): flat with a small daily swing.
    "continuous": [0.97, 0.96, 0.96, 0.95, 0.95, 0.96, 0.98, 1.0, 1.02, 1.03, 1.03, 1.02,
                   1.01, 1.02, 1.03, 1.03, 1.02, 1.01, 1.0, 1.0, 0.99, 0.99, 0.98, 0.97],
    # Mills and electric furnaces that follow the time-of-use tariff: most work in the
    # valley (23:00-07:00), least in the peaks (08:00-11:00 and 18:00-23:00).
    "tou": [1.3, 1.3, 1.3, 1.3, 1.3, 1.3, 1.3, 1.0, 0.7, 0.7, 0.7, 1.0,
            1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.7, 0.7, 0.7, 0.7, 0.7, 1.3],
    # Two shifts, 08:00-24:00, with a dip at lunch and at the shift change.
    "two_shift": [0.35, 0.3, 0.3, 0.3, 0.3, 0.3, 0.4, 0.7, 1.15, 1.15, 1.15, 1.1,
                  0.9, 1.15, 1.15, 1.15, 1.0, 1.1, 1.1, 1.1, 1.1, 1.05, 0.9, 0.5],
    # One day shift.
    "day_shift": [0.15, 0.15, 0.15, 0.15, 0.15, 0.15, 0.2, 0.5, 1.3, 1.3, 1.3, 1.2,
                  0.7, 1.3, 1.3, 1.3, 1.2, 0.8, 0.4, 0.25, 0.2, 0.2, 0.15, 0.15],
    # Offices, canteens, lighting: the non-production part of the utilities.
    "office": [0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.3, 0.7, 1.0, 1.0, 1.0, 1.0,
               0.8, 1.0, 1.0, 1.0, 1.0, 0.9, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2],
}
_WEEKLY: dict[str, list[float]] = {  # Monday first
    "continuous": [1.0] * 7,
    "tou": [1.0] * 7,
    "two_shift": [1.05, 1.05, 1.05, 1.05, 1.05, 0.9, 0.6],
    "day_shift": [1.0, 1.0, 1.0, 1.0, 1.0, 0.45, 0.2],
    "office": [1.0, 1.0, 1.0, 1.0, 1.0, 0.4, 0.3],
}
PROFILES: tuple[str, ...] = tuple(_HOURLY)

# (amplitude, day of year of the maximum) of a yearly cosine.
_SEASONAL: dict[str, tuple[float, float]] = {
    "flat": (0.0, 0.0),
    "heating": (0.25, 15.0),   # most in mid-January
    "cooling": (0.06, 200.0),  # a little more in July (air conditioning, cooling water)
}
SEASONS: tuple[str, ...] = tuple(_SEASONAL)


def _normalised() -> tuple[np.ndarray, np.ndarray]:
    hourly = np.array([_HOURLY[p] for p in PROFILES])
    weekly = np.array([_WEEKLY[p] for p in PROFILES])
    # Mean over a week of hourly x weekly is mean(hourly) x mean(weekly): divide both.
    hourly /= hourly.mean(axis=1, keepdims=True)
    weekly /= weekly.mean(axis=1, keepdims=True)
    return hourly, weekly


_H, _W = _normalised()


def profile_index(name: str) -> int:
    return PROFILES.index(name)


def season_index(name: str) -> int:
    return SEASONS.index(name)


def shape(times: np.ndarray, profiles: np.ndarray, seasons: np.ndarray) -> np.ndarray:
    """Load factors, shape (len(times), len(profiles)), for items with the given profile and
    season indices at the given Unix times (the mid-points of the intervals, preferably)."""
    local = np.asarray(times, dtype=np.float64) + UTC_OFFSET_S
    hour = (local % 86400.0) / 3600.0
    day = np.floor(local / 86400.0)
    weekday = ((day + 3) % 7).astype(np.intp)  # 1970-01-01 was a Thursday
    # Hourly factors hold for the middle of each hour; interpolate between them, wrapping
    # around midnight, so the shape has no steps.
    x = hour - 0.5
    lo = np.floor(x).astype(np.intp) % 24
    hi = (lo + 1) % 24
    frac = x - np.floor(x)
    daily = _H[:, lo] * (1 - frac) + _H[:, hi] * frac         # (P, K)
    by_profile = daily * _W[:, weekday]                       # (P, K)
    doy = day % 365.2425  # day 0 was 1 January; drifts under a day, plenty for a season
    amp = np.array([_SEASONAL[s][0] for s in SEASONS])[:, None]
    peak = np.array([_SEASONAL[s][1] for s in SEASONS])[:, None]
    seasonal = 1.0 + amp * np.cos(2 * np.pi * (doy[None, :] - peak) / 365.25)  # (S, K)
    factors: np.ndarray = (by_profile[profiles] * seasonal[seasons]).T
    return factors


@functools.cache
def peak_factor(profile: str, season: str) -> float:
    """The largest factor ``shape`` can give for this profile and season (before noise)."""
    i = profile_index(profile)
    return float(_H[i].max() * _W[i].max() * (1.0 + _SEASONAL[season][0]))
