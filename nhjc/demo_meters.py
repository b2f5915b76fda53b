"""The demo's measuring instruments: the simulated enterprises' instruments loaded before
the first reading (a few out of verification), and the one meter replacement the
simulator performs, recorded as a technician would, after the fact, once the simulator
has gone past it (docs/demo.md)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import asyncpg
import orjson

from ingest.meters import parse_meters_file_bytes, upsert_meters
from tools.sim import Enterprise, Simulator
from tools.sim.instruments import PlannedReplacement, plan_replacement, replacement_record

__all__ = ["SOURCE", "Instruments", "replacement_time"]

log = logging.getLogger("nhjc.demo")

SOURCE = "demo"
_TICK_S = 60  # the simulator's reading interval in the demo


def replacement_time(since: float, history_s: float) -> int:
    """When the demo's meter is replaced: a third into the replayed past (at most two
    hours in), half-way between two readings."""
    offset = max(_TICK_S, min(7200.0, history_s / 3))
    return int(since + offset // _TICK_S * _TICK_S + _TICK_S // 2)


class Instruments:
    """The instruments file of the simulated enterprises and what of it is loaded."""

    def __init__(self, records: list[dict[str, object]], enterprises: Sequence[Enterprise], at: int) -> None:
        self.records = records
        self.plan: PlannedReplacement | None = plan_replacement(enterprises, at)
        self.recorded = 0  # replacements loaded

    async def load(self, conn: asyncpg.Connection) -> int:
        """Load every instrument (before any reading arrives)."""
        return await upsert_meters(conn, parse_meters_file_bytes(_bytes(self.records)), SOURCE)

    async def record_replacements(self, pool: asyncpg.Pool | None, sim: Simulator) -> None:
        """Load the new instrument of each replacement the simulator has done since the
        last call (its ``replaces`` record retires the old one and records the registers).
        A failure is logged and tried again on the next call."""
        done = sim.replacements
        if pool is None or len(done) <= self.recorded:
            return
        new = [replacement_record(self.records, d) for d in done[self.recorded:]]
        try:
            async with pool.acquire() as conn:
                await upsert_meters(conn, parse_meters_file_bytes(_bytes(new)), SOURCE)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            log.warning("the demo's meter replacement is not recorded yet: %s", type(exc).__name__)
            return
        self.recorded = len(done)
        for d in done[len(done) - len(new):]:
            log.info("meter of %s %s replaced at %d: old final %s, new initial %s (recorded)",
                     d.enterprise, d.code, d.at, d.old_final, d.new_initial)


def _bytes(records: list[dict[str, object]]) -> bytes:
    return orjson.dumps(records)  # the loader reads bytes, as from a file
