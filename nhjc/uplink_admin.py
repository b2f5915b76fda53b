"""``nhjc uplink rejected [--target NAME] [--limit N]`` and ``nhjc uplink resend --target
NAME --enterprise CODE``: the records a platform refused, and an operator's decision to
send them again.

A refused record is never sent again on its own; ``resend`` is how an operator says the
cause is fixed (the enterprise registry corrected, the platform's configuration mended).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from zoneinfo import ZoneInfo

import asyncpg

from config.settings import Settings
from nhjc.startup import DATABASE_ERRORS, database_problem
from uplink.records import TOTAL_CODE
from uplink.rejected import MeterRejection, Rejection, meter_rejections, rejections, resend

__all__ = ["configure_uplink", "format_meter_rejections", "format_rejections", "main_uplink"]

_COLUMNS = ("target", "enterprise", "dataCode", "statType", "period", "rejected", "status", "reason",
            "message")
_METER_COLUMNS = ("target", "enterprise", "serNo", "kind", "ref", "rejected", "status", "reason", "message")


def configure_uplink(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="uplink_command", required=True, metavar="ACTION")
    listing = sub.add_parser("rejected", help="list the records the platforms refused (newest first)")
    listing.add_argument("--target", help="only this target")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    again = sub.add_parser("resend", help="send an enterprise's refused records to a target again")
    again.add_argument("--target", required=True)
    again.add_argument("--enterprise", required=True, help="the enterprise's credit code")


def format_rejections(found: Sequence[Rejection], settings: Settings, zone: ZoneInfo) -> list[str]:
    """Tab-separated lines with a header: the data code as the target receives it (the
    enterprise total under the target's ``total_code``), times in local time."""
    lines = ["\t".join(_COLUMNS)]
    for r in found:
        target = settings.uplink.targets.get(r.target)
        data_code = (target.total_code if target is not None else r.code) if r.code == TOTAL_CODE else r.code
        lines.append("\t".join((
            r.target, r.enterprise, data_code, str(r.stat_type),
            f"{r.period_start.astimezone(zone):%Y-%m-%d %H:%M:%S}",
            f"{r.rejected_at.astimezone(zone):%Y-%m-%d %H:%M:%S}",
            "-" if r.status is None else str(r.status), r.reason or "-",
            " ".join((r.message or "-").split()))))
    return lines


def format_meter_rejections(found: Sequence[MeterRejection], zone: ZoneInfo) -> list[str]:
    """The refused instrument rows, tab-separated with their own header."""
    lines = ["\t".join(_METER_COLUMNS)]
    for r in found:
        lines.append("\t".join((r.target, r.enterprise, r.ser_no, r.kind, r.ref or "-",
                                f"{r.rejected_at.astimezone(zone):%Y-%m-%d %H:%M:%S}", str(r.status), r.reason,
                                " ".join((r.message or "-").split()))))
    return lines


async def _list(dsn: str, target: str | None, limit: int) -> tuple[list[Rejection], list[MeterRejection]]:
    conn = await asyncpg.connect(dsn)
    try:
        return (await rejections(conn, target=target, limit=limit),
                await meter_rejections(conn, target=target, limit=limit))
    finally:
        await conn.close()


async def _resend(dsn: str, target: str, enterprise: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await resend(conn, target=target, enterprise=enterprise)
    finally:
        await conn.close()


def _fail(command: str, message: str) -> int:
    print(f"nhjc uplink {command}: {' '.join(message.split())}", file=sys.stderr)
    return 1


def main_uplink(args: argparse.Namespace, settings: Settings) -> int:
    command = args.uplink_command
    dsn = settings.database.dsn()
    try:
        if command == "rejected":
            if args.limit < 1:
                return _fail(command, "--limit must be at least 1")
            found, meters = asyncio.run(_list(dsn, args.target, args.limit))
            for line in format_rejections(found, settings, settings.processing.zone):
                print(line)
            if meters:  # a second table, after a blank line, only when there are any
                print()
                for line in format_meter_rejections(meters, settings.processing.zone):
                    print(line)
            return 0
        n = asyncio.run(_resend(dsn, args.target, args.enterprise))
    except DATABASE_ERRORS as exc:
        return _fail(command, database_problem(exc, settings.database))
    except Exception as exc:  # never a traceback, and never an exception's text
        return _fail(command, f"not done ({type(exc).__name__})")
    # n counts refused instrument rows too
    print(f"{n} rejected record(s) of {args.enterprise} at {args.target} pending again, due now")
    return 0
