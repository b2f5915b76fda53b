"""Driving the real thing from tests: `nhjc run` as a process, a gateway publishing
over a real broker, and polling the real database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import psycopg

from ingest.credit_code import check_character
from tests.services import ROOT, free_port


def enterprise_code(n: int, region: str = "340100") -> str:
    """A valid credit code, distinct per n."""
    first17 = f"91{region}MA{n:07d}"[:17]
    return first17 + check_character(first17)


def item(code: str, kind: str = "cumulative", **extra: Any) -> dict[str, Any]:
    return {"code": code, "name": f"item {code}", "energy": code[13:17],
            "unit": "kWh", "kind": kind, **extra}


class Gateway:
    """A gateway publishing at QoS 1 on a real broker."""

    def __init__(self, url: str, enterprise: str, gateway: str = "gw-1") -> None:
        parts = urlsplit(url)
        self.enterprise, self.gateway = enterprise, gateway
        self.retained: set[str] = set()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"gw-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        self.client.max_queued_messages_set(0)
        self.client.max_inflight_messages_set(100)
        self.client.connect(parts.hostname, parts.port)
        self.client.loop_start()

    def topic(self, kind: str, enterprise: str | None = None) -> str:
        return f"nhjc/v1/{enterprise or self.enterprise}/{self.gateway}/{kind}"

    def publish_raw(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        if retain:
            self.retained.add(topic)
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def items(self, items: list[dict[str, Any]]) -> None:
        self.publish_raw(self.topic("items"), json.dumps({"v": 1, "items": items}), retain=True)

    def readings(self, readings: list[dict[str, Any]], seq: int | None = None) -> None:
        frame: dict[str, Any] = {"v": 1, "readings": readings}
        if seq is not None:
            frame["seq"] = seq
        self.publish_raw(self.topic("readings"), json.dumps(frame))

    def close(self) -> None:
        for topic in self.retained:  # leave the shared broker as we found it
            self.client.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)
        self.client.loop_stop()
        self.client.disconnect()


class ServiceProcess:
    """`python -m nhjc run` with settings from the environment."""

    def __init__(self, broker_url: str, dsn: str, *, client_id: str | None = None, env: dict[str, str] | None = None,
                 log: Path | None = None) -> None:
        self.port = free_port()
        self.env = {
            **os.environ,
            "NHJC_MQTT__URL": broker_url,
            "NHJC_DATABASE__URL": dsn,
            "NHJC_MQTT__CLIENT_ID": client_id or f"nhjc-test-{uuid.uuid4().hex[:8]}",
            "NHJC_METRICS__PORT": str(self.port),
            "NHJC_INGEST__BATCH_MS": "50",
            **(env or {}),
        }
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True) -> ServiceProcess:
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen([sys.executable, "-m", "nhjc", "--log-level", self.env.get("NHJC_TEST_LOG_LEVEL", "INFO"), "run"], env=self.env, cwd=ROOT,
                                     stdout=out, stderr=subprocess.STDOUT)
        if wait_ready:
            wait_for(lambda: self.http("/readyz")[0] == 200, 20, "service ready")
        return self

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
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


def wait_count(dsn: str, sql: str, expected: int, timeout: float = 30, *args: Any) -> None:
    wait_for(lambda: count(dsn, sql, *args) >= expected, timeout, f"{expected} from {sql!r}")
    got = count(dsn, sql, *args)
    assert got == expected, f"{sql!r}: {got} rows, expected {expected}"


def readings_for(codes: Iterable[str], start_s: int, n: int, step_s: int = 60, base: float = 1000.0) -> list[dict[str, Any]]:
    return [{"code": c, "ts": start_s + i * step_s, "value": base + i * 1.5 + k}
            for k, c in enumerate(codes) for i in range(n)]
