"""Decoding frames: every reason code from a crafted input, good readings kept."""

import json
import math

import pytest

from ingest.frames import FrameLimits, decode_readings, normalise_code
from ingest.topics import TopicError, parse_topic
from processing.quality import EARLY, LATE

ENT = "91350100M000100Y43"
TOPIC = f"nhjc/v1/{ENT}/gw-1/readings"
CODE = "01-00-0000-023300-01"
NOW_US = 1_764_303_300 * 1_000_000  # 2025-11-28 12:15:00+08:00


def decode(payload: bytes | str, known=frozenset({CODE}), limits=None):
    if isinstance(payload, str):
        payload = payload.encode()
    return decode_readings(TOPIC, parse_topic(TOPIC), payload, NOW_US, known_codes=known, limits=limits or FrameLimits())


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
    b = decode(frame(*rs), limits=FrameLimits(max_readings=10))
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
