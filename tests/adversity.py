"""Faults on demand for tests: a TCP proxy that can stall or cut what passes through it, and
a private PostgreSQL cluster that tests may stop, restart or kill (the shared one on 5432 is
never touched).

Both are driven from synchronous test code and run in the background:

    proxy = TcpProxy(pg.port).start()      # clients connect to proxy.port
    proxy.stall(); ...; proxy.resume()     # a hung network: bytes held, connections open
    proxy.drop()                           # every open connection closed at once
    proxy.stop()

    pg = PrivatePostgres().start()
    dsn = pg.create_database()             # migrated, owned by the application role
    pg.terminate_backends(dsn)             # pg_terminate_backend of everyone connected to it
    pg.restart(); pg.stop("immediate"); pg.close()
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from tests.services import run, terminate_backends
from tools.guest import drop_database, free_port, migrated_database, wait_port

__all__ = ["PrivatePostgres", "TcpProxy"]


class _Link:
    """One proxied connection: the client's socket and ours to the target."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client, self.upstream = client, upstream
        self.closed = threading.Event()

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for s in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in send/recv
            with contextlib.suppress(OSError):
                s.close()


class TcpProxy:
    """A loopback TCP proxy to 127.0.0.1:target_port, listening on `.port`.

    ``stall()`` stops moving bytes in both directions while keeping every connection open
    (new ones are accepted and connected too, then held the same way): to a client it looks
    like a database or network that hangs.  ``resume()`` lets the held bytes through.
    ``drop()`` closes every open connection (both ends); new connections are accepted as
    before, and the stalled state is left as it was."""

    def __init__(self, target_port: int, port: int | None = None, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = port or 0
        self._listener: socket.socket | None = None
        self._links: set[_Link] = set()
        self._lock = threading.Lock()
        self._stalled = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.accepted = 0  # connections accepted since start

    def start(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self._listener, self.port = listener, listener.getsockname()[1]
        self._stopping.clear()
        self._spawn(self._accept_loop)
        return self

    @property
    def stalled(self) -> bool:
        return self._stalled.is_set()

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._links)

    def stall(self) -> None:
        self._stalled.set()

    def resume(self) -> None:
        self._stalled.clear()

    def drop(self) -> int:
        """Close every open connection; returns how many there were."""
        with self._lock:
            links, self._links = self._links, set()
        for link in links:
            link.close()
        return len(links)

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self.drop()
        for t in self._threads:
            t.join(5)
        self._threads = []

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, target, *args) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        self._threads = [x for x in self._threads if x.is_alive()] + [t]

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed by stop()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()  # the target is down: the client sees the refusal as a reset
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            link = _Link(client, upstream)
            with self._lock:
                self._links.add(link)
                self.accepted += 1
            self._spawn(self._pump, link, client, upstream)
            self._spawn(self._pump, link, upstream, client)

    def _pump(self, link: _Link, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not link.closed.is_set():
                if self._stalled.is_set():
                    time.sleep(0.02)  # leave the bytes in the kernel's buffers
                    continue
                readable, _, _ = select.select([src], [], [], 0.1)
                if not readable:
                    continue
                data = src.recv(65536)
                if not data:
                    break
                while self._stalled.is_set() and not link.closed.is_set():
                    time.sleep(0.02)  # a stall that began mid-chunk holds this chunk too
                dst.sendall(data)
        except (OSError, ValueError):
            pass  # closed under us by drop() or by the other end
        finally:
            with self._lock:
                self._links.discard(link)
            link.close()


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for version in ("15", "16", "17", "14"):
        path = Path(f"/usr/lib/postgresql/{version}/bin/{name}")
        if path.exists():
            return str(path)
    raise RuntimeError(f"PostgreSQL's {name} is not installed: run scripts/setup.sh")


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own, with TimescaleDB preloaded, on a free loopback
    port, in a temporary directory owned by the postgres user.  Trust authentication on
    loopback only; the application role (LOGIN CREATEDB) exists.  The cluster may be
    stopped, restarted or killed at will."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.workdir: Path | None = None
        self._initialised = False

    @property
    def datadir(self) -> Path:
        assert self.workdir is not None, "start() first"
        return self.workdir / "data"

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run([*prefix, *cmd], check=False, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:2])} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        return done

    def _initdb(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="nhjc-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres", "postgres")
        self._as_postgres(_pg_bin("initdb"), "-D", str(self.datadir), "-U", "postgres", "-E", "UTF8",
                          "--locale=C", "--auth-host=trust", "--auth-local=trust", "--no-sync")
        with open(self.datadir / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.workdir}'\n"
                "shared_preload_libraries = 'timescaledb'\ntimescaledb.telemetry_level = off\n"
                "max_connections = 60\nshared_buffers = 32MB\n"
                "fsync = off\nfull_page_writes = off\n"  # a test's cluster: the OS never crashes under it
                "timescaledb.max_background_workers = 4\nmax_worker_processes = 12\n"
            )
        self._initialised = True

    def start(self) -> PrivatePostgres:
        first = not self._initialised
        if first:
            self._initdb()
        self._as_postgres(_pg_bin("pg_ctl"), "-D", str(self.datadir), "-l", str(self.workdir / "postgres.log"),
                          "-w", "-t", "60", "start")
        wait_port(self.port, 20)
        if first:
            run(self._create_role())
        return self

    async def _create_role(self) -> None:
        import asyncpg

        from tools.guest import APP_ROLE

        admin = await asyncpg.connect(self.admin_dsn)
        try:
            await admin.execute(f"CREATE ROLE {APP_ROLE} LOGIN CREATEDB")
        finally:
            await admin.close()

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop -m mode: "fast" (clients disconnected, clean shutdown), "immediate" (a
        crash: recovery from WAL at the next start) or "smart"."""
        if not self.running:
            return
        self._as_postgres(_pg_bin("pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    @property
    def running(self) -> bool:
        if not self._initialised:
            return False
        done = self._as_postgres(_pg_bin("pg_ctl"), "-D", str(self.datadir), "status", check=False)
        return done.returncode == 0

    def close(self) -> None:
        """Stop the cluster at once and remove its directory."""
        if self._initialised:
            with contextlib.suppress(RuntimeError):
                self.stop("immediate")
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        self._initialised = False

    def __enter__(self) -> PrivatePostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create_database(self) -> str:
        """A fresh migrated database with TimescaleDB, owned by the application role; its DSN."""
        return run(migrated_database(admin_dsn=self.admin_dsn))

    def drop_database(self, dsn: str) -> None:
        run(drop_database(dsn, admin_dsn=self.admin_dsn))

    def terminate_backends(self, dsn_or_dbname: str) -> int:
        """pg_terminate_backend of every other client connection to that database; the count."""
        dbname = dsn_or_dbname.rsplit("/", 1)[-1].split("?", 1)[0]
        return run(terminate_backends(dbname, admin_dsn=self.admin_dsn))

    def log_tail(self, lines: int = 40) -> str:
        if self.workdir is None:
            return ""
        path = self.workdir / "postgres.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
