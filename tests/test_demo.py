"""`nhjc demo` as a user runs it: a subprocess with a real broker and database, stopped
with Ctrl-C (SIGINT) once readings flow.  By default the demo is a guest: the broker
and database of its settings (here: a private broker and a fresh database standing for
the user's) see nothing of it, and what it made for itself is gone afterwards."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tests.services import ROOT
from tools.guest import PrivateBroker, free_port
from tools.process import count, query

ACCEPTED = re.compile(r"readings accepted ([\d,]+)")
OWN = re.compile(r"own broker 127\.0\.0\.1:(\d+), own database (nhjc_demo_[0-9a-f]+)")
ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _env(broker_url: str, db: str, tmp: Path) -> dict[str, str]:
    (tmp / "tmp").mkdir(exist_ok=True)
    return {**os.environ, "NHJC_DATABASE__URL": db, "NHJC_MQTT__URL": broker_url,
            "NHJC_METRICS__PORT": str(free_port()), "TMPDIR": str(tmp / "tmp"),
            "NHJC_MQTT__CLIENT_ID": f"nhjc-demo-test-{uuid.uuid4().hex[:8]}"}


def _run_demo(env: dict[str, str], tmp: Path, *extra: str,
              during=lambda out: None) -> tuple[int, str]:
    """Runs the demo until readings are accepted, calls during(output), sends SIGINT."""
    with open(tmp / "stderr.log", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nhjc", "--log-level", "WARNING", "demo", "--enterprises", "3",
             "--speed", "120", *extra],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()

    def accepted() -> int:
        found = [int(m.group(1).replace(",", "")) for line in list(lines) for m in ACCEPTED.finditer(line)]
        return max(found, default=0)

    try:
        deadline = time.monotonic() + 60
        while accepted() == 0 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert accepted() > 0, "".join(lines) + (tmp / "stderr.log").read_text()
        during("".join(lines))
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    proc.stdout.close()  # a pipe left open warns when collected
    out = "".join(lines)
    assert rc == 0, out + (tmp / "stderr.log").read_text()
    for section in ("readings accepted", "quarantine", "periods", "uplink anhui", "shandong", "yunnan",
                    "completeness", "simulator", "platforms: anhui http://127.0.0.1:", "instruments loaded",
                    "instruments ", "out of verification", "scorecard this month:"):
        assert section in out, f"{section!r} missing from:\n{out}"
    assert out.rstrip().endswith("nhjc demo: stopped")
    return rc, out


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _broker_state(url: str) -> tuple[list[str], dict[str, str]]:
    """(topics of retained messages, $SYS client counts) as a new subscriber sees them."""
    port = int(url.rsplit(":", 1)[1])
    retained: list[str] = []
    sys_: dict[str, str] = {}

    def on_message(_c, _u, msg) -> None:
        if msg.topic.startswith("$SYS/"):
            sys_[msg.topic] = msg.payload.decode()
        elif msg.retain:
            retained.append(msg.topic)

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"checker-{uuid.uuid4().hex[:6]}",
                    protocol=mqtt.MQTTv5)
    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.subscribe([("#", 1), ("$SYS/broker/clients/#", 0)])
    c.loop_start()
    time.sleep(2.5)  # retained messages arrive at once; $SYS every second (sys_interval 1)
    c.loop_stop()
    c.disconnect()
    return retained, sys_


def _databases(like: str) -> list[str]:
    return [r[0] for r in query(ADMIN, "SELECT datname FROM pg_database WHERE datname LIKE %s", like)]


def test_demo_is_a_guest_of_the_configured_broker_and_database(db, tmp_path) -> None:
    configured = PrivateBroker(tmp_path / "configured", extra="sys_interval 1").start()
    seen: dict[str, object] = {}

    def during(out: str) -> None:
        m = OWN.search(out)
        assert m, out
        seen["port"], seen["database"] = int(m.group(1)), m.group(2)
        seen["exists"] = _databases(m.group(2))
        seen["listening"] = _listening(int(m.group(1)))

    try:
        _run_demo(_env(configured.url, db, tmp_path), tmp_path, during=during)
        # It ran on its own database and broker, which existed while it ran ...
        assert seen["exists"] == [seen["database"]]
        assert seen["listening"] is True
        assert seen["port"] != configured.port
        # ... and are gone now: the database dropped, the broker stopped, its folder removed.
        assert _databases(str(seen["database"])) == []
        assert not _listening(int(seen["port"]))  # type: ignore[arg-type]
        assert list((tmp_path / "tmp").iterdir()) == []
        # The configured database was only connected to: nothing written into it.
        assert count(db, "SELECT count(*) FROM items") == 0
        assert count(db, "SELECT count(*) FROM readings") == 0
        assert count(db, "SELECT count(*) FROM quarantine") == 0
        # The configured broker never saw the demo: no client, no retained message, no session.
        log = (configured.workdir / "broker.log").read_text()
        assert "New client connected" not in log, log
        retained, sys_ = _broker_state(configured.url)
        assert retained == []
        assert sys_.get("$SYS/broker/clients/disconnected") == "0", sys_
        assert sys_.get("$SYS/broker/clients/total") == "1", sys_  # the checker itself
    finally:
        configured.stop()


def test_demo_use_configured_runs_on_the_configured_broker_and_database(fresh_broker, db, tmp_path) -> None:
    _rc, out = _run_demo(_env(fresh_broker.url, db, tmp_path), tmp_path, "--use-configured")
    assert "on the configured broker and database" in out
    assert OWN.search(out) is None
    assert count(db, "SELECT count(*) FROM readings") > 0
    assert count(db, "SELECT count(*) FROM items") > 0
    # the simulated enterprises' instruments, three of them out of date
    assert count(db, "SELECT count(*) FROM meters") > 0
    assert count(db, "SELECT count(*) FROM meters WHERE next_align_date < current_date") == 3
    assert "New client connected" in (fresh_broker.workdir / "broker.log").read_text()


def test_demo_that_cannot_reach_the_database_stops_its_broker_and_says_so(tmp_path) -> None:
    dead = f"postgresql://nhjc:s3cret-demo-pw@127.0.0.1:{free_port()}/nhjc"
    env = _env("mqtt://127.0.0.1:1", dead, tmp_path)
    r = subprocess.run([sys.executable, "-m", "nhjc", "demo", "--enterprises", "1"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nhjc demo: database server 127.0.0.1:"), r.stderr
    assert "s3cret-demo-pw" not in r.stdout + r.stderr
    # The broker it had started is gone with its folder.
    assert list((tmp_path / "tmp").iterdir()) == []
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert str(tmp_path / "tmp") not in ps


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_demo_stopped_while_starting_leaves_nothing_behind(sig, tmp_path) -> None:
    configured = PrivateBroker(tmp_path / "configured").start()
    before = set(_databases("nhjc_demo_%"))
    try:
        env = _env(configured.url, "postgresql://nhjc@127.0.0.1:5432/nhjc", tmp_path)
        proc = subprocess.Popen([sys.executable, "-m", "nhjc", "demo", "--enterprises", "1", "--plain"],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not list((tmp_path / "tmp").iterdir()) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert list((tmp_path / "tmp").iterdir()), "the demo's broker folder never appeared"
        proc.send_signal(sig)  # while it starts its broker, creates its database or migrates it
        out, err = proc.communicate(timeout=30)
        assert proc.returncode in (0, 130), out + err  # 0 if it had got as far as running
        assert "Traceback" not in err, err
        assert list((tmp_path / "tmp").iterdir()) == []
        assert set(_databases("nhjc_demo_%")) <= before
        assert "New client connected" not in (configured.workdir / "broker.log").read_text()
    finally:
        configured.stop()
