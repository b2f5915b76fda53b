"""The store on a real TimescaleDB: duplicates, corrections, pending work, quarantine."""

import asyncpg
import numpy as np

from ingest.batch import READING_DTYPE, Quarantined, ReadingBatch
from ingest.store import Store, last_per_key

ENT = b"91350100M000100Y43"
A, B = b"01-00-0000-023300-01", b"01-00-0000-023300-02"
T = 1_764_303_300_000_000


def rows(*spec: tuple[bytes, int, float]) -> np.ndarray:
    out = np.zeros(len(spec), READING_DTYPE)
    for i, (code, ts, value) in enumerate(spec):
        out[i] = (ENT, code, ts, value, 0, T)
    return out


def test_last_per_key_keeps_the_last_arrival_sorted() -> None:
    r = last_per_key(rows((B, T, 1.0), (A, T + 60, 2.0), (A, T, 3.0), (B, T, 4.0), (A, T, 5.0)))
    assert [(c, t - T, v) for c, t, v in zip(r["code"], r["ts"], r["value"], strict=True)] == [
        (A, 0, 5.0), (A, 60, 2.0), (B, 0, 4.0)]


async def test_batches_upsert_and_queue_recompute_only_for_changes(db) -> None:
    pool = await asyncpg.create_pool(db)
    try:
        store = Store(pool)
        s = 1_000_000
        assert await store.write(ReadingBatch(rows((A, T, 1.0), (A, T + 60 * s, 2.0), (A, T, 1.5)))) == 2
        assert await store.write(ReadingBatch(rows((A, T, 1.5), (A, T + 60 * s, 2.0)))) == 0  # redelivery
        assert await store.write(ReadingBatch(rows((A, T + 60 * s, 2.5), (B, T, 9.0)))) == 2  # a correction
        got = await pool.fetch("SELECT code, value FROM readings ORDER BY code, ts")
        assert [(r["code"], r["value"]) for r in got] == [
            (A.decode(), 1.5), (A.decode(), 2.5), (B.decode(), 9.0)]
        pending = await pool.fetch("SELECT code, from_ts, to_ts FROM pending_recompute ORDER BY id")
        assert [(p["code"], p["from_ts"] == p["to_ts"]) for p in pending] == [
            (A.decode(), False), (A.decode(), True), (B.decode(), True)]
        q = Quarantined(T, "nhjc/v1/x/y/readings", None, "bad_json", "not JSON", b"\x00\xff")
        await store.write(ReadingBatch(np.empty(0, READING_DTYPE), [q]))
        row = await pool.fetchrow("SELECT reason, raw, enterprise FROM quarantine")
        assert (row["reason"], row["raw"], row["enterprise"]) == ("bad_json", b"\x00\xff", None)
    finally:
        await pool.close()


async def test_new_keys_copied_straight_in_are_stored_exactly_and_queued(db) -> None:
    # A batch of new keys goes by COPY straight into readings (timestamps in PostgreSQL's
    # own binary form), a batch with a stored key by the staged upsert: both store the
    # same microseconds, and queue each item's first and last time.
    pool = await asyncpg.create_pool(db)
    try:
        store = Store(pool)
        r = rows((B, T + 1, 7.0), (A, T + 123_457, 1.0), (A, T + 3_600_000_001, 2.0))
        r["received_at"] = T + 999_999
        r["quality"] = [0, 4, 0]
        assert await store.write(ReadingBatch(r)) == 3
        us = "(extract(epoch FROM {}) * 1000000)::int8"
        got = await pool.fetch(f"SELECT code, {us.format('ts')} AS ts, value, quality, "
                               f"{us.format('received_at')} AS rec FROM readings ORDER BY code, ts")
        assert [tuple(g) for g in got] == [
            (A.decode(), T + 123_457, 1.0, 4, T + 999_999), (A.decode(), T + 3_600_000_001, 2.0, 0, T + 999_999),
            (B.decode(), T + 1, 7.0, 0, T + 999_999)]
        pending = await pool.fetch(f"SELECT code, {us.format('from_ts')} AS f, {us.format('to_ts')} AS t "
                                   "FROM pending_recompute ORDER BY code")
        assert [tuple(p) for p in pending] == [(A.decode(), T + 123_457, T + 3_600_000_001),
                                               (B.decode(), T + 1, T + 1)]
        # One stored key (unchanged) among new ones: nothing lost, the new ones written.
        assert await store.write(ReadingBatch(rows((A, T + 123_457, 1.0), (B, T + 60, 8.0)))) == 1
        # ... and after a batch that wrote every reading, new keys are copied again.
        assert await store.write(ReadingBatch(rows((B, T + 120, 9.0)))) == 1
        assert await store.write(ReadingBatch(rows((B, T + 180, 9.5)))) == 1
        assert await pool.fetchval("SELECT count(*) FROM readings") == 6
        assert await pool.fetchval("SELECT count(*) FROM pending_recompute") == 5
    finally:
        await pool.close()


async def test_a_redelivered_bad_input_is_quarantined_once(db) -> None:
    # A message comes again when its acknowledgement was lost (a crash after the commit):
    # its readings change nothing, and its quarantine rows are not stored a second time.
    pool = await asyncpg.create_pool(db)
    try:
        store = Store(pool)
        topic = "nhjc/v1/x/y/readings"
        frame = Quarantined(T, topic, None, "bad_json", "not JSON", b"{oops")
        reading = Quarantined(T, topic, None, "not_finite", "readings[0]: value NaN is not finite",
                              b'{"value": NaN}', "reading")
        other = Quarantined(T, topic, None, "not_finite", "readings[1]: value NaN is not finite",
                            b'{"value": NaN}', "reading")
        await store.write(ReadingBatch(rows((A, T, 1.0)), [frame, reading]))
        again = [Quarantined(T + 5_000_000, *(q.topic, q.enterprise, q.reason, q.detail, q.raw, q.level))
                 for q in (frame, reading)]
        await store.write(ReadingBatch(rows((A, T, 1.0)), [*again, other, other]))
        got = await pool.fetch("SELECT reason, detail, received_at FROM quarantine ORDER BY id")
        assert [(r["reason"], r["detail"]) for r in got] == [
            ("bad_json", "not JSON"), ("not_finite", "readings[0]: value NaN is not finite"),
            ("not_finite", "readings[1]: value NaN is not finite")]
        assert await pool.fetchval("SELECT count(*) FROM readings") == 1
    finally:
        await pool.close()


async def test_migration_keys_the_quarantine_rows_stored_before_it() -> None:
    # Rows written before the fingerprint existed get the digest the store computes, and
    # copies among them are folded into the first.
    from ingest.store import fingerprint
    from runtime.migrate import migrate
    from tools.guest import create_database, drop_database

    dsn = await create_database()
    try:
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(dsn)
            await conn.execute("DROP INDEX quarantine_fingerprint; ALTER TABLE quarantine DROP COLUMN fingerprint;"
                               "DELETE FROM schema_migrations WHERE version = 4")
            for _ in range(2):
                await conn.execute("INSERT INTO quarantine (received_at, topic, reason, detail, raw) "
                                   "VALUES (now(), 't/ü', 'bad_json', 'détail', '\\x00ff'::bytea)")
            assert await migrate(dsn) == ["0004_quarantine_once.sql"]
            got = await conn.fetch("SELECT fingerprint FROM quarantine")
            assert [r["fingerprint"] for r in got] == [fingerprint("t/ü", "bad_json", "détail", b"\x00\xff")]
        finally:
            await conn.close()
    finally:
        await drop_database(dsn)
