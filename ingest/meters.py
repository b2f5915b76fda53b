"""The instrument registry (计量器具台账) in the database: ``nhjc meters load FILE``.

A load replaces each listed instrument's row in ``meters`` (instruments not in the file
are left alone), keeps every change in ``meters_history`` (the entry as loaded), and adds
the verification period of a verified or calibrated instrument to ``meter_verifications``,
where periods are never removed: a later verification adds a period, it never makes the
readings of an earlier lapse valid.  An entry that says what it ``replaces`` retires the
old instrument at that time and records the replacement (ingest.replacements).

Whatever changes which instrument measures an item, or whether it was in verification,
queues the item's recomputation in the same transaction, so that the quality flags and
the ``valid`` of its periods follow.  The file's checks are in :mod:`ingest.meterspec`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from typing import Any

import asyncpg

from ingest.meterspec import (
    MetersError,
    MeterSpec,
    ReplacesSpec,
    parse_meters_file,
    parse_meters_file_bytes,
)
from ingest.registry import queue_item_recompute
from ingest.replacements import Replacement, record_replacement

__all__ = ["MeterSpec", "MetersError", "ReplacesSpec", "parse_meters_file", "parse_meters_file_bytes",
           "upsert_meters"]

_COLUMNS = ("meter_name", "meter_type", "meter_level", "data_codes", "report_ratio", "precision_level",
            "manufacturer", "model", "install_place", "align_state", "align_cycle", "last_align_date",
            "next_align_date", "align_org", "retired_at")
# What decides which readings of which items are judged, and how.
_JUDGED = ("data_codes", "align_state", "last_align_date", "next_align_date", "retired_at")

_CURRENT = f"SELECT {', '.join(_COLUMNS)} FROM meters WHERE enterprise = $1 AND ser_no = $2 FOR UPDATE"

_UPSERT = f"""
INSERT INTO meters (enterprise, ser_no, {', '.join(_COLUMNS)}, source, updated_at)
VALUES ($1, $2, {', '.join(f'${n}' for n in range(3, 3 + len(_COLUMNS)))}, ${3 + len(_COLUMNS)}, now())
ON CONFLICT (enterprise, ser_no) DO UPDATE SET
    {', '.join(f'{c} = EXCLUDED.{c}' for c in _COLUMNS)}, source = EXCLUDED.source, updated_at = now()
"""

# An instrument that a recorded replacement names as the old one stays retired from then
# on, even when a later load of its own entry does not say so.
_RETIRED_BY_REPLACEMENT = """
SELECT min(replaced_at) FROM meter_replacements WHERE enterprise = $1 AND old_ser_no = $2
"""

_RETIRE = """
UPDATE meters SET retired_at = $3, source = $4, updated_at = now()
WHERE enterprise = $1 AND ser_no = $2 AND retired_at IS DISTINCT FROM $3
RETURNING data_codes
"""

_HISTORY = "INSERT INTO meters_history (enterprise, ser_no, source, record) VALUES ($1, $2, $3, $4::jsonb)"

_PERIOD = """
INSERT INTO meter_verifications (enterprise, ser_no, valid_from, valid_until, align_state, align_org)
VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING 1
"""


def _row(spec: MeterSpec, retired_at: dt.datetime | None) -> dict[str, Any]:
    return {
        "meter_name": spec.meterName, "meter_type": spec.meterType, "meter_level": spec.meterLevel,
        "data_codes": spec.codes(), "report_ratio": spec.reportRatio, "precision_level": spec.precisionLevel,
        "manufacturer": spec.manufacturer, "model": spec.model, "install_place": spec.installPlace,
        "align_state": spec.alignState, "align_cycle": spec.alignCycle, "last_align_date": spec.lastAlignDate,
        "next_align_date": spec.nextAlignDate, "align_org": spec.alignOrg, "retired_at": retired_at,
    }


def _same(old: Mapping[str, Any], new: Mapping[str, Any], columns: Iterable[str]) -> bool:
    return all(list(old[c]) == list(new[c]) if c == "data_codes" else old[c] == new[c] for c in columns)


async def upsert_meters(conn: asyncpg.Connection, specs: Iterable[MeterSpec], source: str) -> int:
    """Store the instruments in one transaction (all or nothing); an unchanged one is left
    alone.  Returns how many instruments were added or changed (an old one retired by a
    replacement included)."""
    specs = list(specs)
    changed = 0
    recompute: set[tuple[str, str]] = set()
    async with conn.transaction():
        for spec in specs:
            old = await conn.fetchrow(_CURRENT, spec.enterprise, spec.serNo)
            retired = spec.retiredAt or await conn.fetchval(_RETIRED_BY_REPLACEMENT, spec.enterprise, spec.serNo)
            new = _row(spec, retired)
            added = False
            if spec.alignState != "none" and spec.lastAlignDate and spec.nextAlignDate:
                added = await conn.fetchval(_PERIOD, spec.enterprise, spec.serNo, spec.lastAlignDate,
                                            spec.nextAlignDate, spec.alignState, spec.alignOrg) is not None
            if old is None or not _same(old, new, _COLUMNS):
                await conn.execute(_UPSERT, spec.enterprise, spec.serNo, *(new[c] for c in _COLUMNS), source)
                await conn.execute(_HISTORY, spec.enterprise, spec.serNo, source,
                                   json.dumps(spec.record(), ensure_ascii=False, sort_keys=True))
                changed += 1
            if added or old is None or not _same(old, new, _JUDGED):
                codes = set(spec.codes()) | (set() if old is None else set(old["data_codes"]))
                recompute |= {(spec.enterprise, c) for c in codes}
        # Replacements last, so that an old instrument listed in the same file is retired
        # whatever the order of the entries.
        for spec in specs:
            r, code = spec.replaces, spec.replaced_code()
            if r is None or code is None:
                continue
            codes = await conn.fetchval(_RETIRE, spec.enterprise, r.serNo, r.time, source)
            if codes is not None:
                changed += 1
                recompute |= {(spec.enterprise, c) for c in codes}
                record = {"serNo": r.serNo, "retiredAt": r.time.isoformat(), "replacedBy": spec.serNo}
                await conn.execute(_HISTORY, spec.enterprise, r.serNo, source,
                                   json.dumps(record, ensure_ascii=False, sort_keys=True))
            await record_replacement(conn, Replacement(
                enterprise=spec.enterprise, code=code, replaced_at=r.time, old_final=r.oldFinal,
                new_initial=r.newInitial, old_ser_no=r.serNo, new_ser_no=spec.serNo), source)
        for enterprise, code in sorted(recompute):
            await queue_item_recompute(conn, enterprise, code)
    return changed
