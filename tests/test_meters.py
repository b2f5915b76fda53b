"""The instrument registry (`nhjc meters load FILE`, `nhjc meters list`): a file is checked
whole (every refusal names the entry in one line), every change is kept, verification
periods only ever accumulate, and a replacement retires the old instrument and is recorded."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ingest.meters import MetersError, parse_meters_file, parse_meters_file_bytes
from tests.services import ROOT
from tools.gateway import enterprise_code
from tools.process import query

ENT = enterprise_code(41)
ELEC = "01-00-0000-023300-01"
ELEC2 = "01-00-0000-023300-02"


def nhjc(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NHJC_DATABASE__URL": dsn}
    return subprocess.run([sys.executable, "-m", "nhjc", *args], env=env, cwd=ROOT, check=False,
                          capture_output=True, text=True, timeout=60)


def meter(ser: str = "E-001", **extra: Any) -> dict[str, Any]:
    m: dict[str, Any] = {"enterprise": ENT, "serNo": ser, "meterName": "总进线电能表", "meterType": "电能表",
                         "meterLevel": 1, "dataCode": ELEC, "reportRatio": 200, "precisionLevel": "0.5S",
                         "manufacturer": "威胜", "model": "DTSD341", "installPlace": "10 kV 进线柜",
                         "alignState": "verified", "alignCycle": 12, "lastAlignDate": "2026-01-10",
                         "nextAlignDate": "2027-01-09", "alignOrg": "芜湖市计量测试所"}
    m.update(extra)
    return {k: v for k, v in m.items() if v is not None}


def execute(dsn: str, sql: str, *args: Any) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql, args)


def write(path: Path, entries: object) -> Path:
    path.write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    return path


def refused(entries: object) -> str:
    with pytest.raises(MetersError) as err:
        parse_meters_file(json.dumps(entries, ensure_ascii=False))
    text = str(err.value)
    assert "\n" not in text
    return text


# ---- every refusal, without a database ------------------------------------------------

def test_a_good_file_parses_with_its_forms_normalised() -> None:
    specs = parse_meters_file(json.dumps([
        meter(dataCode="0100000002330001", precisionLevel="0.5s级", alignState="检定"),
        meter("E-002", dataCode=None, dataCodes=[ELEC2, "01-00-0000-023300-03"], precisionLevel=1.0,
              alignState="校准", lastAlignDate=None, nextAlignDate="2026-06-30", alignCycle=6),
        meter("E-003", alignState="未检定", lastAlignDate=None, nextAlignDate=None, precisionLevel=2),
    ], ensure_ascii=False))
    a, b, c = specs
    assert (a.codes(), a.precisionLevel, a.alignState) == ([ELEC], "0.5S", "verified")
    assert (b.codes(), b.precisionLevel, b.alignState) == ([ELEC2, "01-00-0000-023300-03"], "1.0", "calibrated")
    # One date and the cycle give the other: valid from the verification day for the cycle.
    assert b.lastAlignDate == dt.date(2026, 1, 1)
    assert (c.alignState, c.precisionLevel, c.lastAlignDate) == ("none", "2", None)
    d = parse_meters_file(json.dumps([meter(nextAlignDate=None)]))[0]
    assert d.nextAlignDate == dt.date(2027, 1, 9)


@pytest.mark.parametrize(("entry", "said"), [
    (meter(nextAlingDate="2027-01-09"), "unknown field 'nextAlingDate' (did you mean 'nextAlignDate'?)"),
    (meter(ser_no="x"), "unknown field 'ser_no' (did you mean 'serNo'?)"),
    (meter(replaces={"serNo": "E-000", "time": "2026-03-01T08:00:00+08:00", "oldfinal": 1, "newInitial": 0}),
     "unknown field 'oldfinal' in replaces (did you mean 'oldFinal'?)"),
    ({k: v for k, v in meter().items() if k != "serNo"}, "serNo: Field required"),
    ({k: v for k, v in meter().items() if k != "meterName"}, "meterName: Field required"),
    ({k: v for k, v in meter().items() if k != "meterLevel"}, "meterLevel: Field required"),
    (meter(enterprise=ENT[:-1] + ("0" if ENT[-1] != "0" else "1")), "credit code"),
    (meter(serNo="  "), "serNo: is blank"),
    (meter(meterLevel=4), "meterLevel: Input should be less than or equal to 3"),
    (meter(meterLevel="1"), "meterLevel: Input should be a valid integer"),
    (meter(reportRatio=0), "reportRatio: Input should be greater than 0"),
    (meter(dataCode="01-00-0000-3300-01"), "dataCode: not a data code"),
    (meter(dataCodes=[ELEC2]), "give dataCode (one item) or dataCodes (several), not both"),
    (meter(dataCode=None, dataCodes=[ELEC, ELEC]), "is listed twice"),
    (meter(precisionLevel="A"), "precisionLevel: not an accuracy class"),
    (meter(alignState="expired"), "alignState: Input should be 'verified', 'calibrated' or 'none'"),
    (meter(lastAlignDate="2026/01/10"), "lastAlignDate: not a date YYYY-MM-DD"),
    (meter(lastAlignDate="2027-02-01"), "nextAlignDate is before lastAlignDate"),
    (meter(lastAlignDate=None, alignCycle=None), "alignState verified needs lastAlignDate and nextAlignDate"),
    (meter(retiredAt="2026-03-01T08:00:00"), "retiredAt: needs a UTC offset"),
    (meter(replaces={"serNo": "E-001", "time": "2026-03-01T08:00:00+08:00", "oldFinal": 1, "newInitial": 0}),
     "replaces.serNo is this instrument's own serial number"),
    (meter(dataCode=None, replaces={"serNo": "E-0", "time": "2026-03-01T08:00:00Z", "oldFinal": 1, "newInitial": 0}),
     "replaces needs the item this instrument measures"),
    (meter(dataCode=None, dataCodes=[ELEC, ELEC2],
           replaces={"serNo": "E-0", "time": "2026-03-01T08:00:00Z", "oldFinal": 1, "newInitial": 0}),
     "replaces.dataCode is needed"),
    (meter(replaces={"serNo": "E-0", "time": "2026-03-01T08:00:00Z", "oldFinal": 1, "newInitial": 0,
                     "dataCode": ELEC2}), "is not one of this instrument's items"),
    (meter(replaces={"serNo": "E-0", "time": "2026-03-01T08:00:00Z", "oldFinal": -1, "newInitial": 0}),
     "replaces.oldFinal: Input should be greater than or equal to 0"),
])
def test_every_refusal_names_the_entry_and_the_fault(entry: dict[str, Any], said: str) -> None:
    text = refused([meter("E-009"), entry])
    assert text.startswith("entry [1] (") and said in text, text
    if isinstance(entry.get("serNo"), str) and entry["serNo"].strip():
        assert repr(entry["serNo"]) in text  # the entry by its serial number too


def test_whole_file_faults() -> None:
    with pytest.raises(MetersError, match="not JSON") as e1:
        parse_meters_file("[{")
    assert e1.value.reason == "bad_json"
    with pytest.raises(MetersError, match="JSON array of instruments"):
        parse_meters_file('{"serNo": "x"}')
    assert refused([meter(), 7]) == "entry [1]: an instrument must be a JSON object, not 7"
    assert refused([meter(), meter(meterName="again")]).startswith(
        f"entry [1] ({ENT}, 'E-001'): the same instrument as entry [0]")
    rep = {"serNo": "E-000", "time": "2026-03-01T08:00:00+08:00", "oldFinal": 1, "newInitial": 0}
    assert "which entry [0] replaces already" in refused([meter("E-1", replaces=rep), meter("E-2", replaces=rep)])
    assert "retiredAt differs from the time entry [1] replaced it" in refused(
        [meter("E-000", retiredAt="2026-02-01T00:00:00Z"), meter("E-1", replaces=rep)])
    # Every bad entry is counted; the first is named.
    assert refused([meter(meterLevel=0), meter("E-2", meterLevel=9)]).endswith("(and 1 more)")


def test_encodings_as_for_items() -> None:
    data = json.dumps([meter()], ensure_ascii=False).encode("gb18030")
    with pytest.raises(MetersError, match="looks like GB18030") as err:
        parse_meters_file_bytes(data)
    assert err.value.reason == "bad_encoding"
    assert parse_meters_file_bytes(data, "gb18030")[0].meterName == "总进线电能表"
    assert parse_meters_file_bytes(b"\xef\xbb\xbf" + json.dumps([meter()]).encode())[0].serNo == "E-001"
    with pytest.raises(MetersError, match="unknown encoding"):
        parse_meters_file_bytes(data, "no-such-codec")


# ---- the database ---------------------------------------------------------------------

def test_load_keeps_history_and_changes_only_what_changed(db: str, tmp_path: Path) -> None:
    f = write(tmp_path / "meters.json", [meter(), meter("E-002", dataCode=ELEC2, alignState="none")])
    r = nhjc(db, "meters", "load", str(f))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("2 instrument(s)")
    assert nhjc(db, "meters", "load", str(f)).stdout.startswith("0 instrument(s)")
    write(f, [meter(precisionLevel="0.2S")])
    assert nhjc(db, "meters", "load", str(f)).stdout.startswith("1 instrument(s)")
    rows = query(db, "SELECT ser_no, meter_level, data_codes, report_ratio, precision_level, align_state,"
                     " last_align_date, next_align_date, source FROM meters ORDER BY ser_no")
    assert rows == [("E-001", 1, [ELEC], 200.0, "0.2S", "verified", dt.date(2026, 1, 10), dt.date(2027, 1, 9),
                     "file:meters.json"),
                    ("E-002", 1, [ELEC2], 200.0, "0.5S", "none", dt.date(2026, 1, 10), dt.date(2027, 1, 9),
                     "file:meters.json")]
    hist = query(db, "SELECT ser_no, record->>'precisionLevel', record->>'serNo' FROM meters_history ORDER BY id")
    assert hist == [("E-001", "0.5S", "E-001"), ("E-002", "0.5S", "E-002"), ("E-001", "0.2S", "E-001")]
    listing = nhjc(db, "meters", "list", "--enterprise", ENT).stdout.splitlines()
    assert [line.split("\t")[:6] for line in listing] == [
        [ENT, "E-001", "level 1", ELEC, "0.2S", "verified"], [ENT, "E-002", "level 1", ELEC2, "0.5S", "none"]]
    assert nhjc(db, "meters", "list", "--enterprise", enterprise_code(42)).stdout == ""


def test_verification_periods_accumulate_and_are_never_removed(db: str, tmp_path: Path) -> None:
    f = tmp_path / "m.json"
    for last, nxt in (("2025-01-10", "2026-01-09"), ("2026-01-20", "2027-01-19"), ("2025-01-10", "2026-01-09")):
        r = nhjc(db, "meters", "load", str(write(f, [meter(lastAlignDate=last, nextAlignDate=nxt)])))
        assert r.returncode == 0, r.stderr
    # Not verified any more: the row says so, the periods stay.
    assert nhjc(db, "meters", "load", str(write(f, [meter(alignState="none")]))).returncode == 0
    assert query(db, "SELECT valid_from, valid_until, align_state FROM meter_verifications ORDER BY valid_from") == [
        (dt.date(2025, 1, 10), dt.date(2026, 1, 9), "verified"), (dt.date(2026, 1, 20), dt.date(2027, 1, 19), "verified")]
    assert query(db, "SELECT align_state FROM meters") == [("none",)]
    assert query(db, "SELECT count(*) FROM meters_history") == [(4,)]


def test_a_bad_entry_loads_nothing(db: str, tmp_path: Path) -> None:
    f = write(tmp_path / "m.json", [meter(), meter("E-002", meterLevel=5)])
    r = nhjc(db, "meters", "load", str(f))
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "entry [1]" in r.stderr and "'E-002'" in r.stderr and "meterLevel" in r.stderr
    for table in ("meters", "meters_history", "meter_verifications", "meter_replacements"):
        assert query(db, f"SELECT count(*) FROM {table}") == [(0,)]
    gb = tmp_path / "gb.json"
    gb.write_bytes(json.dumps([meter()], ensure_ascii=False).encode("gb18030"))
    r = nhjc(db, "meters", "load", str(gb))
    assert r.returncode == 1 and "--encoding gb18030" in r.stderr
    assert nhjc(db, "meters", "load", str(gb), "--encoding", "gb18030").returncode == 0


def test_a_replacement_retires_the_old_instrument_and_queues_the_item(db: str, tmp_path: Path) -> None:
    execute(db, "INSERT INTO items (enterprise, code, energy, unit, kind, source) VALUES (%s, %s, '3300', 'kWh',"
              " 'cumulative', 'test')", ENT, ELEC)
    execute(db, "INSERT INTO readings (enterprise, code, ts, value, quality, received_at) VALUES"
              " (%s, %s, '2026-02-01T00:00:00Z', 10, 0, now()), (%s, %s, '2026-04-01T00:00:00Z', 5, 0, now())",
          ENT, ELEC, ENT, ELEC)
    f = tmp_path / "m.json"
    assert nhjc(db, "meters", "load", str(write(f, [meter("OLD-1", alignState="none")]))).returncode == 0
    execute(db, "DELETE FROM pending_recompute")
    new = meter("NEW-1", replaces={"serNo": "OLD-1", "time": "2026-03-01T08:00:00+08:00", "oldFinal": 1234.5,
                                    "newInitial": 0.25})
    r = nhjc(db, "meters", "load", str(write(f, [new])))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("2 instrument(s)")  # the new one, and the old one retired
    when = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    assert query(db, "SELECT ser_no, retired_at FROM meters ORDER BY ser_no") == [("NEW-1", None), ("OLD-1", when)]
    assert query(db, "SELECT code, replaced_at, old_ser_no, new_ser_no, old_final, new_initial"
                     " FROM meter_replacements") == [(ELEC, when, "OLD-1", "NEW-1", 1234.5, 0.25)]
    assert query(db, "SELECT record->>'replacedBy' FROM meters_history WHERE ser_no = 'OLD-1' ORDER BY id DESC"
                     " LIMIT 1") == [("NEW-1",)]
    assert query(db, "SELECT DISTINCT code FROM pending_recompute") == [(ELEC,)]
    # The old instrument's own entry loaded again later stays retired at its replacement.
    assert nhjc(db, "meters", "load", str(write(f, [meter("OLD-1", alignState="none")]))).returncode == 0
    assert query(db, "SELECT retired_at FROM meters WHERE ser_no = 'OLD-1'") == [(when,)]
