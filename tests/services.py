"""Real services for tests: a private Mosquitto per test session and fresh databases
on the local PostgreSQL with TimescaleDB.  Nothing is mocked; a missing service fails
loudly (the set-up script installs and starts them)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
ADMIN_DSN = os.environ.get("NHJC_TEST_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
APP_ROLE = "nhjc"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class Mosquitto:
    """A private broker on loopback, with the broker settings nhjc ships."""

    def __init__(self, workdir: Path, port: int | None = None, extra: str = "", prefix: str = "") -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.extra = extra  # after the plain listener: more listeners and their settings
        self.prefix = prefix  # before everything: options Mosquitto wants first
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Mosquitto:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise RuntimeError("mosquitto is not installed: run scripts/setup.sh")
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        shipped = (ROOT / "config" / "mosquitto" / "nhjc.conf").read_text()
        conf.write_text(
            f"{self.prefix}\n{shipped}\nlistener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence_location {self.workdir}/\nlog_dest file {self.workdir}/broker.log\n"
            f"user root\n{self.extra}\n"
        )
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


def _with_database(dsn: str, name: str) -> str:
    """The same server and user as dsn, database name."""
    return dsn.rsplit("/", 1)[0] + f"/{name}"


def app_dsn(admin_dsn: str, name: str) -> str:
    """The application role's DSN for database name on the server admin_dsn points at."""
    netloc = admin_dsn.split("://", 1)[1].split("/", 1)[0]
    hostport = netloc.rsplit("@", 1)[-1]
    return f"postgresql://{APP_ROLE}@{hostport}/{name}"


async def create_database(prefix: str = "nhjc_test", admin_dsn: str = ADMIN_DSN) -> str:
    """A new empty database owned by the application role, with TimescaleDB; returns its DSN."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" OWNER {APP_ROLE}')
    finally:
        await admin.close()
    db_admin = await asyncpg.connect(_with_database(admin_dsn, name))
    try:
        await db_admin.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    finally:
        await db_admin.close()
    return app_dsn(admin_dsn, name)


async def drop_database(dsn: str, admin_dsn: str = ADMIN_DSN) -> None:
    name = dsn.rsplit("/", 1)[1]
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def migrated_database(admin_dsn: str = ADMIN_DSN) -> str:
    from runtime.migrate import migrate

    dsn = await create_database(admin_dsn=admin_dsn)
    await migrate(dsn)
    return dsn


async def terminate_backends(dbname: str, admin_dsn: str = ADMIN_DSN) -> int:
    """pg_terminate_backend of every client connection to database dbname but our own;
    returns how many were terminated."""
    admin = await asyncpg.connect(admin_dsn)
    try:
        return int(await admin.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
            dbname))
    finally:
        await admin.close()


def run(coro):  # small helper for sync fixtures
    return asyncio.run(coro)
