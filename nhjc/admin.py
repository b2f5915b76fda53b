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
    load.add_argument("--encoding", default="utf-8",
                      help="the file's text encoding (default utf-8, a BOM allowed); e.g. gb18030 for a file "
                           "saved by a Chinese Windows tool")


class _Refused(Exception):
    """The file cannot be loaded; the message is one line for the operator."""


def _read(path: Path, encoding: str) -> str:
    """The file's text.  Without --encoding only UTF-8 is read: a guess (GB18030 decodes
    almost any bytes) could load wrong names without a word, so a file that is not UTF-8
    is refused with the encoding it appears to be in and the option that reads it."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise _Refused(f"no such file {path}") from None
    except IsADirectoryError:
        raise _Refused(f"{path} is a directory, not an items file") from None
    except PermissionError:
        raise _Refused(f"{path}: permission denied") from None
    except OSError as exc:
        raise _Refused(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    utf8 = encoding.lower().replace("_", "-") in ("utf-8", "utf8")
    try:
        return data.decode("utf-8-sig" if utf8 else encoding)
    except LookupError:
        raise _Refused(f"unknown encoding {encoding!r} (--encoding takes a Python codec name)") from None
    except UnicodeDecodeError as exc:
        where = f"byte 0x{data[exc.start]:02x} at offset {exc.start}"
        if utf8 and _reads_as_chinese(data):
            raise _Refused(f"{path} is not UTF-8 ({where}); it reads as GB18030/GBK: convert it "
                           f"(iconv -f GB18030 -t UTF-8) or pass --encoding gb18030") from None
        name = "UTF-8" if utf8 else encoding
        raise _Refused(f"{path} is not {name} ({where}); convert it to UTF-8 or pass --encoding with "
                       f"the encoding it is in") from None


def _reads_as_chinese(data: bytes) -> bool:
    """True when the bytes decode as GB18030 to mostly CJK ideographs.  GB18030 decodes
    almost anything (Latin-1 accents too), so decoding alone proves nothing."""
    try:
        text = data.decode("gb18030")
    except UnicodeDecodeError:
        return False
    wide = [c for c in text if not c.isascii()]
    return bool(wide) and sum("\u4e00" <= c <= "\u9fff" for c in wide) * 2 >= len(wide)


async def _load(dsn: str, path: Path, encoding: str) -> int:
    items = parse_items_file(_read(path, encoding))
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
