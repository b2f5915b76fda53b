"""Simulated pilot enterprises: credit codes, gateways and their data items.

An enterprise is drawn from an industry of :mod:`tools.sim.catalog`: an annual consumption
(10^4 to 10^6 tce, like the key energy-consuming units of a provincial pilot), the whole-plant
meters of each energy it buys (scope 1), and sub-meters of its processes (scope 2), process
units (scope 3) and key equipment (scope 4), plus instant items (kW, m3/h, t/h) on the main
feeds.  The items form a tree: every sub-meter measures part of what its parent measures, and
the simulator adds consumption up that tree so sub-meters and totals agree the way a real
plant's do (parents also carry an unmetered residual).

Everything is drawn from one seeded generator: the same seed gives the same enterprises.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import orjson

from ingest.credit_code import ALPHABET, check_character
from tools.sim.catalog import (
    ENERGIES,
    INDUSTRIES,
    REGIONS,
    TRADE_NAMES,
    Industry,
)
from tools.sim.itemtree import Item, TreeBuilder, item_of, size

__all__ = [
    "TS_STYLES",
    "Enterprise",
    "Gateway",
    "Item",
    "credit_code",
    "invalid_credit_code",
    "items_json",
    "items_payload",
    "items_records",
    "pilot_enterprises",
]

# How a gateway writes timestamps: RFC 3339 with +08:00, Unix seconds, or both (a gateway
# merging two collectors' data, which happens).
TS_STYLES = ("rfc3339", "unix", "mixed")

_GATEWAY_ITEMS = 500


@dataclass(frozen=True, slots=True)
class Gateway:
    id: str
    ts_style: str
    items: tuple[Item, ...]


@dataclass(frozen=True, slots=True)
class Enterprise:
    code: str
    name: str
    region: str
    industry: str
    annual_tce: float
    gateways: tuple[Gateway, ...]

    @property
    def items(self) -> tuple[Item, ...]:
        return tuple(i for g in self.gateways for i in g.items)


# ---------------------------------------------------------------- credit codes (GB 32100)

_ORG_CHARS = tuple(ALPHABET)


def _org_check(body: str) -> str:
    """GB 11714 check character of an 8-character organisation code body."""
    total = sum((int(c) if c.isdigit() else ord(c) - 55) * w
                for c, w in zip(body, (3, 7, 9, 10, 5, 8, 4, 2), strict=True))
    c = 11 - total % 11
    return "X" if c == 10 else "0" if c == 11 else str(c)


def credit_code(rng: np.random.Generator, region: str) -> str:
    """A valid unified social credit code of an enterprise (登记管理部门 9, 类别 1) in region."""
    if rng.random() < 0.6:  # registered since 2015: the organisation code starts with MA
        body = "MA" + "".join(rng.choice(_ORG_CHARS, 6))
    else:
        body = "".join(str(d) for d in rng.integers(0, 10, 8))
    first17 = "91" + region + body + _org_check(body)
    return first17 + check_character(first17)


def invalid_credit_code(rng: np.random.Generator, region: str) -> str:
    """Looks like a credit code but its check character is wrong (fails GB 32100)."""
    good = credit_code(rng, region)
    wrong = [c for c in ALPHABET if c != good[-1]]
    return good[:-1] + wrong[int(rng.integers(len(wrong)))]


def _enterprise(rng: np.random.Generator, industry: Industry, code: str, name: str, region: str,
                n_items: int | None) -> Enterprise:
    lo, hi = industry.tce
    tce = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    if n_items is None:
        n_items = int(np.clip(rng.normal(15 + 15 * math.log10(tce / 1e4), 4), 12, 80))
    builder = TreeBuilder(rng, industry, elec_feeds=2 if tce > 1e5 else 1)
    nodes = builder.select(n_items)
    kgce_per_h = tce * 1000 / 8760
    feeds = builder.roots
    for key in builder.energies:
        e = ENERGIES[key]
        total = (tce * industry.water_per_tce / 8760 if key == "water"
                 else kgce_per_h * industry.mix[key] / e.kgce)
        mine = [r for r in feeds if r.energy.key == key]
        weights = np.array([r.weight for r in mine])
        for root, share in zip(mine, weights / weights.sum(), strict=True):
            size(root, total * float(share), rng)

    n_gw = max(1, min(16, math.ceil(len(nodes) / 40)))
    groups: dict[int, list[Item]] = {}
    for node in nodes:
        groups.setdefault(node.group % n_gw, []).append(item_of(node, rng))
    # A gateway serves at most _GATEWAY_ITEMS items, which keeps its retained items
    # message well under the broker's message size limit.
    chunks = [groups[g][i:i + _GATEWAY_ITEMS] for g in sorted(groups)
              for i in range(0, len(groups[g]), _GATEWAY_ITEMS)]
    gateways = tuple(
        Gateway(f"gw{k + 1:02d}", str(rng.choice(TS_STYLES, p=[0.6, 0.25, 0.15])), tuple(items))
        for k, items in enumerate(chunks)
    )
    return Enterprise(code, name, region, industry.key, round(tce, 1), gateways)


def pilot_enterprises(count: int = 30, *, seed: int = 0, items: int | None = None) -> tuple[Enterprise, ...]:
    """``count`` enterprises of a provincial pilot, the same for the same seed.

    ``items``: items per enterprise (exactly); None draws tens of them by the plant's size.
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    if items is not None and items < 8:
        raise ValueError("items must be at least 8 (the whole-plant meters alone need up to 8)")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    order = rng.permutation(len(INDUSTRIES))
    trades = rng.permutation(len(TRADE_NAMES))
    seen_codes: set[str] = set()
    seen_names: set[str] = set()
    out = []
    for k in range(count):
        industry = INDUSTRIES[order[k % len(order)]]
        region = str(rng.choice(industry.regions))
        code = credit_code(rng, region)
        while code in seen_codes:
            code = credit_code(rng, region)
        seen_codes.add(code)
        name = f"{REGIONS[region]}{TRADE_NAMES[trades[k % len(trades)]]}{industry.suffix}"
        if name in seen_names:
            name = f"{name}（{k + 1}）"
        seen_names.add(name)
        out.append(_enterprise(rng, industry, code, name, region, items))
    return tuple(out)


# ---------------------------------------------------------------- items documents

def items_payload(gateway: Gateway) -> bytes:
    """The retained ``.../items`` message of one gateway."""
    return orjson.dumps({"v": 1, "items": [i.wire() for i in gateway.items]})


def items_records(enterprises: Iterable[Enterprise]) -> list[dict[str, object]]:
    """Items in the ``nhjc items load FILE`` format: item objects, each with its enterprise."""
    return [{"enterprise": e.code, **i.wire()} for e in enterprises for i in e.items]


def items_json(enterprises: Sequence[Enterprise]) -> str:
    """The ``nhjc items load FILE`` document as text (UTF-8, Chinese names unescaped)."""
    return orjson.dumps(items_records(enterprises), option=orjson.OPT_INDENT_2).decode() + "\n"

