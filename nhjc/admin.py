"""``nhjc migrate`` and ``nhjc items load FILE``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import asyncpg

from config.settings import Settings, read_file
from ingest.items import ItemsError, parse_items_file_bytes
from ingest.registry import upsert_items
from nhjc.startup import DATABASE_ERRORS, database_problem
from runtime.migrate import migrate

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
    load.add_argument("--encoding", default=None,
                      help="the file's text encoding (default utf-8, a BOM allowed); e.g. gb18030 for a file "
                           "saved by a Chinese Windows tool")


class _Refused(Exception):
    """The file cannot be loaded; the message is one line for the operator."""


def _read(path: Path) -> bytes:
    try:
        return read_file(path)
    except ValueError as exc:
        raise _Refused(str(exc)) from None


async def _load(dsn: str, path: Path, encoding: str | None) -> int:
    items = parse_items_file_bytes(_read(path), encoding)
    conn = await asyncpg.connect(dsn)
    try:
        return await upsert_items(conn, items, f"file:{path.name}")
    finally:
        await conn.close()


def main_items(args: argparse.Namespace, settings: Settings) -> int:
    try:
        changed = asyncio.run(_load(settings.database.dsn(), args.file, args.encoding))
    except _Refused as exc:
        return _fail(str(exc))
    except ItemsError as exc:
        return _fail(f"{args.file}: {exc}")
    except asyncpg.DataError as exc:  # a value the database refuses (checked whole: nothing loaded)
        return _fail(f"{args.file}: the database refused an item, nothing loaded: {type(exc).__name__}")
    except DATABASE_ERRORS as exc:
        return _fail(database_problem(exc, settings.database))
    except Exception as exc:  # never a traceback for a file or a database fault
        return _fail(f"{args.file}: not loaded ({type(exc).__name__})")
    print(f"{changed} item(s) added or changed")
    return 0


def _fail(message: str) -> int:
    print(f"nhjc items load: {' '.join(message.split())}", file=sys.stderr)
    return 1
