"""``nhjc migrate`` and ``nhjc items load FILE``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import asyncpg

from config.settings import Settings
from ingest.items import ItemsError, parse_items_file
from nhjc.startup import DATABASE_ERRORS, database_problem
from processing.migrate import migrate
from processing.registry import upsert_items

__all__ = ["main_items", "main_migrate"]


def main_migrate(args: argparse.Namespace, settings: Settings) -> int:
    try:
        applied = asyncio.run(migrate(settings.database.dsn()))
    except DATABASE_ERRORS as exc:
        print(f"nhjc migrate: {database_problem(exc, settings.database)}", file=sys.stderr)
        return 1
    print("applied: " + ", ".join(applied) if applied else "schema is up to date")
    return 0


def configure_items(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="items_command", required=True, metavar="ACTION")
    load = sub.add_parser("load", help="load data items from a JSON file (an array of items, each with its enterprise)")
    load.add_argument("file", type=Path)


async def _load(dsn: str, path: Path) -> int:
    items = parse_items_file(path.read_text(encoding="utf-8"))
    conn = await asyncpg.connect(dsn)
    try:
        return await upsert_items(conn, items, f"file:{path.name}")
    finally:
        await conn.close()


def main_items(args: argparse.Namespace, settings: Settings) -> int:
    try:
        changed = asyncio.run(_load(settings.database.dsn(), args.file))
    except FileNotFoundError:
        print(f"nhjc items load: no such file {args.file}", file=sys.stderr)
        return 1
    except ItemsError as exc:
        print(f"nhjc items load: {args.file}: {exc}", file=sys.stderr)
        return 1
    except DATABASE_ERRORS as exc:
        print(f"nhjc items load: {database_problem(exc, settings.database)}", file=sys.stderr)
        return 1
    print(f"{changed} item(s) added or changed")
    return 0
