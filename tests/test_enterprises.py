"""The enterprise registry (`nhjc enterprises load FILE`, `nhjc enterprises list`) on a
real database: a file is checked whole, unknown fields are named, every change is kept
with its time, and credentials never appear in output, errors or the history."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ingest.enterprises import PROFILE_FIELDS
from tests.services import ROOT
from tools.gateway import enterprise_code
from tools.process import query

PIN = "735291"
SECRET = "Qz7Lr2Wm9Xk4Tn8Vb5Hc"


def nhjc(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NHJC_DATABASE__URL": dsn}
    return subprocess.run([sys.executable, "-m", "nhjc", *args], env=env, cwd=ROOT, check=False,
                          capture_output=True, text=True, timeout=60)


def entry(n: int, **extra: Any) -> dict[str, Any]:
    return {"enterprise": enterprise_code(n, "340200"), "name": f"芜湖测试企业{n}", "region": "340207",
            "profile": {"address": "芜湖市鸠江区某路1号", "industryCode": "C3120", "corporationName": "张三",
                        "energyRespName": "李四", "energyRespPhone": "0553-5550000", "latitude": 31.35,
                        "longitude": 118.43, "energyConsumeLevel": 4, "center": False,
                        "registerDate": "2003-05-01"},
            **extra}


def write(path: Path, entries: object) -> Path:
    path.write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    return path


def test_load_records_every_change_with_its_time(db: str, tmp_path: Path) -> None:
    a = entry(1, targets={"yunnan": {"pin": PIN, "secret": SECRET}, "anhui": {"region": "340202"}})
    b = entry(2)
    f = write(tmp_path / "enterprises.json", [a, b])
    r = nhjc(db, "enterprises", "load", str(f))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("2 enterprise(s)")
    assert nhjc(db, "enterprises", "load", str(f)).stdout.startswith("0 enterprise(s)")  # unchanged: no history
    b["region"] = "340208"
    b["profile"]["energyRespName"] = "王五"
    write(f, [a, b])
    assert nhjc(db, "enterprises", "load", str(f)).stdout.startswith("1 enterprise(s)")
    rows = query(db, "SELECT enterprise, region, profile->>'energyRespName', targets, source FROM enterprises"
                     " ORDER BY enterprise")
    assert rows == [(a["enterprise"], "340207", "李四", {"anhui": {"region": "340202"}}, "file:enterprises.json"),
                    (b["enterprise"], "340208", "王五", {}, "file:enterprises.json")]
    assert query(db, "SELECT secrets FROM enterprises WHERE enterprise = %s", a["enterprise"]) == [
        ({"yunnan": {"pin": PIN, "secret": SECRET}},)]
    hist = query(db, "SELECT enterprise, record->>'region', changed_at IS NOT NULL FROM enterprises_history ORDER BY id")
    assert hist == [(a["enterprise"], "340207", True), (b["enterprise"], "340207", True),
                    (b["enterprise"], "340208", True)]
    # A new PIN alone is a change: the history says which credential changed, not what to.
    a["targets"]["yunnan"]["pin"] = "1234"
    write(f, [a, b])
    assert nhjc(db, "enterprises", "load", str(f)).stdout.startswith("1 enterprise(s)")
    last = query(db, "SELECT record FROM enterprises_history ORDER BY id DESC LIMIT 1")[0][0]
    assert last["secrets_changed"] == ["yunnan.pin"]
    assert last["secrets"] == ["yunnan.pin", "yunnan.secret"]


def test_a_bad_entry_loads_nothing_and_is_named(db: str, tmp_path: Path) -> None:
    f = write(tmp_path / "e.json", [entry(3), entry(4, region="3402")])
    r = nhjc(db, "enterprises", "load", str(f))
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "entry [1]" in r.stderr and "region" in r.stderr
    assert query(db, "SELECT count(*) FROM enterprises") == [(0,)]
    assert query(db, "SELECT count(*) FROM enterprises_history") == [(0,)]


def test_a_bad_credit_code_is_named(db: str, tmp_path: Path) -> None:
    good = entry(5)
    bad = dict(entry(6), enterprise=good["enterprise"][:-1] + ("0" if good["enterprise"][-1] != "0" else "1"))
    r = nhjc(db, "enterprises", "load", str(write(tmp_path / "e.json", [good, bad])))
    assert r.returncode == 1
    assert "entry [1]" in r.stderr and bad["enterprise"] in r.stderr and "credit code" in r.stderr
    assert query(db, "SELECT count(*) FROM enterprises") == [(0,)]


def test_unknown_fields_are_refused_by_name_with_a_hint(db: str, tmp_path: Path) -> None:
    f = tmp_path / "e.json"
    cases = [
        (dict(entry(7), regoin="340207"), "'regoin' (did you mean 'region'?)"),
        (dict(entry(7), profile={"industrycode": "C3120"}), "'industrycode' in profile (did you mean 'industryCode'?)"),
        (dict(entry(7), address="x"), "'address' (a profile field"),
        (dict(entry(7), targets={"yunnan": {"pn": PIN}}), "'pn' in targets.yunnan (did you mean 'pin'?)"),
    ]
    for bad, said in cases:
        r = nhjc(db, "enterprises", "load", str(write(f, [bad])))
        assert r.returncode == 1 and "unknown field" in r.stderr and said in r.stderr, r.stderr
    assert query(db, "SELECT count(*) FROM enterprises") == [(0,)]


def test_name_and_region_are_required(db: str, tmp_path: Path) -> None:
    f = tmp_path / "e.json"
    for field in ("name", "region"):
        bad = entry(8)
        del bad[field]
        r = nhjc(db, "enterprises", "load", str(write(f, [bad])))
        assert r.returncode == 1 and f"{field}: Field required" in r.stderr, r.stderr
    minimal = {"enterprise": enterprise_code(8, "340200"), "name": "最小企业", "region": "340207"}
    assert nhjc(db, "enterprises", "load", str(write(f, [minimal]))).returncode == 0


def test_secrets_never_in_output_or_errors(db: str, tmp_path: Path) -> None:
    f = tmp_path / "e.json"
    a = entry(9, targets={"yunnan": {"pin": PIN, "secret": SECRET}})
    r = nhjc(db, "enterprises", "load", str(write(f, [a])))
    listing = nhjc(db, "enterprises", "list")
    assert listing.returncode == 0
    assert a["enterprise"] in listing.stdout and "pin=(set)" in listing.stdout and "secret=(set)" in listing.stdout
    # A refused credential is named, not quoted; so is the whole file when another entry fails.
    bad_pin = entry(10, targets={"yunnan": {"pin": "73529x", "secret": SECRET}})
    short = entry(11, targets={"yunnan": {"pin": PIN, "secret": SECRET[:15]}})
    refused = [nhjc(db, "enterprises", "load", str(write(f, entries)))
               for entries in ([bad_pin], [short], [a, dict(entry(12), region="x")])]
    assert [x.returncode for x in refused] == [1, 1, 1]
    assert "targets.yunnan.pin" in refused[0].stderr and "targets.yunnan.secret" in refused[1].stderr
    history = query(db, "SELECT record::text FROM enterprises_history")
    for text in (r.stdout + r.stderr, listing.stdout + listing.stderr,
                 *(x.stdout + x.stderr for x in refused), *(h[0] for h in history)):
        for secret in (PIN, "73529x", SECRET, SECRET[:15], SECRET[:16]):
            assert secret not in text


def test_profile_fields_are_the_wire_names() -> None:
    # The names the configuration call's enterprise object uses, as public clients send them.
    for name in ("address", "industryCode", "corporationName", "energyRespName", "energyRespPhone",
                 "energyOfficial", "phone", "email", "zipCode", "latitude", "longitude", "energyConsumeLevel",
                 "fieldCode", "typeCode", "center", "jgzh", "registerDate", "productionLine", "groupName"):
        assert name in PROFILE_FIELDS
    for derived in ("code", "corporationCode", "name", "regionCode"):  # filled from the entry itself
        assert derived not in PROFILE_FIELDS


def test_gb18030_file_with_encoding(db: str, tmp_path: Path) -> None:
    f = tmp_path / "e.json"
    f.write_bytes(json.dumps([entry(13)], ensure_ascii=False).encode("gb18030"))
    r = nhjc(db, "enterprises", "load", str(f))
    assert r.returncode == 1 and "GB18030" in r.stderr
    assert nhjc(db, "enterprises", "load", str(f), "--encoding", "gb18030").returncode == 0
    assert query(db, "SELECT name FROM enterprises") == [("芜湖测试企业13",)]
