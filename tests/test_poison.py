"""A poison message never stops ingestion: whatever goes wrong with one message's content
(decoding it, applying its items, storing it) ends as one quarantine row for it, the
message is acknowledged, and everything else is stored.

The safety net is tested on its own (a decoder made to raise, values the real database
refuses) and end to end (`nhjc run` on a real broker and database, fed the inputs that
used to stop it)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid

import asyncpg
import numpy as np
import psycopg
import pytest
from prometheus_client import CollectorRegistry

import ingest.batcher
from config.settings import IngestSettings
from ingest.batch import READING_DTYPE, ReadingBatch, Source
from ingest.batcher import Batcher, RegistryCache
from ingest.collector import Message
from ingest.items import ItemSpec
from ingest.lookups import until_database
from ingest.metrics import IngestMetrics
from ingest.registry import known_codes, upsert_items
from ingest.stage import IngestStage
from ingest.store import Store
from runtime.dberrors import DatabaseHealth
from tests.harness import wait_count
from tools.gateway import Gateway, enterprise_code, item
from tools.process import ServiceProcess, count, query, wait_for

CODE = "01-00-0000-023300-01"
NOW_S = int(time.time()) - 3600
SETTINGS = IngestSettings(late_horizon_s=10 * 86400.0, batch_rows=10_000, batch_ms=20)


def frame(readings: list[dict[str, object]]) -> bytes:
    return json.dumps({"v": 1, "readings": readings}).encode()


def good_frame(n: int, value: float = 1000.0) -> bytes:
    return frame([{"code": CODE, "ts": NOW_S + 60 * n, "value": value + n}])


def message(topic: str, payload: bytes, n: int) -> Message:
    return Message(topic, payload, time.time_ns() // 1000, n)  # type: ignore[arg-type]  # any handle will do


def metric(registry: CollectorRegistry, stage: str, error_type: str) -> float:
    return registry.get_sample_value("nhjc_message_errors_total", {"stage": stage, "error_type": error_type}) or 0.0


class AckLog:
    """Stands in for the collector: records what would be acknowledged, in order."""

    def __init__(self) -> None:
        self.acked: list[object] = []
        self.forgotten: list[object] = []  # left unacknowledged, their place freed

    def ack(self, handles: list[object]) -> int:
        self.acked.extend(handles)
        return len(handles)

    def forget(self, handles: list[object]) -> None:
        self.forgotten.extend(handles)

    def pause(self) -> None:
        """Shutdown: nothing more is read (nothing is, here)."""


async def batcher_for(pool: asyncpg.Pool | None, queue: asyncio.Queue[Message], codes: dict[str, frozenset[str]],
                      metrics: IngestMetrics) -> Batcher:
    async def load() -> dict[str, frozenset[str]]:
        return await known_codes(pool) if pool is not None else codes

    async def apply(items: list[ItemSpec], source: str) -> None:
        assert pool is not None
        async with pool.acquire() as conn:
            await upsert_items(conn, items, source)

    registry = RegistryCache(load)
    await registry.reload(force=True)
    return Batcher(SETTINGS, queue=queue, registry=registry, apply_items=apply, metrics=metrics)


# --- the batcher's guard ------------------------------------------------------------------

@pytest.mark.parametrize("error", [RecursionError, OverflowError, UnicodeEncodeError, KeyError, AttributeError])
async def test_a_decoder_that_raises_costs_one_message_only(monkeypatch, caplog, error) -> None:
    ent = enterprise_code(801)
    topic = f"nhjc/v1/{ent}/gw-1/readings"
    real = ingest.batcher.decode_readings_into

    def decode(cols, topic_name, t, payload, *args, **kw):  # type: ignore[no-untyped-def]
        if b"poison" in payload:
            cols.ts.append(0)  # half-way through: whatever it added is taken back
            raise error("utf-8", "x", 0, 1, "boom") if error is UnicodeEncodeError else error("boom")
        return real(cols, topic_name, t, payload, *args, **kw)

    monkeypatch.setattr(ingest.batcher, "decode_readings_into", decode)
    registry = CollectorRegistry()
    queue: asyncio.Queue[Message] = asyncio.Queue()
    batcher = await batcher_for(None, queue, {ent: frozenset({CODE})}, IngestMetrics(registry))
    poison = b'{"v": 1, "poison": true}'
    for n, payload in enumerate([good_frame(0), poison, good_frame(1)]):
        queue.put_nowait(message(topic, payload, n))
    stop = asyncio.Event()
    stop.set()  # take what is queued, then return
    with caplog.at_level(logging.WARNING, "nhjc.ingest"):
        batch = await batcher.next_batch(stop)
    assert batch is not None
    assert list(batch.rows["value"]) == [1000.0, 1001.0]
    assert [(q.reason, q.detail, q.raw, q.enterprise, q.topic) for q in batch.quarantine] == [
        ("decode_failed", error.__name__, poison, ent, topic)]
    assert batch.handles == [0, 1, 2]  # every message acknowledged once the batch commits
    assert [(s.rows, s.quarantine) for s in batch.sources] == [(1, 0), (0, 1), (1, 0)]
    assert metric(registry, "decode", error.__name__) == 1
    assert any(topic in r.getMessage() and error.__name__ in r.getMessage() for r in caplog.records)


async def test_items_and_topic_parsers_that_raise_are_guarded_too(monkeypatch) -> None:
    ent = enterprise_code(802)

    def boom(*args: object) -> None:
        raise RecursionError("deep")

    monkeypatch.setattr(ingest.batcher, "parse_items_payload", boom)
    registry = CollectorRegistry()
    queue: asyncio.Queue[Message] = asyncio.Queue()
    batcher = await batcher_for(None, queue, {}, IngestMetrics(registry))
    part = await batcher.decode(message(f"nhjc/v1/{ent}/gw-1/items", b'{"v": 1, "items": []}', 7))
    assert [(q.reason, q.detail) for q in part.quarantine] == [("decode_failed", "RecursionError")]
    assert part.handles == [7]
    monkeypatch.setattr(ingest.batcher, "parse_topic", boom)
    part = await batcher.decode(message(f"nhjc/v1/{ent}/gw-1/readings", good_frame(0), 8))
    assert [(q.reason, q.enterprise) for q in part.quarantine] == [("decode_failed", None)]
    assert metric(registry, "decode", "RecursionError") == 2


# --- items the database refuses -----------------------------------------------------------

async def test_items_the_database_refuses_are_quarantined_and_none_applied(db) -> None:
    ent = enterprise_code(803)
    topic = f"nhjc/v1/{ent}/gw-1/items"
    pool = await asyncpg.create_pool(db)
    try:
        # A constraint stands in for any refusal of a validated item: the message's
        # other item must not be applied without it (one transaction per message).
        await pool.execute("ALTER TABLE items ADD CONSTRAINT test_refused CHECK (unit <> 'refused')")
        registry = CollectorRegistry()
        queue: asyncio.Queue[Message] = asyncio.Queue()
        batcher = await batcher_for(pool, queue, {}, IngestMetrics(registry))
        refused = json.dumps({"v": 1, "items": [item(CODE), item("01-00-0000-023300-02", unit="refused")]}).encode()
        nul_name = json.dumps({"v": 1, "items": [item("01-00-0000-023300-03", name="meter\u0000A")]}).encode()
        good = json.dumps({"v": 1, "items": [item(CODE, multiplier=5)]}).encode()
        parts = [await batcher.decode(message(topic, p, n)) for n, p in enumerate([refused, nul_name, good])]
        assert [[q.reason for q in p.quarantine] for p in parts] == [["bad_item"], ["bad_item"], []]
        assert "CheckViolationError (SQLSTATE 23514)" in parts[0].quarantine[0].detail
        assert parts[0].quarantine[0].raw == refused
        assert [tuple(r) for r in await pool.fetch("SELECT code, multiplier FROM items")] == [(CODE, 5.0)]
        assert metric(registry, "items", "CheckViolationError") == 1
        # The rows are storable: nothing the gateway wrote can refuse its own quarantine row.
        batch = ReadingBatch.concat(parts)
        await Store(pool).write(batch)
        assert await pool.fetchval("SELECT count(*) FROM quarantine WHERE reason = 'bad_item'") == 2
    finally:
        await pool.close()


async def test_items_are_retried_while_the_database_is_away() -> None:
    # The stage hands the batcher its items writer wrapped in the retry for the
    # database being away: such an error never reaches the batcher as the message's fault.
    ent = enterprise_code(804)
    calls: list[int] = []

    async def flaky(items: list[ItemSpec], source: str) -> None:
        calls.append(len(items))
        if len(calls) < 3:
            raise ConnectionRefusedError("database away")

    async def load() -> dict[str, frozenset[str]]:
        return {}

    quick = SETTINGS.model_copy(update={"pause_min_s": 0.01, "pause_max_s": 0.02})
    health = DatabaseHealth()
    retried = until_database("items", flaky, settings=quick, health=health)
    batcher = Batcher(quick, queue=asyncio.Queue(), registry=RegistryCache(load), apply_items=retried,
                      metrics=IngestMetrics(CollectorRegistry()))
    part = await batcher.decode(message(f"nhjc/v1/{ent}/gw-1/items",
                                        json.dumps({"v": 1, "items": [item(CODE)]}).encode(), 1))
    assert calls == [1, 1, 1] and part.quarantine == []
    assert batcher._registry.codes(ent) == {CODE}
    assert health.up is True and health.retries.labels("items")._value.get() == 2


# --- the store's refusals, bisected down to the message -------------------------------------

def _part(n: int, enterprise: bytes, ts_us: int, payload: bytes, value: float | None = None) -> ReadingBatch:
    """A batch part as the batcher makes it: one message, one reading, handle n."""
    rows = np.zeros(1, READING_DTYPE)
    received = time.time_ns() // 1000
    rows[0] = (enterprise, CODE.encode(), ts_us, float(n) if value is None else value, 0, received)
    topic = f"nhjc/v1/{enterprise.decode('latin-1')}/gw-1/readings"
    return ReadingBatch(rows, [], [n], 1, [Source(topic, None, received, payload, 1, 0, 1)])


async def _stage(pool: asyncpg.Pool) -> tuple[IngestStage, AckLog, CollectorRegistry]:
    """The ingest stage over the pool, with the test as its collector."""
    registry = CollectorRegistry()
    metrics = IngestMetrics(registry)
    acks = AckLog()
    batcher = await batcher_for(pool, asyncio.Queue(), {}, metrics)
    stage = IngestStage(collector=acks, batcher=batcher, store=Store(pool), metrics=metrics)  # type: ignore[arg-type]
    return stage, acks, registry


async def test_store_refusal_quarantines_only_the_message_at_fault(db) -> None:
    ent = enterprise_code(805).encode()
    t = (NOW_S - 86400) * 1_000_000
    pool = await asyncpg.create_pool(db)
    try:
        stage, acks, registry = await _stage(pool)
        # Message 3: an enterprise column PostgreSQL refuses (not UTF-8); message 6: a time
        # beyond timestamptz's range.  Both are values the database itself rejects.
        parts = [_part(n, ent, t + n * 60_000_000, f"frame {n}".encode()) for n in range(8)]
        parts[3] = _part(3, b"\xff" * 18, t, b"frame 3")
        parts[6] = _part(6, ent, -(2**62), b"frame 6")
        await stage.commit(ReadingBatch.concat(parts))
        assert acks.acked == list(range(8))  # each once, in order
        stored = await pool.fetch("SELECT value FROM readings ORDER BY ts")
        assert [r["value"] for r in stored] == [0.0, 1.0, 2.0, 4.0, 5.0, 7.0]
        q = await pool.fetch("SELECT reason, detail, raw, enterprise FROM quarantine ORDER BY id")
        assert [(r["reason"], r["raw"], r["enterprise"]) for r in q] == [
            ("store_rejected", b"frame 3", None), ("store_rejected", b"frame 6", None)]
        assert "CharacterNotInRepertoireError (SQLSTATE 22021)" in q[0]["detail"]
        assert "SQLSTATE 22008" in q[1]["detail"]  # datetime field overflow
        assert metric(registry, "store", "CharacterNotInRepertoireError") == 1
    finally:
        await pool.close()


async def test_a_refused_quarantine_row_falls_back_to_a_minimal_one_and_never_loops(db) -> None:
    ent = enterprise_code(806)
    t = (NOW_S - 86400) * 1_000_000
    pool = await asyncpg.create_pool(db)
    try:
        stage, acks, registry = await _stage(pool)
        await pool.execute("ALTER TABLE readings ADD CONSTRAINT test_refused CHECK (value <> 1.0)")
        await pool.execute(f"ALTER TABLE quarantine ADD CONSTRAINT test_refused CHECK (enterprise <> '{ent}')")
        batch = _part(1, ent.encode(), t, b"frame 1")
        batch.sources[0] = Source(batch.sources[0].topic, ent, batch.sources[0].received_at_us, b"frame 1", 1, 0, 1)
        await stage.commit(batch)
        assert acks.acked == [1]
        assert [tuple(r) for r in await pool.fetch("SELECT reason, enterprise, raw FROM quarantine")] == [
            ("store_rejected", None, b"frame 1")]
        # Even the minimal row refused: the message stays unacknowledged, ingestion goes on.
        await pool.execute("ALTER TABLE quarantine ADD CONSTRAINT test_refused_all CHECK (reason <> 'store_rejected') NOT VALID")
        await stage.commit(_part(2, ent.encode(), t, b"frame 2", value=1.0))
        assert acks.acked == [1] and acks.forgotten == [2]  # its place in the window freed
        assert metric(registry, "store", "CheckViolationError") == 5  # each message refused, then its rows: one, then two
        await stage.commit(_part(3, ent.encode(), t + 60_000_000, b"frame 3"))
        assert acks.acked == [1, 3]
    finally:
        await pool.close()


# --- end to end -------------------------------------------------------------------------------

def deep(depth: int) -> bytes:
    return b'{"v": 1, "readings": ' + b"[" * depth + b"]" * depth + b"}"


def raw_reading(code: str, ts: str, value: str) -> bytes:
    """A one-reading frame written by hand: JSON that json.dumps would never produce."""
    return f'{{"v": 1, "readings": [{{"code": {code}, "ts": {ts}, "value": {value}}}]}}'.encode()


REFUSED_VALUE = 666.25  # the e2e database refuses this value (a constraint added by the test)

# topic kind, payload, the reasons its one quarantine row may carry: decode_failed is what
# the guard gives while a decoder raises; the others are what a decoder that no longer
# raises gives for the same input.
POISON = {
    "deep": (deep(2000), {"decode_failed", "bad_json", "bad_shape"}),
    "huge_value": (raw_reading(f'"{CODE}"', str(NOW_S), "1" + "0" * 399), {"decode_failed", "bad_value", "not_finite"}),
    "huge_ts": (raw_reading(f'"{CODE}"', "1" + "0" * 399, "5.0"), {"decode_failed", "bad_timestamp"}),
    "surrogate": (raw_reading('"\\ud800"', str(NOW_S), "5.0"), {"decode_failed", "bad_code", "bad_json"}),
    "store_refused": (frame([{"code": CODE, "ts": NOW_S, "value": REFUSED_VALUE}]), {"store_rejected"}),
}


def test_poison_messages_never_stop_the_service_and_cost_only_themselves(broker, db, tmp_path) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE readings ADD CONSTRAINT test_refused CHECK (value <> {REFUSED_VALUE})")
    good_ents = [enterprise_code(811), enterprise_code(812)]
    bad_ent = enterprise_code(813)
    gws = [Gateway(broker.url, e, gateway="gw-good") for e in good_ents]
    bad = Gateway(broker.url, bad_ent, gateway="gw-poison")
    svc = ServiceProcess(broker.url, db, log=tmp_path / "svc.log").start()
    try:
        for gw in [*gws, bad]:
            gw.items([item(CODE)])
        wait_count(db, "SELECT count(*) FROM items WHERE enterprise = ANY(%s)", 3, 20, [*good_ents, bad_ent])
        bad.items([item("01-00-0000-023300-02", name="meter\u0000A")])  # retained, refused
        sent = 0
        for name, (payload, _) in POISON.items():
            for gw in gws:
                gw.readings([{"code": CODE, "ts": NOW_S + 60 * sent, "value": 100.0 + sent}])
            sent += 1
            bad.publish_raw(bad.topic("readings"), payload)
            assert name and svc.proc is not None and svc.proc.poll() is None
        for gw in gws:
            gw.readings([{"code": CODE, "ts": NOW_S + 60 * sent, "value": 100.0 + sent}])
        sent += 1
        for ent in good_ents:
            wait_count(db, "SELECT count(*) FROM readings WHERE enterprise = %s", sent, 30, ent)
        wait_count(db, "SELECT count(*) FROM quarantine WHERE enterprise = %s OR topic LIKE %s",
                   len(POISON) + 1, 30, bad_ent, f"%{bad_ent}%")
        assert svc.http("/readyz")[0] == 200 and svc.proc is not None and svc.proc.poll() is None

        # One row per poison message, in the order they were sent (one gateway, QoS 1).
        got = [r for (r,) in query(db, "SELECT reason FROM quarantine WHERE topic = %s ORDER BY id",
                                   bad.topic("readings"))]
        assert len(got) == len(POISON), got
        for (name, (_, reasons)), reason in zip(POISON.items(), got, strict=True):
            assert reason in reasons, f"{name}: {reason}"
        assert query(db, "SELECT raw FROM quarantine WHERE reason = 'store_rejected'") == [
            (POISON["store_refused"][0],)]
        assert query(db, "SELECT reason FROM quarantine WHERE topic = %s", bad.topic("items")) == [("bad_item",)]
        assert count(db, "SELECT count(*) FROM readings WHERE enterprise = %s", bad_ent) == 0
        assert count(db, "SELECT count(*) FROM items WHERE enterprise = %s", bad_ent) == 1  # the refused item not applied
        for ent in good_ents:
            values = [v for (v,) in query(db, "SELECT value FROM readings WHERE enterprise = %s ORDER BY ts", ent)]
            assert values == [100.0 + i for i in range(sent)]  # each exactly once

        # The gateway fixes its retained items (an empty retained message clears them), then
        # a restart: none of the poison is redelivered, because all of it was acknowledged.
        bad.publish_raw(bad.topic("items"), b"", retain=True)
        before = count(db, "SELECT count(*) FROM quarantine")
        assert svc.stop() == 0
        svc = ServiceProcess(broker.url, db, client_id=svc.env["NHJC_MQTT__CLIENT_ID"],
                             log=tmp_path / "svc.log").start()
        gws[0].readings([{"code": CODE, "ts": NOW_S + 60 * sent, "value": 100.0 + sent}])  # a marker, after any redelivery
        wait_count(db, "SELECT count(*) FROM readings WHERE enterprise = %s", sent + 1, 30, good_ents[0])
        assert count(db, "SELECT count(*) FROM quarantine") == before
    finally:
        assert svc.stop() == 0
        for gw in [*gws, bad]:
            gw.close()


def test_a_retained_poison_items_message_does_not_stop_start_up(broker, db, tmp_path) -> None:
    """The retained message is delivered again at every start: each start quarantines it
    (bad_item) and carries on, where it used to stop the service every time."""
    bad_ent, good_ent = enterprise_code(821), enterprise_code(822)
    bad = Gateway(broker.url, bad_ent, gateway="gw-poison")
    good = Gateway(broker.url, good_ent, gateway="gw-good")
    bad.items([item(CODE, name="meter\u0000A")])
    good.items([item(CODE)])
    svc: ServiceProcess | None = None
    client_id = f"nhjc-poison-{uuid.uuid4().hex[:8]}"
    try:
        for start in range(2):
            svc = ServiceProcess(broker.url, db, client_id=client_id, log=tmp_path / "svc.log").start()
            good.readings([{"code": CODE, "ts": NOW_S + 60 * start, "value": float(start)}])
            wait_count(db, "SELECT count(*) FROM readings WHERE enterprise = %s", start + 1, 30, good_ent)
            wait_for(lambda: count(db, "SELECT count(*) FROM quarantine WHERE topic = %s", bad.topic("items")) >= 1,
                     15, "the poison items quarantined")
            assert svc.http("/readyz")[0] == 200
            assert svc.stop() == 0
            svc = None
        reasons = {r for (r,) in query(db, "SELECT reason FROM quarantine WHERE topic = %s", bad.topic("items"))}
        assert reasons == {"bad_item"}
        assert count(db, "SELECT count(*) FROM items WHERE enterprise = %s", bad_ent) == 0
    finally:
        if svc is not None:
            svc.stop()
        bad.close()
        good.close()
