"""``nhjc meters load FILE | list | report | replace``: the instrument registry (docs/metrology.md)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt

import asyncpg

from config.settings import Settings
from ingest.meters import MetersError, parse_meters_file_bytes, upsert_meters
from nhjc.admin import Refused, add_load, fail, load_file
from nhjc.meters_report import FORMATS, build_report, render
from nhjc.replace_admin import add_replace, main_replace
from nhjc.startup import DATABASE_ERRORS, database_problem

__all__ = ["configure_meters", "main_meters"]


def configure_meters(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="meters_command", required=True, metavar="ACTION")
    add_load(sub, "load measuring instruments from a JSON file (an array; docs/metrology.md)")
    listing = sub.add_parser("list", help="list the instruments, one a line")
    listing.add_argument("--enterprise", default=None, help="only this enterprise's (credit code)")
    report = sub.add_parser("report", help="GB 17167 at a glance: items without an instrument, accuracy "
                                           "classes short of the standard, instruments out of verification "
                                           "or due within 30 days")
    report.add_argument("--enterprise", default=None, help="only this enterprise (credit code)")
    report.add_argument("--format", choices=FORMATS, default="table", help="table (default), json or csv")
    report.add_argument("--today", type=dt.date.fromisoformat, default=None,
                        help="judge as of this date, YYYY-MM-DD (default: today in the configured time zone)")
    add_replace(sub)


_LIST = """
SELECT enterprise, ser_no, meter_level, data_codes, precision_level, align_state, last_align_date,
       next_align_date, retired_at, meter_name, source, updated_at
FROM meters WHERE $1::text IS NULL OR enterprise = $1 ORDER BY enterprise, ser_no
"""


async def _list(dsn: str, enterprise: str | None) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(_LIST, enterprise)
    finally:
        await conn.close()
    lines = []
    for r in rows:
        dates = (f"{r['last_align_date'] or '?'}..{r['next_align_date'] or '?'}"
                 if r["align_state"] != "none" else "-")
        retired = f"retired {r['retired_at']:%Y-%m-%d %H:%M%z}" if r["retired_at"] else "in use"
        lines.append("\t".join((
            r["enterprise"], r["ser_no"], f"level {r['meter_level']}", ",".join(r["data_codes"]) or "-",
            r["precision_level"] or "-", r["align_state"], dates, retired, r["meter_name"],
            f"{r['source']} {r['updated_at']:%Y-%m-%d %H:%M:%S%z}")))
    return lines


async def _report(dsn: str, settings: Settings, enterprise: str | None, today: dt.date | None,
                  fmt: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        zone = settings.processing.zone
        day = today if today is not None else dt.datetime.now(zone).date()
        return render(await build_report(conn, day, enterprise), fmt)
    finally:
        await conn.close()


def main_meters(args: argparse.Namespace, settings: Settings) -> int:
    if args.meters_command == "replace":
        return main_replace(args, settings)
    command = f"meters {args.meters_command}"
    dsn = settings.database.dsn()
    try:
        if args.meters_command == "list":
            for line in asyncio.run(_list(dsn, args.enterprise)):
                print(line)
            return 0
        if args.meters_command == "report":
            print(asyncio.run(_report(dsn, settings, args.enterprise, args.today, args.format)), end="")
            return 0
        changed = asyncio.run(load_file(dsn, args.file, args.encoding, parse_meters_file_bytes, upsert_meters))
    except Refused as exc:
        return fail(str(exc), command)
    except MetersError as exc:
        return fail(f"{args.file}: {exc}", command)
    except ValueError as exc:  # the GB 17167 table in config/ unreadable
        return fail(str(exc), command)
    except asyncpg.DataError as exc:  # a value the database refuses (one transaction: nothing loaded)
        return fail(f"{args.file}: the database refused an entry, nothing loaded: {type(exc).__name__}", command)
    except DATABASE_ERRORS as exc:
        return fail(database_problem(exc, settings.database), command)
    except Exception as exc:  # never a traceback for a file or a database fault
        return fail(f"not done ({type(exc).__name__})", command)
    print(f"{changed} instrument(s) added or changed")
    return 0
