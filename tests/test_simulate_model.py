"""The simulator's model, without a broker: enterprises, items, load, meters, frames.

What goes over MQTT is tested against a real broker in test_simulate.py; here the pieces
are checked for what they claim (valid codes, consistent trees, limits, determinism).
"""

from __future__ import annotations

import math
import re

import numpy as np
import orjson
import pytest

from ingest.credit_code import is_valid
from ingest.items import parse_items_file
from tools.sim import (
    FaultSpec,
    Limits,
    Scenario,
    credit_code,
    invalid_credit_code,
    items_json,
    load,
    pilot_enterprises,
)
from tools.sim.catalog import REGIONS
from tools.sim.meters import Meters
from tools.sim.plant import KIND_CUMULATIVE, Plant

CODE = re.compile(r"^(\d{2})-(\d{2})-(\d{4})-(\d{2})(\d{4})-(\d{2})$")
START = 1_795_795_200  # 2026-11-28T00:00:00+08:00


def test_credit_codes_are_valid_gb32100_with_a_real_region() -> None:
    rng = np.random.default_rng(7)
    for _ in range(2000):
        region = str(rng.choice(list(REGIONS)))
        code = credit_code(rng, region)
        assert is_valid(code), code
        assert code[:2] == "91" and code[2:8] == region
        assert not is_valid(invalid_credit_code(rng, region))


def test_pilot_enterprises_look_like_a_provincial_pilot() -> None:
    fleet = pilot_enterprises(30, seed=3)
    assert len(fleet) == 30
    assert len({e.code for e in fleet}) == 30
    assert len({e.industry for e in fleet}) >= 10
    energies: set[str] = set()
    for e in fleet:
        assert is_valid(e.code) and e.code[2:8] in REGIONS
        assert 1e4 <= e.annual_tce <= 3e6
        codes = [i.code for i in e.items]
        assert len(codes) == len(set(codes)), "data codes are unique within an enterprise"
        assert 12 <= len(codes) <= 80
        for g in e.gateways:
            assert re.fullmatch(r"[A-Za-z0-9_-]{1,32}", g.id)
        for it in e.items:
            m = CODE.match(it.code)
            assert m, it.code
            proc, unit, equip, cls, energy, _usage = m.groups()
            assert energy == it.energy
            if it.scope == 1:  # the whole plant zeroes process, unit and equipment
                assert (proc, unit, equip) == ("00", "00", "0000")
            else:
                assert proc != "00"
            assert (it.scope == 3) <= (unit != "00") and (it.scope == 4) <= (equip != "0000")
            assert (cls == "03") == (it.kind == "instant")
            assert it.min <= it.max and it.multiplier >= 1
            assert (it.rollover is not None) == (it.kind == "cumulative")
            if it.kind == "cumulative":
                assert 0 <= it.start < it.rollover  # type: ignore[operator]
            energies.add(it.energy)
        scope1 = {i.energy for i in e.items if i.scope == 1 and i.kind == "cumulative"}
        assert {"3300", "9900"} <= scope1  # every plant buys electricity and water
        assert {i.energy for i in e.items} == scope1, "every energy has its whole-plant meter"
    assert {"3300", "1500", "3200", "0100", "9900"} <= energies
    kinds = {i.kind for e in fleet for i in e.items}
    assert kinds == {"cumulative", "interval", "instant"}
    assert any(i.multiplier >= 100 for e in fleet for i in e.items if i.energy == "3300")
    assert any(i.scope == s for e in fleet for i in e.items for s in (2, 3, 4))


def test_items_per_enterprise_can_be_fixed_for_load_tests() -> None:
    fleet = pilot_enterprises(40, seed=4, items=100)
    assert all(len(e.items) == 100 for e in fleet)
    assert all(len({i.code for i in e.items}) == 100 for e in fleet)


def test_items_file_is_what_nhjc_items_load_reads() -> None:
    fleet = pilot_enterprises(5, seed=5)
    specs = parse_items_file(items_json(fleet))
    assert len(specs) == sum(len(e.items) for e in fleet)
    by_key = {(s.enterprise, s.code): s for s in specs}
    for e in fleet:
        for it in e.items:
            s = by_key[(e.code, it.code)]
            assert (s.kind, s.energy, s.unit, s.scope) == (it.kind, it.energy, it.unit, it.scope)
            assert s.multiplier == it.multiplier and s.rollover == it.rollover
    water = [s for s in specs if s.energy == "9900"]
    steam = [s for s in specs if s.energy == "3200" and s.unit == "t"]
    assert water and all(s.coefficient is None for s in water)  # no kgce, not in totals
    assert all(s.coefficient == pytest.approx(128.4) for s in steam)


def test_same_seed_same_enterprises_other_seed_others() -> None:
    assert pilot_enterprises(10, seed=8) == pilot_enterprises(10, seed=8)
    assert {e.code for e in pilot_enterprises(10, seed=8)}.isdisjoint(
        {e.code for e in pilot_enterprises(10, seed=9)})


def test_load_shapes_average_one_and_follow_the_clock() -> None:
    week = START + 60 * np.arange(7 * 24 * 60)
    profiles = np.arange(len(load.PROFILES))
    flat = np.full(len(profiles), load.season_index("flat"))
    f = load.shape(week, profiles, flat)
    np.testing.assert_allclose(f.mean(axis=0), 1.0, atol=0.01)
    two = f[:, load.profile_index("two_shift")]
    local_hour = ((week + 8 * 3600) % 86400) // 3600
    assert two[local_hour == 3].mean() < 0.5 * two[local_hour == 10].mean()
    day = (week + 8 * 3600) // 86400
    sunday = (day + 3) % 7 == 6
    assert two[sunday].mean() < two[~sunday].mean()
    heating = load.shape(np.array([START - 330 * 86400, START - 150 * 86400]),
                         np.array([0]), np.array([load.season_index("heating")]))
    assert heating[0, 0] > heating[1, 0]  # January above June


def test_sub_meters_add_up_inside_their_parents() -> None:
    fleet = pilot_enterprises(8, seed=10)
    plant = Plant(fleet, seed=10)
    total, flow = plant.consumption(START + 60 * np.arange(1, 121), 60)
    assert (total >= 0).all()
    index = {}
    for e in fleet:
        for it in e.items:
            index[(e.code, it.code)] = len(index)
    children_sum = np.zeros_like(total)
    for e in fleet:
        for it in e.items:
            if it.parent:
                children_sum[:, index[(e.code, it.parent)]] += total[:, index[(e.code, it.code)]]
    parents = children_sum.any(axis=0)
    assert parents.sum() > 20
    # A parent measures its children plus its own unmetered residual.
    assert (total[:, parents] >= children_sum[:, parents] * (1 - 1e-9)).all()
    inst = np.array([it.kind == "instant" for e in fleet for it in e.items])
    assert np.isfinite(flow[:, inst]).all() and np.isnan(flow[:, ~inst]).all()


def test_registers_only_grow_except_at_the_wrap() -> None:
    fleet = pilot_enterprises(10, seed=11)
    plant = Plant(fleet, seed=11)
    meters = Meters(plant)
    times = START + 60 * np.arange(1, 24 * 60 + 1)
    total, flow = plant.consumption(times, 60)
    out = meters.read(total, flow)
    cum = plant.kind == KIND_CUMULATIVE
    v = out.values[:, cum]
    before = np.array([it.start for it in plant.items])[cum]
    steps = np.diff(np.vstack([before, v]), axis=0)
    downs = {(int(k), int(np.flatnonzero(cum)[j])) for k, j in zip(*np.nonzero(steps < 0), strict=True)}
    assert downs == set(out.rollovers)
    assert len(out.rollovers) >= 10  # some registers start close to the wrap on purpose
    mult = meters.multiplier[cum]
    rollover = meters.rollover[cum]
    # Wrapped consumption is recovered as R - previous + current (R: the rollover value).
    for k, i in out.rollovers:
        j = int(np.flatnonzero(np.flatnonzero(cum) == i)[0])
        prev = before[j] if k == 0 else v[k - 1, j]
        wrapped = rollover[j] - prev + v[k, j]
        assert 0 <= wrapped * mult[j] <= plant.max[i] / 60 + 1e-6 * rollover[j] * mult[j]


def _messages(**kw: object) -> list[tuple[str, bytes, bool]]:
    fleet = pilot_enterprises(4, seed=12)
    sc = Scenario(fleet, seed=12, start=START, duration_s=3 * 3600, backfill_s=2 * 3600,
                  **kw)  # type: ignore[arg-type]
    out = [(m.topic, m.payload, m.retain) for m in sc.opening()]
    for block in sc.blocks():
        out.extend((m.topic, m.payload, m.retain) for m in block)
    out.extend((m.topic, m.payload, m.retain) for m in sc.drain())
    return out


def test_scenario_is_deterministic() -> None:
    faults = FaultSpec.parse("all", 0.05)
    a = _messages(faults=faults)
    assert a == _messages(faults=faults)
    assert a != _messages(faults=FaultSpec.parse("all", 0.06))
    assert len(a) > 500


def test_frames_respect_the_limits_and_too_large_exceeds_only_them() -> None:
    fleet = pilot_enterprises(1, seed=13, items=600)
    limits = Limits(max_frame_bytes=16 * 1024, max_readings=150)
    sc = Scenario(fleet, seed=13, start=START, duration_s=600, backfill_s=3600,
                  faults=FaultSpec({"malformed": 0.5}), limits=limits)
    sizes, too_large = [], []
    for block in sc.blocks():
        for m in block:
            if ("too_large", 1) in m.quarantine:
                too_large.append(len(m.payload))
            elif "malformed" not in m.tags or m.quarantine[0][0] not in ("bad_json", "bad_shape", "bad_version"):
                frame = orjson.loads(m.payload.replace(b"NaN", b"0").replace(b"Infinity", b"0"))
                sizes.append((len(m.payload), len(frame["readings"])))
    assert sizes and all(b <= limits.max_frame_bytes and 1 <= n <= limits.max_readings for b, n in sizes)
    assert max(n for _, n in sizes) > 100  # backfill packs many ticks per frame
    assert too_large and all(limits.max_frame_bytes < b < 300_000 for b in too_large)


def test_fault_spec_parsing() -> None:
    spec = FaultSpec.parse("gaps, resets=0.5,late", 0.2)
    assert dict(spec.rates) == {"gaps": 0.2, "resets": 0.5, "late": 0.2}
    assert FaultSpec.parse("all").rate("foreign") > 0
    assert not FaultSpec.parse("") and not FaultSpec.parse(None)
    for bad in ("nonsense", "gaps=2", "gaps=x"):
        with pytest.raises(ValueError):
            FaultSpec.parse(bad)
    assert math.isclose(FaultSpec.parse("spikes").rate("spikes"), 0.001)


def test_clean_readings_stay_inside_their_items_plausible_ranges() -> None:
    """Without faults nothing should look like a spike or out of range to processing:
    per-hour consumption (multiplier applied) within max, instants within min..max."""
    fleet = pilot_enterprises(15, seed=14)
    plant = Plant(fleet, seed=14)
    meters = Meters(plant)
    cum = plant.kind == KIND_CUMULATIVE
    inst = np.array([it.kind == "instant" for it in plant.items])
    prev = np.array([it.start for it in plant.items])
    for day in range(3):
        times = START + day * 86400 + 60 * np.arange(1, 1441)
        total, flow = plant.consumption(times, 60)
        v = meters.read(total, flow).values
        step = np.diff(np.vstack([prev, v]), axis=0)
        prev = v[-1]
        step[:, cum] = np.where(step[:, cum] < 0, step[:, cum] + meters.rollover[cum], step[:, cum])
        per_hour = np.where(cum, step * meters.multiplier, v) * 60
        assert (per_hour[:, ~inst] <= plant.max[~inst]).all()
        assert (per_hour[:, ~inst] >= 0).all()
        assert ((v[:, inst] >= 0) & (v[:, inst] <= plant.max[inst])).all()
