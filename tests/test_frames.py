"""Decoding frames: every reason code from a crafted input, good readings kept."""

import json
import math

import pytest

from config.settings import IngestSettings
from ingest.frames import DEFAULT_LIMITS, FrameLimits, decode_readings, normalise_code, pg_text
from ingest.quality import EARLY, LATE
from ingest.topics import TopicError, parse_topic

ENT = "91350100M000100Y43"
TOPIC = f"nhjc/v1/{ENT}/gw-1/readings"
CODE = "01-00-0000-023300-01"
NOW_US = 1_764_303_300 * 1_000_000  # 2025-11-28 12:15:00+08:00


def decode(payload: bytes | str, known=frozenset({CODE}), limits=None):
    if isinstance(payload, str):
        payload = payload.encode()
    return decode_readings(TOPIC, parse_topic(TOPIC), payload, NOW_US, known_codes=known, limits=limits or DEFAULT_LIMITS)


def frame(*readings, **extra) -> str:
    return json.dumps({"v": 1, "readings": list(readings), **extra})


def test_good_frame_both_time_forms() -> None:
    b = decode(frame(
        {"code": CODE, "ts": "2025-11-28T12:15:00+08:00", "value": 182736.25},
        {"code": "01000000023300 01".replace(" ", ""), "ts": 1764303240, "value": 182735},
    ))
    assert b.quarantine == []
    assert b.rows["code"].tolist() == [CODE.encode()] * 2
    assert b.rows["ts"].tolist() == [NOW_US, NOW_US - 60_000_000]
    assert b.rows["value"].tolist() == [182736.25, 182735.0]
    assert b.rows["quality"].tolist() == [0, 0]
    assert b.rows["enterprise"].tolist() == [ENT.encode()] * 2


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        (b"[1, 2]", "bad_shape"),
        (json.dumps({"v": 2, "readings": [{"code": CODE, "ts": 1, "value": 1}]}), "bad_version"),
        (json.dumps({"readings": []}), "bad_version"),
        (json.dumps({"v": 1, "readings": []}), "bad_shape"),
        (json.dumps({"v": 1, "readings": {}}), "bad_shape"),
        (json.dumps({"v": 1, "seq": -1, "readings": [{"code": CODE, "ts": 1, "value": 1}]}), "bad_shape"),
        (b"{" + b" " * 300_000 + b"}", "too_large"),
    ],
)
def test_whole_frame_rejections(payload, reason) -> None:
    b = decode(payload)
    assert len(b.rows) == 0
    assert [q.reason for q in b.quarantine] == [reason]
    assert b.quarantine[0].level == "frame"
    assert b.quarantine[0].raw == (payload.encode() if isinstance(payload, str) else payload)


def test_too_many_readings() -> None:
    rs = [{"code": CODE, "ts": 1764303300 - i, "value": 1.0} for i in range(11)]
    b = decode(frame(*rs), limits=FrameLimits.of(IngestSettings(max_readings_per_frame=10)))
    assert [q.reason for q in b.quarantine] == ["too_large"]


@pytest.mark.parametrize(
    ("reading", "reason"),
    [
        ({"code": CODE, "ts": 1764303300}, "bad_shape"),
        ("just a string", "bad_shape"),
        ({"code": "01-00-0000-0233", "ts": 1764303300, "value": 1}, "bad_code"),
        ({"code": 1234, "ts": 1764303300, "value": 1}, "bad_code"),
        ({"code": "02-00-0000-023300-01", "ts": 1764303300, "value": 1}, "unknown_item"),
        ({"code": CODE, "ts": "yesterday", "value": 1}, "bad_timestamp"),
        ({"code": CODE, "ts": "2025-11-28T12:15:00", "value": 1}, "bad_timestamp"),  # no offset
        ({"code": CODE, "ts": 946684799, "value": 1}, "bad_timestamp"),  # before 2000
        ({"code": CODE, "ts": 1764303300 + 86401, "value": 1}, "bad_timestamp"),  # over a day ahead
        ({"code": CODE, "ts": True, "value": 1}, "bad_timestamp"),
        ({"code": CODE, "ts": 1764303300, "value": "12"}, "bad_value"),
        ({"code": CODE, "ts": 1764303300, "value": None}, "bad_value"),
        ({"code": CODE, "ts": 1764303300, "value": math.nan}, "not_finite"),
        ({"code": CODE, "ts": 1764303300, "value": math.inf}, "not_finite"),
    ],
)
def test_bad_reading_is_quarantined_and_the_rest_kept(reading, reason) -> None:
    good = {"code": CODE, "ts": 1764303300, "value": 10.5}
    b = decode(frame(good, reading, dict(good, ts=1764303360)))
    assert [q.reason for q in b.quarantine] == [reason]
    assert b.quarantine[0].level == "reading"
    assert b.quarantine[0].detail.startswith("readings[1]")
    assert b.rows["ts"].tolist() == [NOW_US, NOW_US + 60_000_000]


def test_early_and_late_flags() -> None:
    b = decode(frame(
        {"code": CODE, "ts": 1764303300 + 600, "value": 1},  # 10 min ahead
        {"code": CODE, "ts": 1764303300 - 8 * 86400, "value": 1},  # 8 days old
        {"code": CODE, "ts": 1764303300 + 60, "value": 1},  # slightly early: tolerated
    ))
    assert b.rows["quality"].tolist() == [EARLY, LATE, 0]


def test_topic_checks() -> None:
    with pytest.raises(TopicError) as e:
        parse_topic("nhjc/v1/91350100M000100Y44/gw/readings")
    assert e.value.reason == "bad_enterprise"
    with pytest.raises(TopicError) as e:
        parse_topic(f"nhjc/v1/{ENT}/bad gateway/readings")
    assert e.value.reason == "bad_topic"
    assert parse_topic(f"nhjc/v1/{ENT}/gw_2-a/items").kind == "items"


def test_normalise_code() -> None:
    assert normalise_code("0100000002330001") == CODE
    assert normalise_code(CODE) == CODE
    assert normalise_code("01-00-0000-023300-0X") is None


# -- inputs that used to escape the decoder, and their outcomes ---------------------------

GOOD = {"code": CODE, "ts": 1764303300, "value": 10.5}


def only(b, level="reading"):
    assert len(b.quarantine) == 1, b.quarantine
    q = b.quarantine[0]
    assert q.level == level
    assert "\x00" not in q.detail and "\x00" not in q.topic
    q.detail.encode("utf-8")  # no lone surrogate: PostgreSQL text takes it
    return q


def test_readings_nested_2000_deep_is_bad_json() -> None:
    payload = b'{"v": 1, "readings": ' + b"[" * 2000 + b"]" * 2000 + b"}"
    q = only(decode(payload), "frame")
    assert (q.reason, q.detail) == ("bad_json", "not UTF-8 JSON: nested too deeply (RecursionError)")
    assert q.raw == payload


def test_a_reading_nested_900_deep_is_kept_whole_in_quarantine() -> None:
    # Readable by orjson (up to 1,024 levels), too deep for json.dumps: re-encoded iteratively.
    nested = b"[" * 900 + b"]" * 900
    b = decode(b'{"v": 1, "readings": [' + json.dumps(GOOD).encode() + b", " + nested + b"]}")
    q = only(b)
    assert (q.reason, q.detail) == ("bad_shape", "readings[1]: a reading must be an object with code, ts and value")
    assert q.raw == nested
    assert len(b.rows) == 1
    deep_obj = b'{"a":' * 900 + b'"\\ud800"' + b"}" * 900  # and one holding a lone surrogate
    q = only(decode(b'{"v": 1, "readings": [{"code": ' + deep_obj + b', "ts": 1, "value": 1}]}'))
    assert q.reason == "bad_code" and q.detail == "readings[0]: code a JSON object is not pp-uu-eeee-cceeee-dd"
    assert json.loads(q.raw)["code"] == json.loads(deep_obj)


@pytest.mark.parametrize("field", ["value", "ts"])
def test_a_400_digit_integer(field) -> None:
    big = "1" + "0" * 399
    text = json.dumps(GOOD).replace(f'"{field}": {GOOD[field]}', f'"{field}": {big}')
    b = decode('{"v": 1, "readings": [' + text + ", " + json.dumps(GOOD | {"ts": 1764303360}) + "]}")
    q = only(b)
    if field == "value":
        assert (q.reason, q.detail) == ("bad_value", "readings[0]: value <400-digit integer> is beyond ±1e15, more than a meter shows")
    else:
        assert (q.reason, q.detail) == ("bad_timestamp", "readings[0]: ts <400-digit integer> is unreadable, before 2000 or over a day ahead")
    assert q.raw == text.encode()  # the reading as sent, every digit kept
    assert b.rows["ts"].tolist() == [NOW_US + 60_000_000]


def test_a_lone_surrogate_in_a_bad_reading() -> None:
    b = decode(b'{"v": 1, "readings": [{"code": "\\ud800", "ts": 1764303300, "value": 1}]}')
    q = only(b)
    assert (q.reason, q.detail) == ("bad_code", "readings[0]: code '\\ud800' is not pp-uu-eeee-cceeee-dd")
    assert q.raw == b'{"code": "\\ud800", "ts": 1764303300, "value": 1}'  # escaped as it came
    b = decode('{"v": 1, "readings": [{"code": "0100000002330001", "ts": "电\\ud800", "value": 1}]}')
    q = only(b)
    assert (q.reason, q.detail) == ("bad_timestamp", "readings[0]: ts '电\\ud800' is unreadable, before 2000 or over a day ahead")
    assert json.loads(q.raw)["ts"] == "电\ud800"


def test_nul_anywhere() -> None:
    q = only(decode(frame(dict(GOOD, code=CODE + "\x00"))))
    assert (q.reason, q.detail) == ("bad_code", "readings[0]: code '01-00-0000-023300-01\\x00' is not pp-uu-eeee-cceeee-dd")
    assert json.loads(q.raw)["code"] == CODE + "\x00"  # raw (bytea) keeps it as sent
    # fromisoformat stops at a NUL; the decoder does not let the rest of the text pass.
    q = only(decode(frame(dict(GOOD, ts="2025-11-28T12:15:00+08:00\x00junk"))))
    assert q.reason == "bad_timestamp"
    q = only(decode(b'{"v": 1, "readings": [\x00]}'), "frame")
    assert q.reason == "bad_json" and q.raw == b'{"v": 1, "readings": [\x00]}'
    # A NUL in the topic name (paho passes what the broker sent) is escaped too.
    b = decode_readings(TOPIC + "\x00\ud800", parse_topic(TOPIC), b"[]", NOW_US, known_codes={CODE})
    assert only(b, "frame").topic == TOPIC + "\\x00\\ud800"


@pytest.mark.parametrize(
    ("value", "reason", "detail"),
    [
        (1e308, "bad_value", "value 1e+308 is beyond ±1e15, more than a meter shows"),
        (-1e16, "bad_value", "value -1e+16 is beyond ±1e15, more than a meter shows"),
        (10**16, "bad_value", "value 10000000000000000 is beyond ±1e15, more than a meter shows"),
        (True, "bad_value", "value True is not a number"),
        ([1], "bad_value", "value a JSON array is not a number"),
        ({"v": 1}, "bad_value", "value a JSON object is not a number"),
        ("x" * 100, "bad_value", "value " + repr("x" * 40) + "… is not a number"),
    ],
)
def test_values_out_of_bounds_or_of_the_wrong_type(value, reason, detail) -> None:
    q = only(decode(frame(dict(GOOD, value=value), dict(GOOD, ts=1764303360))))
    assert (q.reason, q.detail) == (reason, f"readings[0]: {detail}")


def test_the_largest_value_is_stored() -> None:
    b = decode(frame(dict(GOOD, value=1e15), dict(GOOD, ts=1764303360, value=-(10**15))))
    assert b.quarantine == [] and b.rows["value"].tolist() == [1e15, -1e15]


def test_nan_and_infinity_literals() -> None:
    r = '{"code": "' + CODE + '", "ts": 1764303300, "value": '
    b = decode('{"v": 1, "readings": [' + r + "NaN}, " + r + "-Infinity}, " + r + "1e999}]}")
    assert [(q.reason, q.detail) for q in b.quarantine] == [
        ("not_finite", "readings[0]: value nan is not finite"),
        ("not_finite", "readings[1]: value -inf is not finite"),
        ("not_finite", "readings[2]: value inf is not finite"),
    ]
    assert b.quarantine[0].raw == json.dumps({"code": CODE, "ts": 1764303300, "value": math.nan}).encode()


@pytest.mark.parametrize(
    ("reading", "reason", "detail"),
    [
        ({"code": [CODE], "ts": 1764303300, "value": 1}, "bad_code", "code a JSON array is not pp-uu-eeee-cceeee-dd"),
        ({"code": {"c": CODE}, "ts": 1764303300, "value": 1}, "bad_code", "code a JSON object is not pp-uu-eeee-cceeee-dd"),
        ({"code": 100000002330001, "ts": 1764303300, "value": 1}, "bad_code", "code 100000002330001 is not pp-uu-eeee-cceeee-dd"),
        ({"code": None, "ts": 1764303300, "value": 1}, "bad_code", "code None is not pp-uu-eeee-cceeee-dd"),
        ({"code": "٠١٠٠٠٠٠٠٠٢٣٣٠٠٠١", "ts": 1764303300, "value": 1}, "bad_code", "code '٠١٠٠٠٠٠٠٠٢٣٣٠٠٠١' is not pp-uu-eeee-cceeee-dd"),
        ({"code": CODE, "ts": [1764303300], "value": 1}, "bad_timestamp", "ts a JSON array is unreadable, before 2000 or over a day ahead"),
        ({"code": CODE, "ts": False, "value": 1}, "bad_timestamp", "ts False is unreadable, before 2000 or over a day ahead"),
        ({"code": CODE, "ts": 1e300, "value": 1}, "bad_timestamp", "ts 1e+300 is unreadable, before 2000 or over a day ahead"),
        ({"code": CODE, "ts": "0001-01-01T00:00:00+23:59", "value": 1}, "bad_timestamp", "ts '0001-01-01T00:00:00+23:59' is unreadable, before 2000 or over a day ahead"),
    ],
)
def test_every_wrong_type_in_a_reading(reading, reason, detail) -> None:
    q = only(decode(frame(reading, GOOD)))
    assert (q.reason, q.detail) == (reason, f"readings[0]: {detail}")
    assert json.loads(q.raw) == reading


@pytest.mark.parametrize(
    ("payload", "reason", "detail"),
    [
        ({"v": 1.0, "readings": [GOOD]}, "bad_version", "v is 1.0, only 1 is understood"),
        ({"v": True, "readings": [GOOD]}, "bad_version", "v is True, only 1 is understood"),
        ({"v": [1], "readings": [GOOD]}, "bad_version", "v is a JSON array, only 1 is understood"),
        ({"v": "1", "readings": [GOOD]}, "bad_version", "v is '1', only 1 is understood"),
        # orjson reads an integer beyond 64 bits as a double
        ({"v": 1, "seq": 2**64, "readings": [GOOD]}, "bad_shape", "seq 1.8446744073709552e+19 is not a non-negative 64-bit integer"),
        ({"v": 1, "seq": 10**400, "readings": [GOOD]}, "bad_shape", "seq <401-digit integer> is not a non-negative 64-bit integer"),
        ({"v": 1, "seq": 1.0, "readings": [GOOD]}, "bad_shape", "seq 1.0 is not a non-negative 64-bit integer"),
        ({"v": 1, "seq": True, "readings": [GOOD]}, "bad_shape", "seq True is not a non-negative 64-bit integer"),
        ({"v": 1, "readings": "many"}, "bad_shape", "readings must be a non-empty array"),
        ("just text", "bad_shape", "frame is 'just text', not a JSON object"),
        ([GOOD], "bad_shape", "frame is a JSON array, not a JSON object"),
    ],
)
def test_every_wrong_type_in_a_frame(payload, reason, detail) -> None:
    q = only(decode(json.dumps(payload)), "frame")
    assert (q.reason, q.detail) == (reason, detail)


def test_seq_as_large_as_64_bits_is_accepted() -> None:
    assert decode(frame(GOOD, seq=2**64 - 1)).quarantine == []


def test_duplicate_keys_the_later_counts() -> None:
    b = decode('{"v": 1, "readings": 5, "readings": [{"value": "x", "code": "' + CODE + '", "ts": 1764303300, "value": 7}]}')
    assert b.quarantine == [] and b.rows["value"].tolist() == [7.0]
    q = only(decode('{"v": 1, "v": 2, "readings": [' + json.dumps(GOOD) + "]}"), "frame")
    assert q.reason == "bad_version"


def test_invalid_utf8() -> None:
    for payload in (b'{"v": 1, "readings": [{"code": "\xff"}]}', b'{"v": 1, "readings": ["\xed\xa0\x80"]}'):
        q = only(decode(payload), "frame")
        assert q.reason == "bad_json" and q.detail.startswith("not UTF-8 JSON: ") and q.raw == payload


def test_pg_text() -> None:
    assert pg_text("plain") == "plain"
    assert pg_text("a\x00b") == "a\\x00b"
    assert pg_text("电\ud800\x00") == "电\\ud800\\x00"


def test_an_integer_past_pythons_4300_digit_limit_is_bad_json() -> None:
    payload = b'{"v": 1, "readings": [{"code": "' + CODE.encode() + b'", "ts": 1764303300, "value": ' + b"9" * 5000 + b"}]}"
    q = only(decode(payload), "frame")
    assert q.reason == "bad_json" and q.detail.startswith("not UTF-8 JSON: Exceeds the limit (4300 digits)")
