"""The simulated enterprises' instruments: the file the loader reads, the few out of
verification, and a replacement the simulated register really goes through (from the
old final value to the new initial one, with no consumption made or lost)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import asyncpg
import orjson
import pytest

from ingest.meters import parse_meters_file_bytes
from nhjc.cli import main as cli_main
from nhjc.demo_meters import Instruments, replacement_time
from tools.sim import Scenario, pilot_enterprises
from tools.sim.instruments import (
    OUT_OF_DATE,
    AppliedReplacement,
    instruments_json,
    instruments_records,
    plan_replacement,
    replacement_record,
    serial,
)

START = 1_795_795_200  # 2026-11-28T00:00:00+08:00
TODAY = dt.date(2026, 11, 28)


def test_every_item_has_an_instrument_and_a_few_are_out_of_verification() -> None:
    fleet = pilot_enterprises(8, seed=3)
    records = instruments_records(fleet, today=TODAY, seed=3)
    specs = parse_meters_file_bytes(instruments_json(fleet, today=TODAY, seed=3).encode())
    assert len(specs) == len(records) == sum(len(e.items) for e in fleet)
    assert {(s.enterprise, s.codes()[0]) for s in specs} == {(e.code, i.code) for e in fleet for i in e.items}
    assert len({(s.enterprise, s.serNo) for s in specs}) == len(specs)
    expired = [s for s in specs if s.alignState != "none" and s.nextAlignDate is not None and s.nextAlignDate < TODAY]
    never = [s for s in specs if s.alignState == "none"]
    due = [s for s in specs if s.nextAlignDate is not None and TODAY <= s.nextAlignDate <= TODAY + dt.timedelta(days=30)]
    assert len(expired) == OUT_OF_DATE and len({s.enterprise for s in expired}) == OUT_OF_DATE
    assert len(never) == 1 and len(due) >= 1
    assert all(s.meterLevel in (2, 3) for s in expired + never)  # sub-meters: the plant's totals stay valid
    for s in specs:
        if s.alignState != "none":
            assert s.lastAlignDate is not None and s.nextAlignDate is not None
            assert s.lastAlignDate <= TODAY  # verified in the past
    assert records == instruments_records(fleet, today=TODAY, seed=3)  # same seed, same file


def _values(sc: Scenario, enterprise: str, code: str) -> list[tuple[int, float]]:
    out = []
    for block in sc.blocks():
        for m in block:
            if m.kind == "readings" and f"/{enterprise}/" in m.topic:
                for r in orjson.loads(m.payload)["readings"]:
                    if r["code"] == code:
                        ts = r["ts"]
                        t = ts if isinstance(ts, int) else int(dt.datetime.fromisoformat(ts).timestamp())
                        out.append((t, float(r["value"])))
    return sorted(set(out))


@pytest.mark.parametrize("backfill_s", [0.0, 3 * 3600.0], ids=["live", "backfill"])
def test_the_simulated_register_jumps_at_the_replacement_and_keeps_the_energy(backfill_s: float) -> None:
    fleet = pilot_enterprises(2, seed=5)
    at = START + 3600 + 30  # between two ticks
    plan = plan_replacement(fleet, at)
    assert plan is not None and plan.code.startswith("00-00-0000-013300")
    kw = dict(seed=5, start=START + int(backfill_s), duration_s=7200.0 - backfill_s, backfill_s=backfill_s)
    with_it = Scenario(fleet, replacement=plan, **kw)  # type: ignore[arg-type]
    values = _values(with_it, plan.enterprise, plan.code)
    plain = dict(_values(Scenario(fleet, **kw), plan.enterprise, plan.code))  # type: ignore[arg-type]
    [done] = with_it.replacements
    assert (done.enterprise, done.code, done.at, done.new_initial) == (plan.enterprise, plan.code, at, 0.0)
    a = max(v for v in values if v[0] < at)
    b = min(v for v in values if v[0] > at)
    assert b[0] - a[0] == 60
    assert a[1] == plain[a[0]] and a[1] <= done.old_final <= plain[b[0]]  # the old meter ran on to T
    assert b[1] < 10  # the new register started at 0
    # the rule: (old final - a) + (b - new initial) is what the meter measured over [a, b]
    assert (done.old_final - a[1]) + (b[1] - done.new_initial) == pytest.approx(plain[b[0]] - a[1], abs=0.011)
    # afterwards it counts on from the new register: the same steps as without it
    later = [t for t, _ in values if t > b[0]]
    d = dict(values)
    for t in later[:30]:
        assert d[t] - d[t - 60] == pytest.approx(plain[t] - plain[t - 60], abs=0.011)
    assert [(e.code, e.ts) for e in with_it.events if e.kind == "replacement"] == [(plan.code, b[0])]
    # ... and the instruments file records it for the loader
    records = instruments_records(fleet, today=TODAY, seed=5)
    new = parse_meters_file_bytes(orjson.dumps([replacement_record(records, done)]))[0]
    assert new.replaces is not None
    assert new.replaces.time.timestamp() == at and new.replaces.oldFinal == done.old_final
    assert new.replaces.serNo != new.serNo and new.codes() == [plan.code]


def test_a_replacement_outside_the_run_is_not_done() -> None:
    fleet = pilot_enterprises(1, seed=5)
    plan = plan_replacement(fleet, START - 3600)
    sc = Scenario(fleet, seed=5, start=START, duration_s=600, replacement=plan)
    for _ in sc.blocks():
        pass
    assert sc.replacements == [] and isinstance(plan, object)
    assert AppliedReplacement("e", "c", 1, 2.0, 0.0).old_final == 2.0


class _Sim:
    """What the demo reads of its simulator: the replacements done so far."""

    def __init__(self) -> None:
        self.replacements: list[AppliedReplacement] = []


async def test_the_demo_loads_the_instruments_and_records_the_replacement_once_done(db: str) -> None:
    fleet = pilot_enterprises(4, seed=7)
    at = replacement_time(START, 6 * 3600)
    assert at == START + 7200 + 30
    instruments = Instruments(instruments_records(fleet, today=TODAY, seed=7), fleet, at)
    assert instruments.plan is not None
    pool = await asyncpg.create_pool(db, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            assert await instruments.load(conn) == sum(len(e.items) for e in fleet)
        sim = _Sim()
        await instruments.record_replacements(pool, sim)  # type: ignore[arg-type]
        assert await pool.fetchval("SELECT count(*) FROM meter_replacements") == 0
        sim.replacements.append(AppliedReplacement(instruments.plan.enterprise, instruments.plan.code, at,
                                                   705051.49, 0.0))
        await instruments.record_replacements(pool, sim)  # type: ignore[arg-type]
        await instruments.record_replacements(pool, sim)  # type: ignore[arg-type]  # once only
        rows = await pool.fetch("SELECT enterprise, code, replaced_at, old_final, new_initial, old_ser_no, new_ser_no"
                                " FROM meter_replacements")
        old, new = serial(instruments.plan.enterprise, instruments.plan.code), \
            serial(instruments.plan.enterprise, instruments.plan.code, 1)
        assert [tuple(r) for r in rows] == [(instruments.plan.enterprise, instruments.plan.code,
                                             dt.datetime.fromtimestamp(at, dt.UTC), 705051.49, 0.0, old, new)]
        retired = await pool.fetchval("SELECT retired_at FROM meters WHERE ser_no = $1", old)
        assert retired == dt.datetime.fromtimestamp(at, dt.UTC)
    finally:
        await pool.close()


def test_simulate_writes_the_instruments_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "instruments.json"
    assert cli_main(["simulate", "--enterprises", "3", "--seed", "107", "--write-instruments", str(path)]) == 0
    specs = parse_meters_file_bytes(path.read_bytes())
    fleet = pilot_enterprises(3, seed=107)
    assert len(specs) == sum(len(e.items) for e in fleet)
    assert f"wrote {len(specs)} instruments of 3 enterprises" in capsys.readouterr().out
