"""Rows written straight into the instrument tables of migration 0008 (meters,
meter_verifications, meter_replacements), for tests that need instruments without the
registry's loader."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import asyncpg

__all__ = ["add_meter", "add_replacement", "add_verification"]

_DEFAULTS: dict[str, Any] = {
    "meter_name": "1# 主变进线电能表", "meter_type": "电能表", "meter_level": 1, "data_codes": [],
    "report_ratio": 1.0, "precision_level": "0.5S", "manufacturer": "威胜", "model": "DTSD341",
    "install_place": "1# 配电室", "align_state": "verified", "align_cycle": 12,
    "last_align_date": date(2026, 3, 1), "next_align_date": date(2027, 2, 28), "align_org": "安徽省计量科学研究院",
    "retired_at": None,
}


async def add_meter(conn: asyncpg.Connection, enterprise: str, ser_no: str, **fields: Any) -> None:
    """Insert or replace one instrument (``fields`` by column name override the defaults)."""
    row = {**_DEFAULTS, **fields}
    cols = list(row)
    await conn.execute(
        f"INSERT INTO meters (enterprise, ser_no, source, {', '.join(cols)})"
        f" VALUES ($1, $2, 'test', {', '.join(f'${i + 3}' for i in range(len(cols)))})"
        f" ON CONFLICT (enterprise, ser_no) DO UPDATE SET {', '.join(f'{c} = EXCLUDED.{c}' for c in cols)},"
        " updated_at = now()",
        enterprise, ser_no, *row.values())


async def add_verification(conn: asyncpg.Connection, enterprise: str, ser_no: str, valid_from: date,
                           valid_until: date, *, align_state: str = "verified", align_org: str = "") -> None:
    await conn.execute(
        "INSERT INTO meter_verifications (enterprise, ser_no, valid_from, valid_until, align_state, align_org)"
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        enterprise, ser_no, valid_from, valid_until, align_state, align_org)


async def add_replacement(conn: asyncpg.Connection, enterprise: str, code: str, at: datetime, *, old_ser_no: str,
                          new_ser_no: str, old_final: float, new_initial: float) -> None:
    await conn.execute(
        "INSERT INTO meter_replacements (enterprise, code, replaced_at, old_ser_no, new_ser_no, old_final,"
        " new_initial, source) VALUES ($1, $2, $3, $4, $5, $6, $7, 'test')",
        enterprise, code, at, old_ser_no, new_ser_no, old_final, new_initial)
