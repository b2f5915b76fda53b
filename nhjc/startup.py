"""What stops a command at start, said in one line: which part (the database, the
metrics port, a setting), where (the URL without its password) and why.  Used by
``run``, ``migrate``, ``items load`` and ``demo`` alike."""

from __future__ import annotations

from urllib.parse import quote

import asyncpg

from config.settings import DatabaseSettings, secret_value
from nhjc.http import ListenError

__all__ = ["DATABASE_ERRORS", "database_problem", "describe"]

# What connecting to (or talking to) the database raises when the database, not our
# code, is the trouble: unreachable (OSError, including time-outs and DNS), refusing us
# or missing (PostgresError), or a connection parameter it or the driver rejects.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


def _text(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or exc.__class__.__name__


def database_problem(exc: BaseException, db: DatabaseSettings) -> str:
    """One line about a database error, naming the database by its redacted URL."""
    where = db.display_url
    why = _text(exc)
    # The drivers do not put the password in their messages; this makes sure of it.
    secret = secret_value(db.password)
    if secret and len(secret) >= 4:  # shorter: too likely to be part of a port or a name
        why = why.replace(secret, "***").replace(quote(secret, safe=""), "***")
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return f"the database at {where} refused us (database.url, database.password): {why}"
    if isinstance(exc, OSError):
        return f"cannot reach the database at {where} (database.url): {why}"
    return f"database {where} (database.url): {why}"


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


def describe(exc: BaseException, db: DatabaseSettings,
             plain: tuple[type[BaseException], ...] = ()) -> str | None:
    """The line for an error that stopped a command, or None when it is not one we
    know (a bug: let its traceback show).  ``plain`` errors are shown by their text.

    A database error is one only outside a task group: there it came from connecting
    at start; inside, a stage crashed on it, which is a bug worth its traceback."""
    if not isinstance(exc, BaseExceptionGroup) and isinstance(exc, DATABASE_ERRORS):
        return database_problem(exc, db)
    leaves = _leaves(exc)
    for leaf in leaves:
        if not isinstance(leaf, (ListenError, *plain)):
            return None
    return _text(leaves[0])
