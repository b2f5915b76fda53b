"""The items registry: from a file and from the retained MQTT topic, every change recorded;
and the parsing of both (unknown fields, characters PostgreSQL refuses, encodings)."""

import codecs
import json
import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from ingest.items import (
    ItemsError,
    ItemSpec,
    _error_text,
    parse_items_file_bytes,
    parse_items_payload,
)
from tests.services import ROOT
from tools.gateway import Gateway, enterprise_code, item
from tools.process import ServiceProcess, query, wait_for


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

# -- parsing (no services) ------------------------------------------------------------------

ENT = enterprise_code(23)
GOOD = dict(item("01-00-0000-023300-01", multiplier=200.0), name="总进线电表", enterprise=ENT)


def file_error(doc: object | str | bytes, encoding: str | None = None) -> ItemsError:
    data = doc if isinstance(doc, bytes) else (doc if isinstance(doc, str) else json.dumps(doc, ensure_ascii=False)).encode()
    with pytest.raises(ItemsError) as e:
        parse_items_file_bytes(data, encoding)
    return e.value


def payload_bad(entry: object) -> list[tuple[int, str, bytes]]:
    good, bad = parse_items_payload(json.dumps({"v": 1, "items": [GOOD, entry]}).encode(), ENT)
    assert [i.code for i in good] == ["01-00-0000-023300-01"]
    return bad


def test_an_unknown_field_is_refused_by_name_from_the_file_and_from_mqtt() -> None:
    e = file_error([GOOD, dict(GOOD, multipler=12000)])
    assert (e.reason, str(e)) == ("bad_item", "item [1]: unknown field 'multipler' (did you mean 'multiplier'?)")
    [(i, why, raw)] = payload_bad(dict(GOOD, multipler=12000))
    assert (i, why) == (1, "unknown field 'multipler' (did you mean 'multiplier'?)")
    assert json.loads(raw) == dict(GOOD, multipler=12000)
    e = file_error([dict(GOOD, colour="red", size=3)])
    assert str(e) == "item [0]: unknown field 'colour', 'size'"


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("name", "a\x00b", "name: Value error, holds a NUL character (\\u0000), which PostgreSQL cannot store"),
        ("unit", "k\x00Wh", "unit: Value error, holds a NUL character (\\u0000), which PostgreSQL cannot store"),
        ("name", "a\ud800", "name: Value error, holds a lone surrogate (\\ud800-\\udfff), which is not text"),
        ("multiplier", 1e300, "multiplier: Input should be less than or equal to 1000000000"),
        ("multiplier", True, "multiplier: Input should be a valid number"),
        ("multiplier", "12000", "multiplier: Input should be a valid number"),
        ("coefficient", 1e10, "coefficient: Input should be less than or equal to 1000000000"),
        ("rollover", 1e16, "rollover: Input should be less than or equal to 1000000000000000"),
        ("max", 1e300, "max: Input should be less than or equal to 1000000000000000000000000"),
        ("scope", 1.0, "scope: Input should be a valid integer"),
        ("scope", 10**400, "scope: Input should be less than or equal to 4"),
        ("energy", "３３００", "energy: String should match pattern '^[0-9]{4}$'"),
        ("code", "٠١٠٠٠٠٠٠٠٢٣٣٠٠٠١", "code: Value error, not a data code pp-uu-eeee-cceeee-dd"),
        ("name", ["a"], "name: Input should be a valid string"),
        ("rollover", 1e6, "Value error, rollover applies to cumulative items only"),
    ],
)
def test_a_bad_field_is_refused_with_a_reason(field, value, why) -> None:
    # Through Python (a lone surrogate or a 400-digit integer cannot pass orjson), then as a file.
    fields = dict(GOOD, **{field: value}) | ({"kind": "instant"} if field == "rollover" and value == 1e6 else {})
    with pytest.raises(ValidationError) as e:
        ItemSpec.model_validate(fields)
    assert _error_text(e.value) == why
    if field == "name" and value == "a\ud800":
        return
    if field == "scope" and value == 10**400:
        assert str(file_error("[" + json.dumps(GOOD)[:-1] + ', "scope": 1' + "0" * 400 + "}]")).startswith(
            "not JSON: number is infinity when parsed as double: line 1 column ")
        return
    e2 = file_error([fields])
    assert (e2.reason, str(e2)) == ("bad_item", f"item [0]: {why}")
    assert "\x00" not in str(e2)
    assert payload_bad(fields)[0][1] == why


@pytest.mark.parametrize(
    ("payload", "reason", "detail"),
    [
        (b'{"v": 1, "items": ' + b"[" * 2000 + b"]" * 2000 + b"}", "bad_json",
         "not UTF-8 JSON: depth limit exceeded: line 1 column "),
        (b'{"v": 1, "items": [{"name": "\\ud800"}]}', "bad_json",
         "not UTF-8 JSON: no low surrogate in string: line 1 column "),
        (b'{"v": 1, "items": ["\xff"]}', "bad_json",
         "not UTF-8 JSON: str is not valid UTF-8: surrogates not allowed: line 1 column "),
        (b'{"v": 1.0, "items": []}', "bad_version", "v is 1.0, only 1 is understood"),
        (b'{"v": [[1]], "items": []}', "bad_version", "v is a JSON array, only 1 is understood"),
        (b'{"v": 1, "items": {}}', "bad_shape", "items message must be an object with an items array"),
    ],
)
def test_items_message_refused_whole(payload, reason, detail) -> None:
    with pytest.raises(ItemsError) as e:
        parse_items_payload(payload, ENT)
    assert e.value.reason == reason and str(e.value).startswith(detail)


def test_a_deeply_nested_bad_item_is_kept_re_encoded() -> None:
    nested = "[" * 1000 + "]" * 1000
    good, bad = parse_items_payload(('{"v": 1, "items": [' + nested + "]}").encode(), ENT)
    assert good == [] and bad == [(0, "an item must be a JSON object, not a JSON array", nested.encode())]


def test_file_in_utf8_with_or_without_bom() -> None:
    text = json.dumps([GOOD], ensure_ascii=False)
    for data in (text.encode(), codecs.BOM_UTF8 + text.encode()):
        assert [i.name for i in parse_items_file_bytes(data)] == ["总进线电表"]


def test_a_gb18030_file_is_refused_naming_the_encoding_or_read_when_told() -> None:
    data = json.dumps([GOOD], ensure_ascii=False).encode("gb18030")
    offset = data.index("总".encode("gb18030"))
    e = file_error(data)
    assert (e.reason, str(e)) == ("bad_encoding", f"not UTF-8 (byte 0xD7 at offset {offset}); it looks like "
                                                  "GB18030/GBK: convert it (iconv -f GB18030 -t UTF-8) or pass --encoding gb18030")
    for enc in ("gb18030", "GBK", "gb2312"):
        assert [i.name for i in parse_items_file_bytes(data, enc)] == ["总进线电表"]
    # A Latin-1 file is not taken for Chinese.
    latin = json.dumps([dict(GOOD, name="Zähler")], ensure_ascii=False).encode("latin-1")
    at = latin.index("ä".encode("latin-1"))
    assert str(file_error(latin)) == (f"not UTF-8 (byte 0xE4 at offset {at}): convert it to UTF-8 "
                                      "or pass --encoding with the encoding it is in")
    assert [i.name for i in parse_items_file_bytes(latin, "latin-1")] == ["Zähler"]


def test_other_encoding_faults() -> None:
    text = json.dumps([GOOD], ensure_ascii=False)
    assert str(file_error(text.encode("utf-16"))).startswith("not UTF-8: it starts with a UTF-16 byte-order mark")
    assert [i.name for i in parse_items_file_bytes(text.encode("utf-16"), "utf-16")] == ["总进线电表"]
    assert (file_error(text.encode(), "klingon").reason, str(file_error(text.encode(), "klingon"))) == \
        ("bad_encoding", "unknown encoding 'klingon'")
    assert str(file_error(text.encode(), "rot13")).startswith("cannot read the file as 'rot13'")
    assert str(file_error(text.encode(), "ascii")) == \
        f"not ascii (byte 0xE6 at offset {text.encode().index('总'.encode())}): pass the encoding the file is in"
    assert str(file_error(b"[\x00]")).startswith("not JSON: unexpected character")
