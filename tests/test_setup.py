"""scripts/broker-settings.sh, the broker part of scripts/setup.sh, run against a copy of
a Debian-style /etc/mosquitto in a temporary folder and a real Mosquitto started from it
(on a private port): the shipped settings are installed as an include, take effect, and
the broker is restarted only when something changed."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.services import ROOT
from tools.guest import free_port, wait_port

SCRIPT = ROOT / "scripts" / "broker-settings.sh"
SHIPPED = ROOT / "config" / "mosquitto" / "nhjc.conf"

# Debian 12's /etc/mosquitto/mosquitto.conf, paths moved into the test's folder.
DEBIAN = """# Place your local configuration in /etc/mosquitto/conf.d/
#
# A full description of the configuration file is at
# /usr/share/doc/mosquitto/examples/mosquitto.conf.example

pid_file {d}/run/mosquitto.pid

persistence true
persistence_location {d}/lib/

log_dest file {d}/log/mosquitto.log

include_dir {d}/conf.d
"""
# A hand-made main file with its own listener and no include_dir (as on this machine).
HANDMADE = """pid_file {d}/run/mosquitto.pid
persistence true
persistence_location {d}/lib/
log_dest file {d}/log/mosquitto.log
listener {port} 127.0.0.1
allow_anonymous true
user root
"""


class Broker:
    """A Mosquitto run as a daemon from CONF_DIR/mosquitto.conf, as the system's is."""

    def __init__(self, conf_dir: Path, port: int) -> None:
        self.conf_dir, self.port = conf_dir, port

    @property
    def pid(self) -> int:
        return int((self.conf_dir / "run" / "mosquitto.pid").read_text())

    def start(self) -> None:
        subprocess.run(["mosquitto", "-d", "-c", str(self.conf_dir / "mosquitto.conf")], check=True,
                       capture_output=True)
        wait_port(self.port)

    def stop(self) -> None:
        pid_file = self.conf_dir / "run" / "mosquitto.pid"
        if pid_file.exists():
            subprocess.run(["kill", str(self.pid)], check=False, capture_output=True)


@pytest.fixture(params=["debian", "handmade"])
def system_broker(request, tmp_path: Path):
    d, port = tmp_path / "etc-mosquitto", free_port()
    for sub in ("run", "lib", "log"):
        (d / sub).mkdir(parents=True)
    if request.param == "debian":
        (d / "mosquitto.conf").write_text(DEBIAN.format(d=d))
        (d / "conf.d").mkdir()
        # The operator's own include: where the broker listens (run as root in tests).
        (d / "conf.d" / "listener.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n")
    else:
        (d / "mosquitto.conf").write_text(HANDMADE.format(d=d, port=port))
    b = Broker(d, port)
    b.start()
    yield b
    b.stop()


def _apply(conf_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *extra, str(conf_dir)], capture_output=True, text=True,
                          timeout=60, check=False)


def _queued_for_offline_session(port: int, n: int) -> int:
    """Messages delivered to a persistent session that was away while n were published."""
    topic = f"nhjc-test/queue/{uuid.uuid4().hex[:8]}"
    cid = f"queue-{uuid.uuid4().hex[:8]}"
    got: list[int] = []

    def session(clean: bool) -> mqtt.Client:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
        c.on_message = lambda _c, _u, m: got.append(1)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        c.connect("127.0.0.1", port, clean_start=clean, properties=props)
        c.loop_start()
        return c

    c = session(True)
    c.subscribe(topic, qos=1)
    time.sleep(0.3)
    c.disconnect()
    c.loop_stop()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    infos = [pub.publish(topic, b"x", qos=1) for _ in range(n)]
    for info in infos:
        info.wait_for_publish(10)
    pub.disconnect()
    pub.loop_stop()
    c = session(False)
    deadline = time.monotonic() + 15
    last, still = -1, time.monotonic()
    while time.monotonic() < deadline and len(got) < n:
        if len(got) != last:
            last, still = len(got), time.monotonic()
        elif time.monotonic() - still > 2:
            break  # nothing more is coming
        time.sleep(0.1)
    c.disconnect()
    c.loop_stop()
    return len(got)


def test_setup_installs_the_broker_settings_and_restarts_only_on_a_change(system_broker) -> None:
    d, port = system_broker.conf_dir, system_broker.port
    n = 1500
    # Mosquitto's own offline queue drops what is past 1,000 messages ...
    assert _queued_for_offline_session(port, n) < n
    before = system_broker.pid
    r = _apply(d)
    assert r.returncode == 0, r.stderr
    installed = next(d.glob("**/nhjc.conf"))
    assert installed.read_text() == SHIPPED.read_text()
    assert "restarted" in r.stderr
    assert system_broker.pid != before
    main = (d / "mosquitto.conf").read_text()
    assert main.count("include_dir") == 1
    # ... nhjc's settings keep all of them.
    assert _queued_for_offline_session(port, n) == n
    # Run again: nothing changed, no restart.
    after = system_broker.pid
    r = _apply(d)
    assert r.returncode == 0, r.stderr
    assert "up to date" in r.stderr and "restart" not in r.stderr
    assert system_broker.pid == after
    assert (d / "mosquitto.conf").read_text() == main


def test_setup_restores_the_previous_settings_when_the_broker_does_not_come_back(system_broker) -> None:
    d = system_broker.conf_dir
    main = (d / "mosquitto.conf").read_text()
    r = _apply(d, "--restart", "false")
    assert r.returncode == 1
    assert "restoring the previous settings" in r.stderr
    assert (d / "mosquitto.conf").read_text() == main
    assert not (d / "conf.d" / "nhjc.conf").exists()


def test_setup_reports_an_option_another_file_sets_differently(system_broker) -> None:
    d = system_broker.conf_dir
    (d / "conf.d").mkdir(exist_ok=True)
    (d / "conf.d" / "local.conf").write_text("max_queued_messages 1000\n")
    r = _apply(d)
    assert r.returncode == 0, r.stderr
    assert "local.conf sets max_queued_messages 1000, nhjc.conf sets max_queued_messages 0" in r.stderr
