"""The items registry: from a file and from the retained MQTT topic, every change recorded."""

import json
import os
import subprocess
import sys

from tests.harness import Gateway, ServiceProcess, enterprise_code, item, query, wait_for
from tests.services import ROOT


def nhjc(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NHJC_DATABASE__URL": dsn}
    return subprocess.run([sys.executable, "-m", "nhjc", *args], env=env, cwd=ROOT, check=False, capture_output=True,
                          text=True, timeout=60)


def test_items_load_file_records_every_change(db, tmp_path) -> None:
    ent = enterprise_code(20)
    f = tmp_path / "items.json"
    items = [dict(item("01-00-0000-023300-01", multiplier=200, rollover=999999.99), enterprise=ent),
             dict(item("0000000001150001"), enterprise=ent, unit="m3", energy="1500")]
    f.write_text(json.dumps(items))
    r = nhjc(db, "items", "load", str(f))
    assert r.returncode == 0, r.stderr
    assert "2 item(s)" in r.stdout
    assert nhjc(db, "items", "load", str(f)).stdout.startswith("0 item(s)")  # unchanged: no new history
    items[0]["multiplier"] = 400
    f.write_text(json.dumps(items))
    assert nhjc(db, "items", "load", str(f)).stdout.startswith("1 item(s)")
    rows = query(db, "SELECT code, multiplier, rollover, unit, source FROM items ORDER BY code")
    assert rows == [("00-00-0000-011500-01", 1.0, None, "m3", "file:items.json"),
                    ("01-00-0000-023300-01", 400.0, 999999.99, "kWh", "file:items.json")]
    hist = query(db, "SELECT code, (item->>'multiplier')::float FROM items_history ORDER BY id")
    assert hist == [("01-00-0000-023300-01", 200.0), ("00-00-0000-011500-01", 1.0), ("01-00-0000-023300-01", 400.0)]
    assert query(db, "SELECT count(*) FROM items_history WHERE changed_at IS NULL") == [(0,)]


def test_items_load_rejects_a_bad_file_naming_the_entry(db, tmp_path) -> None:
    ent = enterprise_code(21)
    f = tmp_path / "items.json"
    f.write_text(json.dumps([dict(item("01-00-0000-023300-01"), enterprise=ent),
                             dict(item("01-00-0000-023300-02"), enterprise=ent, kind="sometimes")]))
    r = nhjc(db, "items", "load", str(f))
    assert r.returncode == 1
    assert "item [1]" in r.stderr and "kind" in r.stderr
    assert query(db, "SELECT count(*) FROM items") == [(0,)]  # checked whole before anything is loaded
    f.write_text("not json")
    assert "not JSON" in nhjc(db, "items", "load", str(f)).stderr
    assert "no such file" in nhjc(db, "items", "load", str(tmp_path / "nope.json")).stderr


def test_retained_items_topic_updates_registry(broker, db, tmp_path) -> None:
    ent = enterprise_code(22)
    gw = Gateway(broker.url, ent, gateway="gw-items")
    gw.items([item("01-00-0000-023300-01", multiplier=50)])
    svc = ServiceProcess(broker.url, db, log=tmp_path / "svc.log").start()
    try:
        # Other tests' gateways may have left retained items on the shared broker: count ours.
        wait_for(lambda: query(db, "SELECT count(*) FROM items WHERE enterprise = %s", ent)[0][0] == 1, 15,
                 "items from the retained topic")
        gw.items([item("01-00-0000-023300-01", multiplier=80), item("01-00-0000-023300-02", kind="instant")])
        wait_for(lambda: query(db, "SELECT count(*) FROM items_history WHERE enterprise = %s", ent)[0][0] == 3,
                 15, "history")
        assert query(db, "SELECT multiplier, source FROM items WHERE enterprise = %s AND code = '01-00-0000-023300-01'",
                     ent) == [
            (80.0, f"mqtt:nhjc/v1/{ent}/gw-items/items")]
    finally:
        assert svc.stop() == 0
        gw.close()


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    """The command failed with one line on stderr and no traceback."""
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    return r.stderr


def test_items_load_refuses_an_unknown_field_naming_it(db, tmp_path) -> None:
    # "multipler" for "multiplier": once loaded as multiplier 1, a 12,000-fold undercount.
    f = tmp_path / "items.json"
    f.write_text(json.dumps([dict(item("01-00-0000-023300-01"), enterprise=enterprise_code(23), multipler=12000)]))
    err = one_line(nhjc(db, "items", "load", str(f)))
    assert "item [0]" in err and "multipler" in err
    assert query(db, "SELECT count(*) FROM items") == [(0,)]


def test_items_load_reads_gb18030_only_when_told(db, tmp_path) -> None:
    ent = enterprise_code(24)
    f = tmp_path / "items-gbk.json"
    f.write_bytes(json.dumps([dict(item("01-00-0000-023300-01"), enterprise=ent, name="一号变压器 总表")],
                             ensure_ascii=False).encode("gb18030"))
    err = one_line(nhjc(db, "items", "load", str(f)))
    assert "not UTF-8" in err and "GB18030" in err and "--encoding gb18030" in err
    assert query(db, "SELECT count(*) FROM items") == [(0,)]
    r = nhjc(db, "items", "load", "--encoding", "gb18030", str(f))
    assert r.returncode == 0, r.stderr
    assert query(db, "SELECT name FROM items WHERE enterprise = %s", ent) == [("一号变压器 总表",)]
    bom = tmp_path / "items-bom.json"  # UTF-8 with a byte-order mark, as Notepad saves it
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps([dict(item("01-00-0000-023300-02"), enterprise=ent, name="二号")],
                                                   ensure_ascii=False).encode())
    assert nhjc(db, "items", "load", str(bom)).returncode == 0
    latin = tmp_path / "items-latin1.json"  # not UTF-8 and not Chinese: no GB18030 guess offered
    latin.write_bytes(json.dumps([dict(item("01-00-0000-023300-03"), enterprise=ent, name="café")],
                                 ensure_ascii=False).encode("latin-1"))
    err = one_line(nhjc(db, "items", "load", str(latin)))
    assert "not UTF-8" in err and "GB18030" not in err and "--encoding" in err
    assert "unknown encoding" in one_line(nhjc(db, "items", "load", "--encoding", "klingon", str(bom)))


def test_items_load_paths_that_are_not_files_get_one_line(db, tmp_path) -> None:
    assert "is a directory" in one_line(nhjc(db, "items", "load", str(tmp_path)))
    f = tmp_path / "items.json"
    f.write_text("[]")
    assert "cannot read" in one_line(nhjc(db, "items", "load", str(f / "inside")))  # a path through a file
    assert "no such file" in one_line(nhjc(db, "items", "load", str(tmp_path / "nope.json")))


def test_items_load_never_prints_the_database_password(tmp_path) -> None:
    f = tmp_path / "items.json"
    f.write_text(json.dumps([dict(item("01-00-0000-023300-01"), enterprise=enterprise_code(25))]))
    err = one_line(nhjc("postgresql://nhjc:s3cret-Pw0rd@127.0.0.1:9/nhjc", "items", "load", str(f)))
    assert "s3cret-Pw0rd" not in err and "127.0.0.1:9" in err
