"""What stops a command at start is told in one line on stderr, naming the setting (and
the file or address), with no traceback: the real command, run as a process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import ROOT
from tests.tls import make_ca_and_server
from tools.guest import free_port
from tools.process import ServiceProcess, wait_for


def nhjc(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m nhjc ARGS`` with only the given NHJC_ settings (plus loopback defaults
    that point nowhere useful, so nothing here touches the shared services by accident)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("NHJC_")}
    base.update({"NHJC_METRICS__PORT": "0", **(env or {})})
    return subprocess.run([sys.executable, "-m", "nhjc", *args], env=base, cwd=ROOT, capture_output=True, check=False,
                          text=True, timeout=timeout)


def one_line(result: subprocess.CompletedProcess[str], rc: int, *wanted: str) -> str:
    lines = result.stderr.splitlines()
    assert result.returncode == rc, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for w in wanted:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_ca_and_server(tmp_path_factory.mktemp("certs"))


@pytest.mark.parametrize("prefix", ["MQTT", "UPLINK__TARGETS__PROV"])
@pytest.mark.parametrize("field", ["CA_FILE", "CERT_FILE", "KEY_FILE"])
def test_a_missing_tls_file_is_one_line_naming_setting_and_file(tmp_path, certs, prefix, field) -> None:
    env = {"NHJC_UPLINK__TARGETS__PROV__URL": "https://127.0.0.1:1/x"}
    if field == "KEY_FILE":  # a key needs its certificate, which exists
        env[f"NHJC_{prefix}__CERT_FILE"] = str(certs["client"])
    missing = tmp_path / "nowhere" / "file.pem"
    env[f"NHJC_{prefix}__{field}"] = str(missing)
    name = f"{prefix.lower().replace('__', '.')}.{field.lower()}"
    line = one_line(nhjc("run", env=env), 2, name, f"NHJC_{prefix}__{field}", f"no such file {missing}")
    assert line.startswith("nhjc: bad setting ")


@pytest.mark.parametrize(("env", "named", "says"), [
    ({"NHJC_MQTT__CA_FILE": "{dir}"}, "mqtt.ca_file", "is a directory"),
    ({"NHJC_MQTT__CA_FILE": "{junk}"}, "mqtt.ca_file", "holds no PEM certificate"),
    ({"NHJC_MQTT__CERT_FILE": "{junk}"}, "mqtt.cert_file", "not a PEM certificate"),
    ({"NHJC_MQTT__CERT_FILE": "{client}", "NHJC_MQTT__KEY_FILE": "{server_key}"}, "mqtt.key_file",
     "is not the key of"),
    ({"NHJC_MQTT__KEY_FILE": "{client_key}"}, "mqtt.key_file", "without cert_file"),
    ({"NHJC_UPLINK__TARGETS__PROV__URL": "https://127.0.0.1:1/x", "NHJC_UPLINK__TARGETS__PROV__CA_FILE": "{junk}"},
     "uplink.targets.prov.ca_file", "holds no PEM certificate"),
])
def test_an_unusable_tls_file_is_one_line(tmp_path, certs, env, named, says) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    names = {"dir": str(tmp_path), "junk": str(junk), **{k: str(v) for k, v in certs.items()}}
    one_line(nhjc("run", env={k: v.format(**names) for k, v in env.items()}), 2, named, says)


def test_a_bad_log_level_is_one_line() -> None:
    one_line(nhjc("--log-level", "bogus", "run"), 2, "--log-level", "BOGUS")


def test_a_metrics_port_in_use_is_one_line(broker, db) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = nhjc("run", env={"NHJC_MQTT__URL": broker.url, "NHJC_DATABASE__URL": db,
                                  "NHJC_METRICS__PORT": str(port)})
    line = one_line(result, 1, f"metrics.port {port} on 127.0.0.1 is in use")
    assert line == f"nhjc run: metrics.port {port} on 127.0.0.1 is in use"


@pytest.mark.parametrize("command", [["run"], ["migrate"], ["items", "load", "{items}"]])
def test_an_unreachable_database_is_one_line_naming_it(tmp_path, command) -> None:
    items = tmp_path / "items.json"
    items.write_text(json.dumps([]))
    port = free_port()  # nothing listens there
    url = f"postgresql://nhjc@127.0.0.1:{port}/nhjc"
    args = [a.format(items=items) for a in command]
    result = nhjc(*args, env={"NHJC_DATABASE__URL": url, "NHJC_MQTT__URL": f"mqtt://127.0.0.1:{free_port()}"})
    one_line(result, 1, f"cannot reach the database at {url} (database.url)", f"nhjc {' '.join(command[:2])}:")


def test_a_missing_database_is_told_apart_from_an_unreachable_one(db) -> None:
    url = db.rsplit("/", 1)[0] + "/nhjc_no_such_database"
    line = one_line(nhjc("migrate", env={"NHJC_DATABASE__URL": url}), 1, "database.url", url)
    assert "cannot reach" not in line and "does not exist" in line


def test_an_unreachable_broker_waits_not_ready_and_says_so(db, tmp_path) -> None:
    """We chose to wait for the broker (it holds the readings; it may start after us),
    so the service stays up, not ready, and its log names the broker; the database is
    fine and /readyz says which of the two is missing."""
    port = free_port()
    log = tmp_path / "svc.log"
    svc = ServiceProcess(f"mqtt://127.0.0.1:{port}", db, log=log,
                         env={"NHJC_MQTT__RECONNECT_MAX_S": "1"}).start(wait_ready=False)
    try:
        def broker_named() -> bool:
            return any("broker" in line and f"127.0.0.1:{port}" in line for line in log.read_text().splitlines())

        wait_for(broker_named, 20, "the unreachable broker named in the log")
        status, body = svc.http("/readyz")
        assert status == 503
        body = json.loads(body)
        assert (body["ready"], body["broker"], body["database"], body["down"]) == (False, False, True, ["broker"])
        assert svc.proc is not None and svc.proc.poll() is None  # still running, waiting
    finally:
        assert svc.stop() == 0
    assert "Traceback" not in log.read_text()


def test_a_metrics_host_we_cannot_listen_on_is_one_line() -> None:
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: nothing else is tried first.
    result = nhjc("run", env={"NHJC_METRICS__HOST": "192.0.2.1", "NHJC_METRICS__PORT": "9108",
                              "NHJC_DATABASE__URL": f"postgresql://nhjc@127.0.0.1:{free_port()}/nhjc"})
    one_line(result, 1, "nhjc run: metrics.host 192.0.2.1, metrics.port 9108: cannot listen:")
