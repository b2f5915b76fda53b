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
from dataclasses import dataclass, field

import numpy as np
import orjson

from ingest.credit_code import ALPHABET, check_character
from tools.sim import load
from tools.sim.catalog import (
    CLASS_CONSUMED,
    CLASS_INSTANT,
    CLASS_PLANT,
    ENERGIES,
    INDUSTRIES,
    REGIONS,
    TRADE_NAMES,
    Energy,
    Industry,
)

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

_CT_PRIMARY = (5, 10, 15, 20, 30, 40, 50, 75, 100, 150, 200, 300, 400, 500, 600, 800, 1000,
               1200, 1500, 2000, 2500, 3000, 4000, 5000, 6000)
_MAX_HEADROOM = 1.6  # max per hour = mean rate x peak of the load shape x this
_GATEWAY_ITEMS = 500


@dataclass(frozen=True, slots=True)
class Item:
    """One data item: the fields a gateway's items message gives, then what the simulator needs to animate it."""

    code: str
    name: str
    energy: str
    unit: str
    kind: str  # cumulative | interval | instant
    multiplier: float
    rollover: float | None
    min: float
    max: float
    scope: int
    input_type: int
    coefficient: float | None
    # --- simulation only, never published ---
    rate: float = 0.0         # own mean consumption per hour, item unit (children add to it)
    parent: str | None = None  # code of the item whose measurement includes this one
    source: str | None = None  # instant items: code of the item whose flow they show
    profile: str = "continuous"
    season: str = "flat"
    start: float = 0.0        # register value at the first simulated instant
    decimals: int = 2         # digits after the point the meter shows

    def wire(self) -> dict[str, object]:
        """The item as a gateway's items message gives it (optional fields left out when unset)."""
        d: dict[str, object] = {
            "code": self.code, "name": self.name, "energy": self.energy, "unit": self.unit,
            "kind": self.kind, "multiplier": self.multiplier,
        }
        if self.rollover is not None:
            d["rollover"] = self.rollover
        d.update(min=self.min, max=self.max, scope=self.scope, input_type=self.input_type)
        if self.coefficient is not None:
            d["coefficient"] = self.coefficient
        return d


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


# ---------------------------------------------------------------- item tree

@dataclass(slots=True)
class _Node:
    code: str
    name: str
    energy: Energy
    scope: int
    group: int                       # process number (0 = whole plant): picks the gateway
    parent: _Node | None = None
    source: _Node | None = None      # instant items only
    profile: str = "continuous"
    kind: str = "cumulative"
    input_type: int = 4
    weight: float = 1.0              # relative size among siblings
    total: float = 0.0               # mean consumption per hour including children
    peak: float = 0.0                # largest load factor in its subtree (0: not yet known)
    children: list[_Node] = field(default_factory=list)


def _nice_ceil(x: float) -> float:
    """Round up to two significant digits: meters' ranges are round numbers."""
    if x <= 0:
        return 1.0
    step = 10.0 ** (math.floor(math.log10(x)) - 1)
    return round(math.ceil(x / step) * step, 6)


def _electric_multiplier(peak_kw: float, scope: int) -> float:
    """CT ratio x PT ratio of an electricity meter sized for peak_kw."""
    if scope == 1:
        kv, pt = (110.0, 1100) if peak_kw > 40_000 else (35.0, 350) if peak_kw > 8000 else (10.0, 100)
    elif peak_kw > 1500:
        kv, pt = 10.0, 100
    else:
        kv, pt = 0.4, 1
    amps = peak_kw / (math.sqrt(3) * kv * 0.9)
    if pt == 1 and amps <= 60:
        return 1.0  # small loads: a direct-connected meter
    primary = next((p for p in _CT_PRIMARY if p >= 1.25 * amps), _CT_PRIMARY[-1])
    return float(pt * primary // 5)


class _TreeBuilder:
    """Builds one enterprise's items in priority order, so a prefix is always consistent."""

    def __init__(self, rng: np.random.Generator, industry: Industry, elec_feeds: int) -> None:
        self.rng = rng
        self.industry = industry
        self.energies = [*industry.mix, "water"]
        self.codes: set[str] = set()
        self.roots: list[_Node] = []
        self.candidates: list[_Node] = []
        self._motors: dict[tuple[int, int], int] = {}
        self._build(elec_feeds)

    def _code(self, p: int, u: int, eq: str, cls: str, e: Energy, usage: int = 1) -> str:
        while usage <= 99:
            code = f"{p:02d}-{u:02d}-{eq}-{cls}{e.code}-{usage:02d}"
            if code not in self.codes:
                self.codes.add(code)
                return code
            usage += 1
        raise ValueError(f"more than 99 items at {p:02d}-{u:02d}-{eq}-{cls}{e.code}: ask for fewer items")

    def _node(self, code: str, name: str, e: Energy, scope: int, group: int,
              parent: _Node | None, profile: str, weight: float = 1.0) -> _Node:
        kind, input_type = "cumulative", 4
        if scope > 1 and e.key in ("coal", "coke") and self.rng.random() < 0.5:
            kind, input_type = "interval", 3   # belt scales read through the DCS
        elif scope > 1 and e.key == "steam" and self.rng.random() < 0.3:
            kind, input_type = "interval", 3
        elif scope > 1 and self.rng.random() < 0.2:
            input_type = 2                     # read through the production monitoring system
        return _Node(code, name, e, scope, group, parent, profile=profile, kind=kind,
                     input_type=input_type, weight=weight)

    def _instant(self, of: _Node) -> _Node:
        code = self._code(*self._parts(of.code), CLASS_INSTANT, of.energy)
        label = {"kW": "有功功率", "m3/h": "瞬时流量", "t/h": "瞬时流量"}[of.energy.flow_unit or ""]
        base = of.name.removesuffix(" 电能").removesuffix(" 用电")
        return _Node(code, f"{base} {label}", of.energy, of.scope, of.group,
                     source=of, kind="instant", input_type=int(self.rng.choice([2, 4])))

    @staticmethod
    def _parts(code: str) -> tuple[int, int, str]:
        p, u, eq, _, _ = code.split("-")
        return int(p), int(u), eq

    def _build(self, elec_feeds: int) -> None:
        ind, rng = self.industry, self.rng
        feeds: dict[str, list[_Node]] = {}
        for key in self.energies:
            e = ENERGIES[key]
            n = elec_feeds if key == "elec" else 1
            for i in range(1, n + 1):
                label = {"elec": f"{i}#进线 电能", "coal": "入厂原煤 皮带秤", "coke": "入炉焦炭 皮带秤",
                         "water": "新水总表"}.get(key, f"{e.name}总表")
                node = self._node(self._code(0, 0, "0000", CLASS_PLANT, e, i), f"全厂 {label}", e,
                                  1, 0, None, ind.profile, weight=1.0 if i == 1 else 0.8)
                self.roots.append(node)
                feeds.setdefault(key, []).append(node)

        level2, level3, level4, instants2 = [], [], [], []
        for p, proc in enumerate(ind.processes, start=1):
            profile = proc.profile or ind.profile
            by_energy: dict[str, _Node] = {}
            for key in proc.energies:
                if key not in feeds:
                    continue
                e = ENERGIES[key]
                parent = feeds[key][p % len(feeds[key])]
                label = "用电" if key == "elec" else e.name
                node = self._node(self._code(p, 0, "0000", CLASS_CONSUMED, e), f"{proc.name}工序 {label}",
                                  e, 2, p, parent, profile, weight=0.3 if proc.auxiliary else 1.0)
                by_energy[key] = node
                level2.append(node)
                if key in ("elec", "gas", "steam") and not proc.auxiliary:
                    instants2.append(node)
            unit_nodes: list[tuple[int, str, dict[str, _Node]]] = []
            for u, unit in enumerate(proc.units, start=1):
                office = proc.auxiliary and unit == "办公楼"
                mine: dict[str, _Node] = {}
                for key, parent in by_energy.items():
                    if key == "water" or (office and key != "elec"):
                        continue
                    e = ENERGIES[key]
                    label = "用电" if key == "elec" else e.name
                    node = self._node(self._code(p, u, "0000", CLASS_CONSUMED, e, 2 if office else 1),
                                      f"{unit} {label}", e, 3, p, parent,
                                      "office" if office else profile)
                    mine[key] = node
                    level3.append(node)
                unit_nodes.append((u, unit, mine))
            numbers: dict[str, int] = {}
            for u, unit, mine in unit_nodes or [(0, proc.name, {})]:
                for eq in proc.equipment:
                    feeder = mine.get(eq.energy) or by_energy.get(eq.energy)
                    if feeder is None:
                        continue
                    numbers[eq.type] = numbers.get(eq.type, 0) + 1
                    e = ENERGIES[eq.energy]
                    node = self._node(self._code(p, u, f"{eq.type}{numbers[eq.type]:02d}", CLASS_CONSUMED, e),
                                      f"{unit} {eq.name}", e, 4, p, feeder, profile,
                                      weight=float(rng.uniform(0.5, 2.0)))
                    level4.append(node)
        root_instants = [self._instant(r) for r in self.roots if r.energy.flow_unit]
        self.candidates = level2 + root_instants + level3 + level4 + [self._instant(n) for n in instants2]
        self._extra_parents = ([n for n in level3 + level2 if n.energy.key == "elec"]
                               or [r for r in self.roots if r.energy.key == "elec"])

    def select(self, n: int) -> list[_Node]:
        """The roots and the first n - len(roots) candidates; more motors when n asks for more."""
        chosen = self.roots + self.candidates[: max(0, n - len(self.roots))]
        k = 0
        while len(chosen) < n:
            # Big enterprises meter many more motors: add them under the process units.
            parent = self._extra_parents[k % len(self._extra_parents)]
            k += 1
            p, u, _ = self._parts(parent.code)
            number = self._motors[(p, u)] = self._motors.get((p, u), 0) % 99 + 1
            code = self._code(p, u, f"19{number:02d}", CLASS_CONSUMED, parent.energy)
            chosen.append(self._node(code, f"{parent.name.rsplit(' ', 1)[0]} {number}#电机",
                                     parent.energy, 4, parent.group, parent, parent.profile,
                                     weight=float(self.rng.uniform(0.2, 1.0))))
        for node in chosen:
            if node.parent is not None:
                node.parent.children.append(node)
        return chosen


def _size(node: _Node, total: float, rng: np.random.Generator) -> None:
    """Split a node's mean consumption among its children, keeping an unmetered residual."""
    node.total = total
    metered = [c for c in node.children if c.kind != "instant"]
    if not metered:
        return
    residual = float(rng.uniform(0.05, 0.25))
    w = np.array([c.weight for c in metered]) * rng.gamma(4.0, 0.25, len(metered))
    for child, share in zip(metered, w / w.sum() * (1 - residual), strict=True):
        _size(child, total * float(share), rng)


def _peak(node: _Node) -> float:
    """Largest shape factor found in the node's subtree (its own profile included)."""
    if node.peak == 0.0:
        own = load.peak_factor(node.profile, node.energy.season)
        node.peak = max([own, *(_peak(c) for c in node.children if c.kind != "instant")])
    return node.peak


def _item(node: _Node, rng: np.random.Generator) -> Item:
    e = node.energy
    if node.kind == "instant":
        src = node.source
        assert src is not None
        mx = _nice_ceil(src.total * _peak(src) * _MAX_HEADROOM)
        return Item(node.code, node.name, e.code, e.flow_unit or e.unit, "instant", 1.0, None,
                    0.0, mx, node.scope, node.input_type, e.coefficient, rate=0.0,
                    source=src.code, profile=src.profile, season=e.season, decimals=1)
    mx = _nice_ceil(node.total * _peak(node) * _MAX_HEADROOM)
    own = node.total - sum(c.total for c in node.children if c.kind != "instant")
    parent = node.parent.code if node.parent else None
    if node.kind == "interval":
        return Item(node.code, node.name, e.code, e.unit, "interval", 1.0, None, 0.0, mx,
                    node.scope, node.input_type, e.coefficient, rate=own, parent=parent,
                    profile=node.profile, season=e.season, decimals=2)
    mult = _electric_multiplier(node.total * _peak(node), node.scope) if e.key == "elec" else e.multiplier
    per_hour = node.total / mult  # register units per hour
    if rng.random() < 1 / 6:
        # Close to the wrap, so rollovers happen within the first simulated hours.
        start = max(0.0, e.rollover - per_hour * float(rng.uniform(0.1, 1.5)))
    else:
        start = e.rollover * float(rng.uniform(0.02, 0.95))
    # Behind a big CT/PT ratio one register step is a lot of energy: read through the
    # gateway's protocol the register has more decimals than the display, enough that a
    # minute's consumption is ten steps or more (else minute readings would jump in steps
    # that look like spikes).
    decimals = int(min(4, max(e.decimals, math.ceil(math.log10(600 * mult / max(node.total, 1e-9))))))
    scale = 10.0 ** decimals
    return Item(node.code, node.name, e.code, e.unit, "cumulative", mult, e.rollover, 0.0, mx,
                node.scope, node.input_type, e.coefficient, rate=own, parent=parent,
                profile=node.profile, season=e.season, start=math.floor(start * scale) / scale,
                decimals=decimals)


def _enterprise(rng: np.random.Generator, industry: Industry, code: str, name: str, region: str,
                n_items: int | None) -> Enterprise:
    lo, hi = industry.tce
    tce = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    if n_items is None:
        n_items = int(np.clip(rng.normal(15 + 15 * math.log10(tce / 1e4), 4), 12, 80))
    builder = _TreeBuilder(rng, industry, elec_feeds=2 if tce > 1e5 else 1)
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
            _size(root, total * float(share), rng)

    n_gw = max(1, min(16, math.ceil(len(nodes) / 40)))
    groups: dict[int, list[Item]] = {}
    for node in nodes:
        groups.setdefault(node.group % n_gw, []).append(_item(node, rng))
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

