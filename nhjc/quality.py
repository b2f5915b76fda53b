"""``nhjc quality report [--enterprise CODE] [--month YYYY-MM] [--format table|json|csv]``:
the platforms' scorecard of a month, per enterprise (docs/metrology.md).

The report first brings the month up to date in ``quality_daily`` (the scorecard job's own
computation, every day of the month so far), so it is right without a running service
and after late data."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import re
import sys
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from config.settings import Settings
from nhjc.startup import DATABASE_ERRORS, database_problem
from processing.scorecard import month_of, refresh_month, scores

__all__ = ["configure_quality", "main_quality", "parse_month", "render_report", "report_rows"]

FORMATS = ("table", "json", "csv")
_COLUMNS = ("enterprise", "month", "completeness", "items", "items_complete", "expected", "received",
            "agreement", "start_accuracy", "verification", "meter_days", "meter_days_verified")


def parse_month(text: str) -> date:
    m = re.fullmatch(r"(\d{4})-(\d{2})", text)
    if m is None or not 1 <= int(m.group(2)) <= 12:
        raise argparse.ArgumentTypeError(f"month {text!r} is not YYYY-MM")
    return date(int(m.group(1)), int(m.group(2)), 1)


def configure_quality(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="quality_command", required=True, metavar="ACTION")
    report = sub.add_parser("report", help="the platforms' scorecard of a month, per enterprise")
    report.add_argument("--enterprise", help="only this enterprise (credit code)")
    report.add_argument("--month", type=parse_month, default=None, metavar="YYYY-MM",
                        help="the local month (default: the current one)")
    report.add_argument("--format", choices=FORMATS, default="table", help="table (default), json or csv")


async def report_rows(conn: asyncpg.Connection, month: date, *, zone: ZoneInfo, settle_s: float,
                      now: datetime, enterprise: str | None) -> list[dict[str, Any]]:
    """One object per enterprise: the month's scores and, under ``items``, its items'."""
    await refresh_month(conn, month, zone=zone, settle_s=settle_s, now=now)
    items: dict[str, list[dict[str, Any]]] = {}
    for r in await conn.fetch(
            "SELECT enterprise, code, expected, received, pinned, parts_sum, whole_value, agrees FROM quality_items"
            " WHERE period = 'month' AND period_start = $1 AND ($2::text IS NULL OR enterprise = $2)"
            " ORDER BY enterprise, code",
            month, enterprise):
        items.setdefault(r["enterprise"], []).append({
            "code": r["code"], "expected": r["expected"], "received": r["received"],
            "completeness": r["received"] / r["expected"] if r["expected"] else None,
            "start_accuracy": r["pinned"] / r["received"] if r["received"] else None,
            "day_sum": r["parts_sum"], "month_value": r["whole_value"], "agrees": r["agrees"]})
    return [{
        "enterprise": s.enterprise, "month": f"{month:%Y-%m}",
        "completeness": s.completeness, "items": s.items, "items_complete": s.items_complete,
        "expected": s.expected, "received": s.received,
        "agreement": s.agreement, "start_accuracy": s.start_accuracy, "verification": s.verification,
        "meter_days": s.meters, "meter_days_verified": s.meters_verified,
        "item_scores": items.get(s.enterprise, []),
    } for s in await scores(conn, "month", month, enterprise)]


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def render_report(rows: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, ensure_ascii=False, indent=1)
    if fmt == "csv":
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(_COLUMNS)
        for r in rows:
            w.writerow(["" if r[c] is None else r[c] for c in _COLUMNS])
        return out.getvalue().rstrip("\n")
    head = ("enterprise", "complete", "items ≥90%", "agreement", "start", "verification")
    lines = [head]
    for r in rows:
        lines.append((r["enterprise"], _pct(r["completeness"]), f"{r['items_complete']}/{r['items']}",
                      _pct(r["agreement"]), _pct(r["start_accuracy"]), _pct(r["verification"])))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    if len(rows) == 1:  # one enterprise: its items too
        text.append("")
        text.append("item                   complete  day sum / month")
        for i in rows[0]["item_scores"]:
            agrees = {True: "agrees", False: "differs", None: "-"}[i["agrees"]]
            text.append(f"{i['code']:<22} {_pct(i['completeness']):>8}  {agrees}")
    return "\n".join(text)


async def _report(dsn: str, month: date, settings: Settings, enterprise: str | None) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        p = settings.processing
        return await report_rows(conn, month, zone=p.zone, settle_s=p.completeness_settle_s,
                                 now=datetime.now(UTC), enterprise=enterprise)
    finally:
        await conn.close()


def _fail(message: str) -> int:
    print(f"nhjc quality report: {message}", file=sys.stderr)
    return 1


def main_quality(args: argparse.Namespace, settings: Settings) -> int:
    zone = settings.processing.zone
    month = args.month or month_of(datetime.now(zone).date())
    try:
        rows = asyncio.run(_report(settings.database.dsn(), month, settings, args.enterprise))
    except asyncpg.UndefinedTableError:
        return _fail("the database has no scorecard tables: run `nhjc migrate`")
    except DATABASE_ERRORS as exc:
        return _fail(database_problem(exc, settings.database))
    except Exception as exc:  # never a traceback, and never an exception's text
        return _fail(f"not done ({type(exc).__name__})")
    if args.enterprise and not rows:
        return _fail(f"no scorecard for enterprise {args.enterprise} in {month:%Y-%m}"
                     " (no items or instruments, or the month has not begun)")
    print(render_report(rows, args.format))
    return 0
