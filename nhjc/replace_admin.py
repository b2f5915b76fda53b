"""``nhjc meters replace``: record that an item's meter was replaced, with the old meter's
final register value and the new meter's initial one (docs/metrology.md).

``add_replace(sub)`` adds the action to a ``meters`` parser's actions and
``main_replace(args, settings)`` runs it, so the ``meters`` command can hold it beside
its other actions.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from datetime import datetime
from typing import Any

import asyncpg

from config.settings import Settings
from ingest.credit_code import is_valid
from ingest.frames import normalise_code
from ingest.replacements import (
    Replacement,
    ReplacementError,
    check_item,
    record_replacement,
    withdraw_replacement,
)
from nhjc.startup import DATABASE_ERRORS, database_problem

__all__ = ["add_replace", "main_replace"]

_COMMAND = "meters replace"
_SOURCE = "command:meters replace"


def add_replace(sub: Any) -> None:
    """The ``replace`` action under ``nhjc meters``."""
    p = sub.add_parser("replace", help="record a meter replacement on a cumulative item: its jump "
                                       "becomes known consumption")
    p.add_argument("--enterprise", required=True, help="the enterprise's credit code")
    p.add_argument("--data-code", required=True, help="the item whose meter was replaced (hyphens optional)")
    p.add_argument("--time", required=True,
                   help="when, RFC 3339 with its UTC offset, e.g. 2024-03-01T10:17:00+08:00")
    p.add_argument("--old-final", help="the old meter's register at that time, as it showed it")
    p.add_argument("--new-initial", help="the new meter's register at that time, as it showed it")
    p.add_argument("--old-ser-no", default="", help="the old meter's serial number (retired at --time)")
    p.add_argument("--new-ser-no", default="", help="the new meter's serial number")
    p.add_argument("--withdraw", action="store_true",
                   help="remove the replacement recorded for this item at --time (recorded by mistake)")


class _Bad(ValueError):
    """A bad argument; the message is one line naming it."""


def _register(name: str, text: str | None) -> float:
    if text is None:
        raise _Bad(f"--{name} is required (the register value as the meter showed it)")
    try:
        value = float(text)
    except ValueError:
        raise _Bad(f"--{name} {text!r}: not a number") from None
    if not math.isfinite(value) or value < 0:
        raise _Bad(f"--{name} {text!r}: a register value is a finite number >= 0")
    return value


def _time(text: str) -> datetime:
    try:
        when: datetime | None = datetime.fromisoformat(text)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise _Bad(f"--time {text!r}: not an RFC 3339 time with its UTC offset "
                   "(e.g. 2024-03-01T10:17:00+08:00)")
    return when


def _parse(args: argparse.Namespace) -> Replacement:
    if not is_valid(args.enterprise):
        raise _Bad(f"--enterprise {args.enterprise!r}: not a GB 32100 credit code "
                   "(18 characters with a valid check character)")
    code = normalise_code(args.data_code)
    if code is None:
        raise _Bad(f"--data-code {args.data_code!r}: not a data code pp-uu-eeee-cceeee-dd")
    when = _time(args.time)
    if args.withdraw:
        return Replacement(args.enterprise, code, when, 0.0, 0.0)
    old_final = _register("old-final", args.old_final)
    new_initial = _register("new-initial", args.new_initial)
    return Replacement(args.enterprise, code, when, old_final, new_initial,
                       old_ser_no=args.old_ser_no.strip(), new_ser_no=args.new_ser_no.strip())


# The readings either side of the replacement time, to say at once what processing will
# make of the record.
_AROUND = """
SELECT
  (SELECT value FROM readings WHERE enterprise = $1 AND code = $2 AND ts < $3
     AND value < 'Infinity'::float8 AND value > '-Infinity'::float8 ORDER BY ts DESC LIMIT 1),
  (SELECT value FROM readings WHERE enterprise = $1 AND code = $2 AND ts >= $3
     AND value < 'Infinity'::float8 AND value > '-Infinity'::float8 ORDER BY ts LIMIT 1)
"""


async def _withdraw(dsn: str, r: Replacement) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        return await withdraw_replacement(conn, r.enterprise, r.code, r.replaced_at)
    finally:
        await conn.close()


async def _record(dsn: str, r: Replacement) -> tuple[bool, list[str]]:
    conn = await asyncpg.connect(dsn)
    try:
        await check_item(conn, r.enterprise, r.code)
        changed = await record_replacement(conn, r, _SOURCE)
        before, after = await conn.fetchrow(_AROUND, r.enterprise, r.code, r.replaced_at)
    finally:
        await conn.close()
    warnings = []
    if before is not None and r.old_final < before:
        warnings.append(f"the last reading before {r.replaced_at.isoformat()} is {before}, above "
                        f"--old-final {r.old_final}: processing refuses this record (old_below) "
                        "and the jump stays an unknown reset")
    if after is not None and after < r.new_initial:
        warnings.append(f"the first reading from {r.replaced_at.isoformat()} on is {after}, below "
                        f"--new-initial {r.new_initial}: processing refuses this record (new_below) "
                        "and the jump stays an unknown reset")
    return changed, warnings


def _fail(message: str) -> int:
    print(f"nhjc {_COMMAND}: {' '.join(message.split())}", file=sys.stderr)
    return 1


def main_replace(args: argparse.Namespace, settings: Settings) -> int:
    try:
        r = _parse(args)
        if args.withdraw:
            gone = asyncio.run(_withdraw(settings.database.dsn(), r))
            what = f"{r.enterprise} {r.code} at {r.replaced_at.isoformat()}"
            if not gone:
                return _fail(f"no replacement is recorded for {what}")
            print(f"replacement withdrawn: {what}; the periods around it are recomputed by the service")
            return 0
        changed, warnings = asyncio.run(_record(settings.database.dsn(), r))
    except (_Bad, ReplacementError) as exc:
        return _fail(str(exc))
    except asyncpg.DataError as exc:
        return _fail(f"the database refused the replacement: {type(exc).__name__}")
    except DATABASE_ERRORS as exc:
        return _fail(database_problem(exc, settings.database))
    for w in warnings:
        print(f"nhjc {_COMMAND}: warning: {w}", file=sys.stderr)
    what = f"{r.enterprise} {r.code} at {r.replaced_at.isoformat()}"
    if changed:
        print(f"replacement recorded: {what} (old final {r.old_final:g}, new initial "
              f"{r.new_initial:g}); the periods around it are recomputed by the service")
    else:
        print(f"replacement unchanged: {what} was already recorded with these values")
    return 0
