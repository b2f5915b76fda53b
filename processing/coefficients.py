"""Default standard-coal coefficients (kgce per unit) by energy-kind code.

GB/T 2589-2020 Appendix A, the commonly cited values.  Defaults only: an item's own
``coefficient`` wins.  An energy kind not listed here and an item without a coefficient
has no kgce (it is not counted in the enterprise total).
"""

from __future__ import annotations

__all__ = ["DEFAULT_COEFFICIENTS", "coefficient_for"]

DEFAULT_COEFFICIENTS: dict[str, float] = {
    "0100": 0.7143,  # raw coal, kg
    "0600": 0.9000,  # cleaned coal, kg
    "0900": 0.9714,  # coke, kg
    "1100": 0.5714,  # coke-oven gas, m3 (the standard gives 0.5714-0.6143)
    "1200": 0.1286,  # blast-furnace gas, m3
    "1500": 1.2143,  # natural gas, m3 (1.1000-1.3300 by source)
    "1800": 1.4286,  # crude oil, kg
    "1900": 1.4714,  # gasoline, kg
    "2000": 1.4714,  # kerosene, kg
    "2100": 1.4571,  # diesel, kg
    "2200": 1.4286,  # fuel oil, kg
    "2300": 1.7143,  # LPG, kg
    "3200": 0.03412,  # heat, MJ
    "3300": 0.1229,  # electricity (equivalent value), kWh
}


def coefficient_for(energy: str, override: float | None) -> float | None:
    """The item's kgce per unit: its override, else the default for its energy kind."""
    if override is not None:
        return float(override)
    return DEFAULT_COEFFICIENTS.get(energy)
