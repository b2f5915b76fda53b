"""Fuzzing the frame and items decoders: whatever the bytes, no exception escapes, and
every quarantine row they make can be stored (its texts are PostgreSQL text: no NUL, no
lone surrogate).  A short budget here; benchmarks/fuzz_decoders.py runs a million inputs.
"""

import dataclasses
import json
import math

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.batch import ReadingBatch
from ingest.frames import DEFAULT_LIMITS, MAX_ABS_VALUE, REASONS, decode_readings, pg_storable
from ingest.items import (
    ItemsError,
    ItemSpec,
    parse_items_file,
    parse_items_file_bytes,
    parse_items_payload,
)
from ingest.topics import parse_topic
from tests.strategies import (
    DEC_CODE,
    DEC_ENTERPRISE,
    DEC_TS,
    frame_payloads,
    garbage_frame,
    items_payloads,
)

TOPIC = f"nhjc/v1/{DEC_ENTERPRISE}/gw-1/readings"
NOW_US = DEC_TS * 1_000_000
KNOWN = frozenset({DEC_CODE})
FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])




def decode(payload: bytes, topic_name: str = TOPIC) -> ReadingBatch:
    return decode_readings(topic_name, parse_topic(TOPIC), payload, NOW_US, known_codes=KNOWN)


def check_batch(b: ReadingBatch, payload: bytes) -> None:
    assert isinstance(b, ReadingBatch) and b.frames == 1
    for q in b.quarantine:
        assert q.reason in REASONS
        assert all(pg_storable(t) for t in (q.topic, q.enterprise, q.reason, q.detail)), q
        assert isinstance(q.raw, bytes)
        if q.level == "frame":
            assert q.raw == payload and len(b.quarantine) == 1 and len(b.rows) == 0
        else:
            assert q.level == "reading" and q.detail.startswith("readings[")
            json.loads(q.raw.decode("utf-8"))  # a JSON re-encoding of the reading, valid UTF-8
    assert all(math.isfinite(v) and abs(v) <= MAX_ABS_VALUE for v in b.rows["value"].tolist())
    if not any(q.level == "frame" for q in b.quarantine):
        # Every reading is accounted for: stored, or quarantined on its own.
        n = len(json.loads(payload.decode("utf-8"))["readings"])
        assert len(b.rows) + len(b.quarantine) == n


def check_items_error(exc: ItemsError) -> None:
    assert exc.reason in ("bad_json", "bad_shape", "bad_version", "bad_item", "bad_encoding")
    assert pg_storable(str(exc)) and str(exc)


@FUZZ
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_escape_the_frame_decoder(payload) -> None:
    check_batch(decode(payload), payload)


@FUZZ
@given(frame_payloads())
def test_crafted_frames_never_escape_and_every_row_is_pg_storable(payload) -> None:
    check_batch(decode(payload), payload)


@settings(max_examples=2, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_frames_of_5000_garbage_readings(seed) -> None:
    payload = garbage_frame(seed)
    b = decode_readings(TOPIC, parse_topic(TOPIC), payload, NOW_US, known_codes=KNOWN,
                        limits=dataclasses.replace(DEFAULT_LIMITS, max_frame_bytes=len(payload)))
    check_batch(b, payload)
    assert len(b.rows) + len(b.quarantine) == 5000


@FUZZ
@given(st.text(st.characters(codec=None, exclude_categories=()), max_size=20))
def test_a_topic_name_with_any_characters_is_stored_safely(gw) -> None:
    b = decode(b"{not json", f"nhjc/v1/{DEC_ENTERPRISE}/{gw}/readings")
    check_batch(b, b"{not json")


@FUZZ
@given(st.one_of(st.binary(max_size=1000), items_payloads()))
def test_items_payload_raises_only_items_error(payload) -> None:
    try:
        good, bad = parse_items_payload(payload, DEC_ENTERPRISE)
    except ItemsError as exc:
        check_items_error(exc)
        return
    assert all(isinstance(i, ItemSpec) and i.enterprise == DEC_ENTERPRISE for i in good)
    for _i, why, raw in bad:
        assert pg_storable(why) and why
        json.loads(raw.decode("utf-8"))
    for i in good:  # what is accepted is storable and bounded
        assert all(pg_storable(t) for t in (i.name, i.unit, i.code, i.energy))
        assert 0 < i.multiplier <= 1e9


@FUZZ
@given(st.one_of(st.binary(max_size=1000), items_payloads()),
       st.sampled_from([None, "utf-8", "gb18030", "gbk", "utf-16", "latin-1", "rot13", "zlib", "idna",
                        "unicode_escape", "no-such-codec", "\x00"]))
def test_items_file_bytes_raise_only_items_error(data, encoding) -> None:
    try:
        items = parse_items_file_bytes(data, encoding)
    except ItemsError as exc:
        check_items_error(exc)
        return
    assert all(isinstance(i, ItemSpec) for i in items)


@FUZZ
@given(st.text(st.characters(codec=None, exclude_categories=()), max_size=200))
def test_items_file_text_raises_only_items_error(text) -> None:
    try:
        parse_items_file(text)
    except ItemsError as exc:
        check_items_error(exc)


def test_the_rows_of_the_known_escapes_and_of_garbage_go_into_postgresql(db) -> None:
    """The real check of 'storable': PostgreSQL takes every quarantine row made from the
    inputs that used to escape and from a 5,000-reading frame of garbage."""
    payloads = [
        b'{"v": 1, "readings": ' + b"[" * 2000 + b"]" * 2000 + b"}",
        b'{"v": 1, "readings": [{"code": "' + DEC_CODE.encode() + b'", "ts": 1764303300, "value": 1' + b"0" * 400 + b"}]}",
        b'{"v": 1, "readings": [{"code": "' + DEC_CODE.encode() + b'", "ts": 1' + b"0" * 400 + b', "value": 1}]}',
        b'{"v": 1, "readings": [{"code": "\\ud800", "ts": "\\u0000", "value": "\\udfff\\u0000"}]}',
        b'{"v": 1, "readings": [{"code": "' + DEC_CODE.encode() + b'", "ts": 1764303300, "value": 1e308}]}',
        b'{"v": 1, "readings": [\x00, "\xff"]}',
        garbage_frame(7),
    ]
    rows = []
    for p in payloads:
        b = decode_readings(TOPIC + "\x00\ud800", parse_topic(TOPIC), p, NOW_US, known_codes=KNOWN,
                            limits=dataclasses.replace(DEFAULT_LIMITS, max_frame_bytes=1 << 20))
        rows += [(q.topic, q.enterprise, q.reason, q.detail, q.raw) for q in b.quarantine]
    try:
        parse_items_payload(b'{"v": [1], "items": []}', DEC_ENTERPRISE)
    except ItemsError as exc:
        rows.append((TOPIC, DEC_ENTERPRISE, exc.reason, str(exc), b""))
    _good, bad = parse_items_payload(json.dumps({"v": 1, "items": [{"name": "\x00", "multipler": 1}]}).encode(),
                                     DEC_ENTERPRISE)
    rows += [(TOPIC, DEC_ENTERPRISE, "bad_item", why, raw) for _i, why, raw in bad]
    assert len(rows) > 4000
    with psycopg.connect(db, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO quarantine (received_at, topic, enterprise, reason, detail, raw, fingerprint) "
                            "VALUES (now(), %s, %s, %s, %s, %s, sha256(random()::text::bytea))", rows)
        stored = conn.execute("SELECT topic, enterprise, reason, detail, raw FROM quarantine ORDER BY id").fetchall()
    assert [(*r[:4], bytes(r[4])) for r in stored] == rows
