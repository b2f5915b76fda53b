"""The items registry in the database: last writer wins, every change recorded."""

from __future__ import annotations

import json
from collections.abc import Iterable

import asyncpg

from ingest.items import ItemSpec

__all__ = ["known_codes", "queue_item_recompute", "upsert_items"]

_QUEUE_ITEM = """
INSERT INTO pending_recompute (enterprise, code, from_ts, to_ts)
SELECT $1, $2, min(ts), max(ts) FROM readings WHERE enterprise = $1 AND code = $2
HAVING count(*) > 0
"""


async def queue_item_recompute(conn: asyncpg.Connection, enterprise: str, code: str) -> None:
    """Queue a recomputation of an item's whole history, e.g. after its multiplier,
    rollover, range, scope or coefficient changed."""
    await conn.execute(_QUEUE_ITEM, enterprise, code)


_FIELDS = ("name", "energy", "unit", "kind", "multiplier", "rollover", "min", "max",
           "scope", "input_type", "coefficient")

_UPSERT = f"""
INSERT INTO items AS i (enterprise, code, {", ".join(_FIELDS)}, source, updated_at)
VALUES ($1, $2, {", ".join(f"${n}" for n in range(3, 3 + len(_FIELDS)))}, ${3 + len(_FIELDS)}, now())
ON CONFLICT (enterprise, code) DO UPDATE SET
    {", ".join(f"{f} = EXCLUDED.{f}" for f in _FIELDS)},
    source = EXCLUDED.source, updated_at = now()
WHERE ({", ".join(f"i.{f}" for f in _FIELDS)}) IS DISTINCT FROM ({", ".join(f"EXCLUDED.{f}" for f in _FIELDS)})
RETURNING enterprise
"""


async def upsert_items(conn: asyncpg.Connection, items: Iterable[ItemSpec], source: str) -> int:
    """Store items; an unchanged item is left alone.  Returns how many changed."""
    changed = 0
    async with conn.transaction():
        for item in items:
            rec = item.record()
            row = await conn.fetchrow(_UPSERT, item.enterprise, item.code,
                                      *(rec[f] for f in _FIELDS), source)
            if row is not None:
                changed += 1
                # A new multiplier, rollover, range or coefficient changes every period
                # the item's readings make: recompute them all (nothing when it has none).
                await queue_item_recompute(conn, item.enterprise, item.code)
                await conn.execute(
                    "INSERT INTO items_history (enterprise, code, source, item) VALUES ($1, $2, $3, $4::jsonb)",
                    item.enterprise, item.code, source, json.dumps(rec, ensure_ascii=False),
                )
    return changed


async def known_codes(conn: asyncpg.Connection | asyncpg.Pool) -> dict[str, frozenset[str]]:
    """enterprise -> its registered item codes."""
    found: dict[str, set[str]] = {}
    for r in await conn.fetch("SELECT enterprise, code FROM items"):
        found.setdefault(r["enterprise"], set()).add(r["code"])
    return {e: frozenset(c) for e, c in found.items()}
