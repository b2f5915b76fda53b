"""``nhjc run`` as a process of its own, started with settings from the environment and
looked at from outside: its HTTP endpoint (readiness, metrics) and its database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from tools.guest import free_port

__all__ = ["PROJECT_ROOT", "ServiceProcess", "count", "query", "wait_for"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Short ingest batches, so a test sees its rows soon (the shipped batch is tuned for load).
QUICK = {"NHJC_INGEST__BATCH_MS": "50"}


class ServiceProcess:
    """`python -m nhjc run` with settings from the environment.

    ``quick``: short ingest batches (:data:`QUICK`); a benchmark of the shipped settings
    turns it off.  ``log_level``: else ``NHJC_TEST_LOG_LEVEL``, else INFO.  ``root``: the
    checkout whose nhjc runs (this one unless given: a benchmark compares two)."""

    def __init__(self, broker_url: str, dsn: str, *, client_id: str | None = None,
                 env: dict[str, str] | None = None, log: Path | None = None, quick: bool = True,
                 log_level: str | None = None, root: Path = PROJECT_ROOT) -> None:
        self.root = root
        self.port = free_port()
        self.env = {
            **os.environ,
            "NHJC_MQTT__URL": broker_url,
            "NHJC_DATABASE__URL": dsn,
            "NHJC_MQTT__CLIENT_ID": client_id or f"nhjc-test-{uuid.uuid4().hex[:8]}",
            "NHJC_METRICS__PORT": str(self.port),
            **(QUICK if quick else {}),
            **(env or {}),
        }
        self.log = log
        self.log_level = log_level or self.env.get("NHJC_TEST_LOG_LEVEL", "INFO")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True, timeout: float = 20) -> ServiceProcess:
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115 - the child keeps it
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "nhjc", "--log-level", self.log_level, "run"],
                                         env=self.env, cwd=self.root, stdout=out, stderr=subprocess.STDOUT)
        finally:
            if not isinstance(out, int):
                out.close()  # the child has its own copy
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20) -> None:
        wait_for(lambda: self.http("/readyz")[0] == 200, timeout, "service ready")

    def http(self, path: str) -> tuple[int, str]:
        """(status, body) of a GET; (0, "") while nothing answers; raises once the process ended."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as e:
            with e:
                return e.code, e.read().decode()
        except OSError:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"nhjc run exited with {self.proc.returncode}") from None
            return 0, ""

    def metric(self, name: str, labels: str = "") -> float:
        """The value of one sample from /metrics (0 when absent)."""
        _, text = self.http("/metrics")
        want = f"{name}{{{labels}}}" if labels else name
        for line in text.splitlines():
            if line.startswith(want + " "):
                return float(line.split()[-1])
        return 0.0

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    """Polls ``cond`` until it holds; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def query(dsn: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, args).fetchall()


def count(dsn: str, sql: str, *args: Any) -> int:
    return int(query(dsn, sql, *args)[0][0])
