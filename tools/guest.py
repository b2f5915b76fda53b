"""A broker and databases of one's own, so a demo, a test or a benchmark is a guest on
this machine: it never writes into the configured broker or database, and what it made
is gone when it ends.

* :class:`PrivateBroker`: a ``mosquitto`` process of its own on a loopback port (a free
  one unless given), from a configuration written for it (the shipped ``nhjc.conf`` plus
  that listener and any extra lines), with its persistence and log in its folder (a
  temporary one, removed at stop, unless the caller gives one).
* :func:`create_database` / :func:`drop_database`: a new database with TimescaleDB on a
  PostgreSQL server, and its removal; :func:`migrated_database` adds the schema.
* :func:`scratch_database`: the demo's database for one run on the configured server
  (the application role may create databases, and TimescaleDB is a trusted extension,
  so it installs as the database's owner), dropped at exit.

Tests and benchmarks reach the local server as its administrator (``ADMIN_DSN``,
overridden by ``NHJC_TEST_ADMIN_DSN``) and hand the database to the application role.
"""

from __future__ import annotations

import contextlib
import ctypes
import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from runtime.migrate import migrate

__all__ = ["ADMIN_DSN", "APP_ROLE", "GuestError", "PrivateBroker", "create_database",
           "drop_database", "free_port", "migrated_database", "scratch_database", "server_of",
           "wait_port"]

ADMIN_DSN = os.environ.get("NHJC_TEST_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
APP_ROLE = "nhjc"
SCRATCH_PREFIX = "nhjc_demo"
_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0


class GuestError(RuntimeError):
    """A broker or database of one's own could not be set up; the message says why."""


def server_of(dsn: str) -> str:
    """host:port of a database URL, for messages (never the user or password)."""
    parts = urlsplit(dsn)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}"


def free_port() -> int:
    """A TCP port nobody listens on at 127.0.0.1 just now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    """Returns once something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def _die_with_parent() -> None:
    # Linux: the broker gets SIGTERM if its starter dies without cleaning up (SIGKILL).
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class PrivateBroker:
    """A Mosquitto of one's own on 127.0.0.1, with the settings nhjc ships.

    ``workdir``: its folder (configuration, persistence, log), kept at stop; without it a
    temporary folder, removed at stop.  ``port``: fixed (a restart keeps it anyway).
    ``prefix``: lines Mosquitto wants before everything else; ``extra``: lines after the
    plain listener (more listeners and their settings; a repeated option overrides)."""

    def __init__(self, workdir: Path | None = None, port: int | None = None, extra: str = "",
                 prefix: str = "") -> None:
        self.port = port or 0
        self.workdir = workdir
        self.extra = extra
        self.prefix = prefix
        self.proc: subprocess.Popen[bytes] | None = None
        self._own_dir = workdir is None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def config(self) -> str:
        assert self.workdir is not None
        shipped = (resources.files("config") / "mosquitto" / "nhjc.conf").read_text(encoding="utf-8")
        # `user`: when started as root Mosquitto would switch to the `mosquitto` account,
        # which cannot write into our folder; naming ourselves keeps us.
        return (f"{self.prefix}\n{shipped}\n# A broker of its own: loopback only.\n"
                f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                f"persistence_location {self.workdir}/\nlog_dest file {self.workdir}/broker.log\n"
                f"user {getpass.getuser()}\n{self.extra}\n")

    def start(self) -> PrivateBroker:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).is_file():
            raise GuestError("mosquitto is not installed (scripts/setup.sh installs it); "
                             "or run the demo on the configured broker with --use-configured")
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="nhjc-broker-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            return self._start(binary)
        except BaseException:
            self.stop()
            raise

    def _start(self, binary: str) -> PrivateBroker:
        assert self.workdir is not None
        fixed = self.port != 0
        for _ in range(1 if fixed else 3):  # a free port may be taken between finding and binding it
            if not fixed:
                self.port = free_port()
            conf = self.workdir / "mosquitto.conf"
            conf.write_text(self.config(), encoding="utf-8")
            # Its own session: a Ctrl-C on the terminal reaches the starter, which then
            # stops the broker last, after the service has acknowledged what it committed.
            # (preexec_fn is safe when no other thread forks meanwhile, as here.)
            self.proc = subprocess.Popen([binary, "-c", str(conf)], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True, preexec_fn=_die_with_parent)  # noqa: PLW1509
            if self._wait_listening():
                return self
            reason = self._log_tail()
            self._terminate()
            if not fixed:
                self.port = 0
        raise GuestError(f"a private mosquitto did not start: {reason}")

    def _wait_listening(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def _log_tail(self) -> str:
        log = self.workdir / "broker.log" if self.workdir else None
        lines = log.read_text(errors="replace").splitlines() if log and log.is_file() else []
        errors = [ln for ln in lines if "rror" in ln] or lines
        return errors[-1] if errors else "no log (see mosquitto -c on a copy of its configuration)"

    def _terminate(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        """Stops the broker (it saves its sessions) and removes its folder if it made it."""
        self._terminate()
        if self._own_dir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> PrivateBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _database_url(dsn: str, name: str, user: str | None = None) -> str:
    """The URL of database ``name`` on the server of ``dsn``, as ``dsn``'s user or ``user``
    (then without a password)."""
    parts = urlsplit(dsn)
    netloc = parts.netloc if user is None else f"{user}@{parts.netloc.rsplit('@', 1)[-1]}"
    return urlunsplit(parts._replace(netloc=netloc, path=f"/{name}"))


async def create_database(prefix: str = "nhjc_test", admin_dsn: str = ADMIN_DSN, *,
                          owner: str | None = APP_ROLE) -> str:
    """A new empty database with TimescaleDB on the server of ``admin_dsn`` (connecting
    as its user to its database, which is only read from), owned by ``owner`` (None: by
    that user); returns the new database's URL as its owner."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    where = server_of(admin_dsn)
    try:
        conn = await asyncpg.connect(admin_dsn, timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise GuestError(f"database server {where}: {type(exc).__name__}: {exc}") from None
    try:
        with _refusals(where, "", "the configured role may not create databases (ALTER ROLE ... CREATEDB), "
                       "which the demo's own database needs; or run the demo on the configured "
                       "database with --use-configured"):
            await conn.execute(f'CREATE DATABASE "{name}"' + (f" OWNER {owner}" if owner else ""))
    finally:
        await conn.close()
    try:
        await _install_timescaledb(_database_url(admin_dsn, name), where)
    except BaseException:
        await drop_database(name, admin_dsn)
        raise
    return _database_url(admin_dsn, name, owner)


async def _install_timescaledb(url: str, where: str) -> None:
    # The migrations would do it too; here a refusal gets a message that says what to do.
    conn = await asyncpg.connect(url, timeout=10)
    try:
        with _refusals(where, "TimescaleDB: ", "the configured role may not install TimescaleDB in the "
                       "demo's own database (not a trusted extension in this version); run the demo "
                       "on the configured database with --use-configured"):
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    finally:
        await conn.close()


@contextlib.contextmanager
def _refusals(where: str, what: str, refused: str) -> Iterator[None]:
    """The server's refusals as a GuestError: ``refused`` says what to do about a missing
    privilege; any other error is named after ``what``."""
    try:
        yield
    except asyncpg.InsufficientPrivilegeError:
        raise GuestError(f"database server {where}: {refused}") from None
    except (OSError, asyncpg.PostgresError) as exc:
        raise GuestError(f"database server {where}: {what}{type(exc).__name__}: {exc}") from None


async def drop_database(dsn: str, admin_dsn: str = ADMIN_DSN) -> None:
    """Drops the database ``dsn`` names (a URL or a bare name), its clients cut off."""
    name = dsn.rsplit("/", 1)[-1]
    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def migrated_database(admin_dsn: str = ADMIN_DSN) -> str:
    """A new database as :func:`create_database` makes it, with nhjc's schema."""
    dsn = await create_database(admin_dsn=admin_dsn)
    try:
        await migrate(dsn)
    except BaseException:
        await drop_database(dsn, admin_dsn)
        raise
    return dsn


@contextlib.asynccontextmanager
async def scratch_database(dsn: str) -> AsyncIterator[str]:
    """A new database for one run on the server of ``dsn``, owned by ``dsn``'s user;
    yields its URL and drops it after."""
    url = await create_database(SCRATCH_PREFIX, dsn, owner=None)
    try:
        yield url
    finally:
        await drop_database(url, dsn)
