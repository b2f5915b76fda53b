"""`nhjc meters report`: GB 17167 at a glance, hand-checked on a real database, in each
format (each parses)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import psycopg

from nhjc.meters_report import load_table
from tests.test_meters import meter, nhjc, write
from tools.gateway import enterprise_code

A, B = enterprise_code(61), enterprise_code(62)
ELEC, ELEC2 = "01-00-0000-023300-01", "01-00-0000-023300-02"
GAS, DIESEL = "00-00-0000-011500-01", "00-00-0000-012100-01"
TODAY = "2026-12-07"


def setup(dsn: str, tmp_path: Path) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for ent, code, energy in ((A, ELEC, "3300"), (A, ELEC2, "3300"), (A, GAS, "1500"), (A, DIESEL, "2100"),
                                  (B, ELEC, "3300")):
            conn.execute("INSERT INTO items (enterprise, code, energy, unit, kind, source)"
                         " VALUES (%s, %s, %s, 'x', 'cumulative', 'test')", (ent, code, energy))
    v = {"alignState": "verified", "alignCycle": None}
    entries = [
        meter("E1", enterprise=A, dataCode=ELEC, precisionLevel="1.0", lastAlignDate="2026-01-01",
              nextAlignDate="2026-12-20", **v),
        meter("G1", enterprise=A, dataCode=GAS, precisionLevel="2.0", lastAlignDate="2025-01-01",
              nextAlignDate="2025-12-31", **v),
        meter("D1", enterprise=A, dataCode=DIESEL, precisionLevel="", lastAlignDate="2026-06-01",
              nextAlignDate="2027-05-31", **v),
        meter("S2", enterprise=A, dataCode=ELEC, meterLevel=2, precisionLevel="2.0", alignState="none"),
        meter("R1", enterprise=A, dataCode=ELEC2, retiredAt="2026-01-01T00:00:00+08:00"),
    ]
    r = nhjc(dsn, "meters", "load", str(write(tmp_path / "m.json", entries)))
    assert r.returncode == 0, r.stderr


def report(dsn: str, *args: str) -> str:
    r = nhjc(dsn, "meters", "report", "--today", TODAY, *args)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_the_report_by_hand(db: str, tmp_path: Path) -> None:
    setup(db, tmp_path)
    doc: list[dict[str, Any]] = json.loads(report(db, "--format", "json"))
    assert [d["enterprise"] for d in doc] == sorted([A, B])
    a = next(d for d in doc if d["enterprise"] == A)
    b = next(d for d in doc if d["enterprise"] == B)
    assert (a["items"], a["instruments"], a["in_verification"]) == (4, 4, 2)  # R1 retired: not in use
    assert [x["code"] for x in a["no_instrument"]] == [ELEC2]
    # Level 1: electricity asks 0.5S (E1 has 1.0), diesel 0.5 (D1 gives no class); gas 2.0 (G1
    # has it).  S2 is level 2: the table is held to level 1 only.
    assert [(x["serNo"], x["precisionLevel"], x["required"]) for x in a["below_class"]] == [
        ("D1", "", "0.5"), ("E1", "1.0", "0.5S")]
    assert [(x["serNo"], x["detail"]) for x in a["out_of_verification"]] == [
        ("G1", f"no verification period holds {TODAY}"), ("S2", "not verified or calibrated")]
    assert [(x["serNo"], x["nextAlignDate"], x["detail"]) for x in a["due_soon"]] == [
        ("E1", "2026-12-20", "13 day(s) left")]
    assert (b["items"], b["instruments"], [x["code"] for x in b["no_instrument"]]) == (1, 0, [ELEC])

    rows = list(csv.DictReader(io.StringIO(report(db, "--format", "csv", "--enterprise", A))))
    assert sorted((r["finding"], r["serNo"] or r["code"]) for r in rows) == sorted([
        ("no_instrument", ELEC2), ("below_class", "D1"), ("below_class", "E1"),
        ("out_of_verification", "G1"), ("out_of_verification", "S2"), ("due_soon", "E1")])
    assert {r["enterprise"] for r in rows} == {A}

    table = report(db, "--enterprise", A)
    assert table.splitlines()[0] == f"{A}: 4 item(s), 4 instrument(s) in use, 2 in verification"
    assert "  due within 30 days (1):" in table and "E1" in table and B not in table

    # "today" is the one given: a week on, E1 is due in 6 days.
    later = nhjc(db, "meters", "report", "--today", "2026-12-14", "--format", "json", "--enterprise", A)
    assert json.loads(later.stdout)[0]["due_soon"][0]["detail"] == "6 day(s) left"


def test_the_table_in_config_reads() -> None:
    table = load_table()
    assert table.levels == frozenset({1})
    assert table.required(["3300"], 1) is not None
    assert table.required(["3300"], 2) is None
    req = table.required(["2100"], 1)
    assert req is not None and req.level == "0.5"
    assert table.required(["9999"], 1) is None


def test_a_broken_table_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "t.toml"
    bad.write_text('standard = "x"\nlevels = [1]\n[[requirement]]\nname = "a"\nenergy = ["3300"]\nclass = "A+"\n')
    try:
        load_table(bad)
    except ValueError as exc:
        assert "'A+' is not an accuracy class" in str(exc) and "\n" not in str(exc)
    else:
        raise AssertionError("accepted a class that is none")
