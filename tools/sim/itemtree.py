"""The metering tree of a simulated enterprise: its data items, each a meter measuring
part of what its parent measures, with multipliers, ranges and mean rates sized from the
enterprise's consumption.  Built by :mod:`tools.sim.enterprises`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tools.sim import load
from tools.sim.catalog import (
    CLASS_CONSUMED,
    CLASS_INSTANT,
    CLASS_PLANT,
    ENERGIES,
    Energy,
    Industry,
)

__all__ = ["Item", "TreeBuilder", "item_of", "size"]

_CT_PRIMARY = (5, 10, 15, 20, 30, 40, 50, 75, 100, 150, 200, 300, 400, 500, 600, 800, 1000,
               1200, 1500, 2000, 2500, 3000, 4000, 5000, 6000)
_MAX_HEADROOM = 1.6  # max per hour = mean rate x peak of the load shape x this


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


class TreeBuilder:
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


def size(node: _Node, total: float, rng: np.random.Generator) -> None:
    """Split a node's mean consumption among its children, keeping an unmetered residual."""
    node.total = total
    metered = [c for c in node.children if c.kind != "instant"]
    if not metered:
        return
    residual = float(rng.uniform(0.05, 0.25))
    w = np.array([c.weight for c in metered]) * rng.gamma(4.0, 0.25, len(metered))
    for child, share in zip(metered, w / w.sum() * (1 - residual), strict=True):
        size(child, total * float(share), rng)


def _peak(node: _Node) -> float:
    """Largest shape factor found in the node's subtree (its own profile included)."""
    if node.peak == 0.0:
        own = load.peak_factor(node.profile, node.energy.season)
        node.peak = max([own, *(_peak(c) for c in node.children if c.kind != "instant")])
    return node.peak


def item_of(node: _Node, rng: np.random.Generator) -> Item:
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
