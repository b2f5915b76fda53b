"""The demo's own broker and database (docs/demo.md), so a demo is a guest on this
machine: it never writes into the configured broker or database, and what it made is
gone when it ends.

* :class:`PrivateBroker`: a ``mosquitto`` process of its own on a free loopback port,
  from a temporary configuration (the shipped ``nhjc.conf`` plus that listener), with its
  persistence in the same temporary folder; stopped and the folder removed at exit.
* :func:`scratch_database`: a database created for the run on the configured PostgreSQL
  server (the application role may create databases, and TimescaleDB is a trusted
  extension, so the migrations install it as the database's owner) and dropped at exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import getpass
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

__all__ = ["GuestError", "PrivateBroker", "scratch_database", "server_of"]

SCRATCH_PREFIX = "nhjc_demo_"
_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0


class GuestError(RuntimeError):
    """The demo's own broker or database could not be set up; the message says why."""


def server_of(dsn: str) -> str:
    """host:port of a database URL, for messages (never the user or password)."""
    parts = urlsplit(dsn)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # Linux: the broker gets SIGTERM if the demo dies without cleaning up (SIGKILL).
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class PrivateBroker:
    """A Mosquitto of the demo's own on 127.0.0.1, with the settings nhjc ships."""

    def __init__(self) -> None:
        self.port = 0
        self.dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def config(self) -> str:
        assert self.dir is not None
        shipped = (resources.files("config") / "mosquitto" / "nhjc.conf").read_text(encoding="utf-8")
        # `user`: when started as root Mosquitto would switch to the `mosquitto` account,
        # which cannot write into our temporary folder; naming ourselves keeps us.
        return (f"{shipped}\n# The demo's own broker: loopback only, gone when the demo ends.\n"
                f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                f"persistence_location {self.dir}/\nlog_dest file {self.dir}/broker.log\n"
                f"user {getpass.getuser()}\n")

    def start(self) -> PrivateBroker:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).is_file():
            raise GuestError("mosquitto is not installed (scripts/setup.sh installs it); "
                             "or run the demo on the configured broker with --use-configured")
        self.dir = Path(tempfile.mkdtemp(prefix="nhjc-demo-broker-"))
        try:
            return self._start(binary)
        except BaseException:
            self.stop()
            raise

    def _start(self, binary: str) -> PrivateBroker:
        assert self.dir is not None
        for _ in range(3):  # the free port may be taken between finding and binding it
            self.port = _free_port()
            conf = self.dir / "mosquitto.conf"
            conf.write_text(self.config(), encoding="utf-8")
            # Its own session: a Ctrl-C on the terminal reaches the demo, which then stops
            # the broker last, after the service has acknowledged what it committed.  (The
            # demo has started no thread yet, which is what makes preexec_fn safe here.)
            self._proc = subprocess.Popen([binary, "-c", str(conf)], stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True, preexec_fn=_die_with_parent)  # noqa: PLW1509
            if self._wait_listening():
                return self
            reason = self._log_tail()
            self._terminate()
        raise GuestError(f"the demo's own mosquitto did not start: {reason}")

    def _wait_listening(self) -> bool:
        assert self._proc is not None
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline and self._proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def _log_tail(self) -> str:
        log = self.dir / "broker.log" if self.dir else None
        lines = log.read_text(errors="replace").splitlines() if log and log.is_file() else []
        errors = [ln for ln in lines if "rror" in ln] or lines
        return errors[-1] if errors else "no log (see mosquitto -c on a copy of its configuration)"

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        """Stops the broker and removes its folder (configuration, persistence, log)."""
        self._terminate()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> PrivateBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


@contextlib.asynccontextmanager
async def scratch_database(dsn: str) -> AsyncIterator[str]:
    """A new empty database on the server of ``dsn`` (connecting as its user to its
    database, which is only read from); yields the new database's URL, drops it after."""
    name = f"{SCRATCH_PREFIX}{uuid.uuid4().hex[:10]}"
    where = server_of(dsn)
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise GuestError(f"database server {where}: {type(exc).__name__}: {exc}") from None
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    except asyncpg.InsufficientPrivilegeError:
        raise GuestError(f"database server {where}: the configured role may not create databases "
                         "(ALTER ROLE ... CREATEDB), which the demo's own database needs; "
                         "or run the demo on the configured database with --use-configured") from None
    except (OSError, asyncpg.PostgresError) as exc:
        raise GuestError(f"database server {where}: {type(exc).__name__}: {exc}") from None
    finally:
        await conn.close()
    url = _with_database(dsn, name)
    try:
        await _install_timescaledb(url, where)
        yield url
    finally:
        await _drop(dsn, name)


async def _install_timescaledb(url: str, where: str) -> None:
    # The migrations would do it too; here a refusal gets a message that says what to do.
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except asyncpg.InsufficientPrivilegeError:
        raise GuestError(f"database server {where}: the configured role may not install TimescaleDB "
                         "in the demo's own database (not a trusted extension in this version); "
                         "run the demo on the configured database with --use-configured") from None
    except (OSError, asyncpg.PostgresError) as exc:
        raise GuestError(f"database server {where}: TimescaleDB: {type(exc).__name__}: {exc}") from None
    finally:
        await conn.close()


async def _drop(dsn: str, name: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
