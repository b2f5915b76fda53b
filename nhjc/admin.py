"""``nhjc migrate``, ``nhjc items load FILE`` and ``nhjc enterprises load FILE | list``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from config.settings import Settings, read_file
from ingest.enterprises import EnterprisesError, parse_enterprises_file_bytes, upsert_enterprises
from ingest.items import ItemsError, parse_items_file_bytes
from ingest.registry import upsert_items
from nhjc.startup import DATABASE_ERRORS, database_problem
from runtime.migrate import migrate

__all__ = ["Refused", "add_load", "fail", "load_file", "main_enterprises", "main_items", "main_migrate"]

T = TypeVar("T")


def main_migrate(args: argparse.Namespace, settings: Settings) -> int:
    try:
        applied = asyncio.run(migrate(settings.database.dsn()))
    except DATABASE_ERRORS as exc:
        print(f"nhjc migrate: {database_problem(exc, settings.database)}", file=sys.stderr)
        return 1
    print("applied: " + ", ".join(applied) if applied else "schema is up to date")
    return 0


def add_load(sub: Any, help_: str) -> None:
    """The ``load FILE [--encoding]`` action, the same for every registry."""
    load = sub.add_parser("load", help=help_)
    load.add_argument("file", type=Path)
    load.add_argument("--encoding", default=None,
                      help="the file's text encoding (default utf-8, a BOM allowed); e.g. gb18030 for a file "
                           "saved by a Chinese Windows tool")


def configure_items(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="items_command", required=True, metavar="ACTION")
    add_load(sub, "load data items from a JSON file (an array of items, each with its enterprise)")


class Refused(Exception):
    """The file cannot be loaded; the message is one line for the operator."""


def read_bytes(path: Path) -> bytes:
    try:
        return read_file(path)
    except ValueError as exc:
        raise Refused(str(exc)) from None


async def load_file(dsn: str, path: Path, encoding: str | None,
                parse: Callable[[bytes, str | None], list[T]],
                store: Callable[[asyncpg.Connection, list[T], str], Awaitable[int]]) -> int:
    """Read and check the whole file first, then store it in one call: all or nothing."""
    entries = parse(read_bytes(path), encoding)
    conn = await asyncpg.connect(dsn)
    try:
        return await store(conn, entries, f"file:{path.name}")
    finally:
        await conn.close()


def main_items(args: argparse.Namespace, settings: Settings) -> int:
    try:
        changed = asyncio.run(load_file(settings.database.dsn(), args.file, args.encoding,
                                    parse_items_file_bytes, upsert_items))
    except Refused as exc:
        return fail(str(exc))
    except ItemsError as exc:
        return fail(f"{args.file}: {exc}")
    except asyncpg.DataError as exc:  # a value the database refuses (checked whole: nothing loaded)
        return fail(f"{args.file}: the database refused an item, nothing loaded: {type(exc).__name__}")
    except DATABASE_ERRORS as exc:
        return fail(database_problem(exc, settings.database))
    except Exception as exc:  # never a traceback for a file or a database fault
        return fail(f"{args.file}: not loaded ({type(exc).__name__})")
    print(f"{changed} item(s) added or changed")
    return 0


def fail(message: str, command: str = "items load") -> int:
    print(f"nhjc {command}: {' '.join(message.split())}", file=sys.stderr)
    return 1


# ---- nhjc enterprises ------------------------------------------------------------------

def configure_enterprises(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="enterprises_command", required=True, metavar="ACTION")
    add_load(sub, "load enterprises from a JSON file (an array; docs/enterprises.md)")
    sub.add_parser("list", help="list the registry (credentials shown only as set, never their values)")


async def _list_enterprises(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        # The secrets column is read for its key names only: the values never leave the database.
        rows = await conn.fetch(
            "SELECT enterprise, name, region, targets::text AS targets,"
            " (SELECT coalesce(jsonb_object_agg(t, (SELECT jsonb_agg(k ORDER BY k) FROM jsonb_object_keys(v) AS k)),"
            "  '{}') FROM jsonb_each(secrets) AS s(t, v))::text AS secret_names,"
            " source, updated_at FROM enterprises ORDER BY enterprise")
    finally:
        await conn.close()
    lines = []
    for r in rows:
        targets: dict[str, dict[str, object]] = json.loads(r["targets"])
        for target, names in json.loads(r["secret_names"]).items():
            targets.setdefault(target, {}).update({n: "(set)" for n in names})
        per_target = "; ".join(f"{t}: " + ", ".join(f"{k}={v}" for k, v in sorted(kv.items()))
                               for t, kv in sorted(targets.items()))
        lines.append("\t".join((r["enterprise"], r["region"], r["name"], per_target or "-",
                                f"{r['source']} {r['updated_at']:%Y-%m-%d %H:%M:%S%z}")))
    return lines


def main_enterprises(args: argparse.Namespace, settings: Settings) -> int:
    command = f"enterprises {args.enterprises_command}"
    try:
        if args.enterprises_command == "list":
            for line in asyncio.run(_list_enterprises(settings.database.dsn())):
                print(line)
            return 0
        changed = asyncio.run(load_file(settings.database.dsn(), args.file, args.encoding,
                                    parse_enterprises_file_bytes, upsert_enterprises))
    except Refused as exc:
        return fail(str(exc), command)
    except EnterprisesError as exc:
        return fail(f"{args.file}: {exc}", command)
    except asyncpg.DataError as exc:  # a value the database refuses (one transaction: nothing loaded)
        return fail(f"{args.file}: the database refused an entry, nothing loaded: {type(exc).__name__}", command)
    except DATABASE_ERRORS as exc:
        return fail(database_problem(exc, settings.database), command)
    except Exception as exc:  # never a traceback, and never an exception's text: it could quote a credential
        return fail(f"not done ({type(exc).__name__})", command)
    print(f"{changed} enterprise(s) added or changed")
    return 0
