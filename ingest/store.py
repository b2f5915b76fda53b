"""The TimescaleDB store for accepted readings and quarantine rows.

A batch is written in one transaction.  Its readings (the COPY data built with numpy,
no per-row Python) go first by binary COPY straight into ``readings``: the usual batch
holds only new keys, and that is the cheapest write the table allows (about twice the
upsert's rate).  Should a key be stored already (a redelivered message, a gateway's
correction), that transaction is rolled back and the batch goes the careful way in a
new one: COPY into a temporary staging table, then into ``readings`` with ON
CONFLICT on (enterprise, code, ts), so a redelivered message never fails a batch; the
next batch goes that way too, and the direct COPY is tried again after a batch that
had no stored keys.  Every item whose readings changed gets a ``pending_recompute``
row in the same transaction, so the aggregator can never miss them, whatever crashes
when.  Quarantine rows go by COPY too.

Quarantine rows are keyed as well, by a fingerprint of what they say: a message that
comes again (its acknowledgement lost to a crash or a cut connection) adds no second row.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np

from ingest.batch import CODE_LEN, ENTERPRISE_LEN, Quarantined, ReadingBatch
from ingest.frames import pg_text

__all__ = ["Store", "copy_data", "last_per_key", "write_quarantine"]

_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
_TRAILER = (-1).to_bytes(2, "big", signed=True)
_COPY_DTYPE = np.dtype(
    [
        ("nfields", ">i2"),
        ("l_enterprise", ">i4"), ("enterprise", f"S{ENTERPRISE_LEN}"),
        ("l_code", ">i4"), ("code", f"S{CODE_LEN}"),
        ("l_ts", ">i4"), ("ts", ">i8"),
        ("l_value", ">i4"), ("value", ">f8"),
        ("l_quality", ">i4"), ("quality", ">i2"),
        ("l_received_at", ">i4"), ("received_at", ">i8"),
    ]
)
_LENGTHS = {"enterprise": ENTERPRISE_LEN, "code": CODE_LEN, "ts": 8, "value": 8,
            "quality": 2, "received_at": 8}
_PENDING_DTYPE = np.dtype(
    [
        ("nfields", ">i2"),
        ("l_enterprise", ">i4"), ("enterprise", f"S{ENTERPRISE_LEN}"),
        ("l_code", ">i4"), ("code", f"S{CODE_LEN}"),
        ("l_from", ">i4"), ("from", ">i8"),
        ("l_to", ">i4"), ("to", ">i8"),
    ]
)
_PG_EPOCH_US = 946_684_800_000_000  # binary timestamptz counts from 2000-01-01
_COLUMNS = ["enterprise", "code", "ts", "value", "quality", "received_at"]

_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS nhjc_staging (
    enterprise text, code text, ts bigint, value double precision,
    quality smallint, received_at bigint
) ON COMMIT DELETE ROWS
"""

# Staged keys are unique (see last_per_key); a stored row is rewritten only when the
# value differs, so a redelivery changes nothing.
_MERGE = """
WITH staged AS (
    SELECT enterprise, code,
           'epoch'::timestamptz + ts * interval '1 microsecond' AS ts,
           value, quality,
           'epoch'::timestamptz + received_at * interval '1 microsecond' AS received_at
    FROM nhjc_staging
), written AS (
    INSERT INTO readings AS r (enterprise, code, ts, value, quality, received_at)
    SELECT * FROM staged
    ON CONFLICT (enterprise, code, ts) DO UPDATE
        SET value = EXCLUDED.value, quality = EXCLUDED.quality, received_at = EXCLUDED.received_at
        WHERE r.value IS DISTINCT FROM EXCLUDED.value
    RETURNING enterprise, code, ts
), pending AS (
    INSERT INTO pending_recompute (enterprise, code, from_ts, to_ts)
    SELECT enterprise, code, min(ts), max(ts) FROM written GROUP BY enterprise, code
)
SELECT count(*) FROM written
"""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def last_per_key(rows: np.ndarray) -> np.ndarray:
    """One row per (enterprise, code, ts), the last in arrival order (a gateway's
    correction comes after the value it corrects), sorted by key: INSERT ... ON CONFLICT
    may not touch a row twice, and sorted keys are kinder to the index."""
    if len(rows) < 2:
        return rows
    order = np.lexsort((np.arange(len(rows)), rows["ts"], rows["code"], rows["enterprise"]))
    s = rows[order]
    last = np.ones(len(s), bool)
    last[:-1] = (s["enterprise"][1:] != s["enterprise"][:-1]) | (s["code"][1:] != s["code"][:-1]) | (
        s["ts"][1:] != s["ts"][:-1])
    return s[last]


def copy_data(rows: np.ndarray, *, timestamps: bool = False) -> bytes:
    """PostgreSQL binary COPY data for staging rows (times as int8 microseconds since
    1970), or with ``timestamps`` for ``readings`` itself (timestamptz), built
    column-wise with numpy."""
    out = np.empty(len(rows), _COPY_DTYPE)
    out["nfields"] = len(_LENGTHS)
    for name, length in _LENGTHS.items():
        out[f"l_{name}"] = length
        out[name] = rows[name]
    if timestamps:
        out["ts"] = rows["ts"] - _PG_EPOCH_US
        out["received_at"] = rows["received_at"] - _PG_EPOCH_US
    return _HEADER + out.tobytes() + _TRAILER


def pending_data(rows: np.ndarray) -> bytes:
    """Binary COPY data of ``pending_recompute`` (enterprise, code, from_ts, to_ts): one
    row per item of ``rows`` (sorted by key, as :func:`last_per_key` leaves them) with
    the first and last time of its readings."""
    new_item = np.ones(len(rows), bool)
    new_item[1:] = (rows["enterprise"][1:] != rows["enterprise"][:-1]) | (rows["code"][1:] != rows["code"][:-1])
    first = np.flatnonzero(new_item)
    last = np.append(first[1:] - 1, len(rows) - 1)
    out = np.empty(len(first), _PENDING_DTYPE)
    out["nfields"] = 4
    out["l_enterprise"], out["l_code"], out["l_from"], out["l_to"] = ENTERPRISE_LEN, CODE_LEN, 8, 8
    out["enterprise"] = rows["enterprise"][first]
    out["code"] = rows["code"][first]
    out["from"] = rows["ts"][first] - _PG_EPOCH_US
    out["to"] = rows["ts"][last] - _PG_EPOCH_US
    return _HEADER + out.tobytes() + _TRAILER


_QUARANTINE_COLUMNS = ["received_at", "topic", "enterprise", "reason", "detail", "raw", "fingerprint"]

_QUARANTINE_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS nhjc_quarantine_staging (
    received_at timestamptz, topic text, enterprise text, reason text, detail text,
    raw bytea, fingerprint bytea
) ON COMMIT DELETE ROWS
"""

_QUARANTINE_MERGE = f"""
INSERT INTO quarantine ({", ".join(_QUARANTINE_COLUMNS)})
SELECT {", ".join(_QUARANTINE_COLUMNS)} FROM nhjc_quarantine_staging
ON CONFLICT (fingerprint) DO NOTHING
"""


def fingerprint(topic: str, reason: str, detail: str, raw: bytes) -> bytes:
    """What identifies a quarantine row: its content, not its arrival time (the same
    digest migration 0004 gave the rows stored before it)."""
    return hashlib.sha256(f"{topic}\n{reason}\n{detail}\n".encode() + raw).digest()


def _quarantine_record(q: Quarantined) -> tuple[object, ...]:
    received = _EPOCH + timedelta(microseconds=q.received_at_us)
    enterprise = None if q.enterprise is None else pg_text(q.enterprise)
    topic, detail, raw = pg_text(q.topic), pg_text(q.detail), bytes(q.raw)
    return (received, topic, enterprise, q.reason, detail, raw, fingerprint(topic, q.reason, detail, raw))


class Store:
    """Writes batches; one instance per ingest stage, sharing the pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._direct = True  # the last batch had no stored keys: try the direct COPY

    async def write(self, batch: ReadingBatch) -> int:
        """Commit the batch's readings and quarantine rows; return readings written or changed."""
        rows = last_per_key(batch.rows)
        async with self._pool.acquire() as conn:
            if len(rows) and self._direct:
                try:
                    async with conn.transaction():
                        await _copy_new(conn, rows)
                        if batch.quarantine:
                            await write_quarantine(conn, batch.quarantine)
                        return len(rows)
                except asyncpg.UniqueViolationError:
                    pass  # rolled back whole: the careful way, in a transaction of its own
            async with conn.transaction():
                written = 0
                if len(rows):
                    await conn.execute(_STAGING)
                    await conn.copy_to_table("nhjc_staging", source=memoryview(copy_data(rows)), format="binary")
                    written = int(await conn.fetchval(_MERGE))
                    # A batch with keys stored unchanged (redelivered messages) is followed
                    # by more of them, usually: the direct COPY is tried again only after
                    # a batch that wrote every reading.
                    self._direct = written == len(rows)
                if batch.quarantine:
                    await write_quarantine(conn, batch.quarantine)
                return written


async def _copy_new(conn: asyncpg.Connection, rows: np.ndarray) -> None:
    """COPY ``rows`` straight into ``readings`` and queue their items' recomputation;
    UniqueViolationError when a key is stored already.  The COPY data goes as a
    buffer (a memoryview: asyncpg would take bytes for a file name): from a file-like
    object asyncpg reads in a worker thread, two thread hops per COPY, each waiting for
    a turn of the busy event loop."""
    await conn.copy_to_table("readings", source=memoryview(copy_data(rows, timestamps=True)),
                             columns=_COLUMNS, format="binary")
    await conn.copy_to_table("pending_recompute", source=memoryview(pending_data(rows)),
                             columns=["enterprise", "code", "from_ts", "to_ts"], format="binary")


async def write_quarantine(conn: asyncpg.Connection, rows: list[Quarantined]) -> None:
    """Store quarantine rows, each distinct one once (in a transaction: the staging
    table empties at commit)."""
    await conn.execute(_QUARANTINE_STAGING)
    await conn.copy_records_to_table(
        "nhjc_quarantine_staging", records=[_quarantine_record(q) for q in rows], columns=_QUARANTINE_COLUMNS,
    )
    await conn.execute(_QUARANTINE_MERGE)
