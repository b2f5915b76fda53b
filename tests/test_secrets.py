"""Secrets never show: not in a message, a log line (at DEBUG), a metric, an error
stored in the database or a settings error; and each may come from a file.

Every secret here is distinctive, so finding it (or its URL-encoded form) anywhere in
what the commands print or expose is a leak."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from pydantic import ValidationError

from config.settings import SettingsError, TargetSettings, load_settings, secret_value
from tests.harness import wait_count
from tests.services import ROOT
from tools.gateway import Gateway, enterprise_code, item
from tools.guest import PrivateBroker, free_port, wait_port
from tools.process import ServiceProcess, query, wait_for

DB_PW = "Zq9-db/pw@x%y#z"  # characters that must be percent-encoded in a URL
MQTT_PW = "Zq9-mqtt-pw"
PIN = "80402468"
SM4 = "a1b2c3d4e5f60718293a4b5c6d7e8f90"  # a Yunnan platform secret (16+ ASCII characters)
SECRETS = (DB_PW, quote(DB_PW, safe=""), MQTT_PW, PIN, SM4)


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"a secret ({secret[:3]}...) shows in: {text[:2000]}"


def clean_env(**env: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("NHJC_")}
    return {**base, "NHJC_METRICS__PORT": "0", **env}


def nhjc(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nhjc", "--log-level", "DEBUG", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


def secret_file(folder: Path, name: str, value: str) -> Path:
    path = folder / name
    path.write_text(value + "\n")  # as `echo` and editors write it
    return path


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for k in list(os.environ):
        if k.startswith("NHJC_"):
            monkeypatch.delenv(k)
    return monkeypatch


# ---------------------------------------------------------------------- in process


def test_secrets_hide_in_repr_str_and_dumps(no_env: pytest.MonkeyPatch) -> None:
    no_env.setenv("NHJC_DATABASE__URL", f"postgresql://nhjc:{quote(DB_PW, safe='')}@db.example:5432/nhjc")
    no_env.setenv("NHJC_MQTT__USERNAME", "pipeline")
    no_env.setenv("NHJC_MQTT__PASSWORD", MQTT_PW)
    no_env.setenv("NHJC_UPLINK__TARGETS__NAT__URL", "https://nat.example")
    no_env.setenv("NHJC_UPLINK__TARGETS__NAT__FLAVOUR", "yunnan")
    no_env.setenv("NHJC_UPLINK__TARGETS__NAT__PIN", PIN)
    no_env.setenv("NHJC_UPLINK__TARGETS__NAT__SECRET", SM4)
    s = load_settings()
    assert_no_secret(repr(s), str(s), s.model_dump_json(), str(s.model_dump()), s.database.url,
                     s.database.display_url)
    assert s.database.url == "postgresql://nhjc@db.example:5432/nhjc"
    assert s.database.display_url == "postgresql://nhjc:***@db.example:5432/nhjc"
    # ... and the real values are there for the one call that needs each
    assert secret_value(s.database.password) == DB_PW
    assert s.database.dsn() == f"postgresql://nhjc:{quote(DB_PW, safe='')}@db.example:5432/nhjc"
    assert secret_value(s.mqtt.password) == MQTT_PW
    nat = s.uplink.targets["nat"]
    assert (secret_value(nat.pin), secret_value(nat.secret)) == (PIN, SM4)


def test_a_password_parameter_in_the_database_url_moves_out_too(no_env: pytest.MonkeyPatch) -> None:
    no_env.setenv("NHJC_DATABASE__URL",
                  f"postgresql://db.example/nhjc?sslmode=disable&password={quote(DB_PW, safe='')}")
    db = load_settings().database
    assert db.url == "postgresql://db.example/nhjc?sslmode=disable"
    assert secret_value(db.password) == DB_PW
    assert db.dsn() == f"postgresql://db.example/nhjc?sslmode=disable&password={quote(DB_PW, safe='')}"
    assert db.display_url == "postgresql://db.example/nhjc?sslmode=disable&password=***"


@pytest.mark.parametrize(("env", "named"), [
    ({"NHJC_UPLINK__TARGETS__NAT__PIN": f"{PIN}x"}, "uplink.targets.nat.pin"),
    ({"NHJC_UPLINK__TARGETS__NAT__PIN": PIN, "NHJC_UPLINK__TARGETS__NAT__SECRET": SM4[:15]},
     "uplink.targets.nat.secret"),
    ({"NHJC_UPLINK__TARGETS__NAT__PIN": PIN, "NHJC_UPLINK__TARGETS__NAT__SECRET": SM4 + "\u00e9"},
     "uplink.targets.nat.secret"),
    ({"NHJC_UPLINK__TARGETS__NAT__URL": f"https://u:{MQTT_PW}@nat.example"}, "uplink.targets.nat.url"),
    ({"NHJC_MQTT__URL": f"mqtt://pipeline:{MQTT_PW}@broker:1883"}, "mqtt.url"),
    ({"NHJC_MQTT__URL": f"mqtt://pipeline:{MQTT_PW}@broker:{PIN}x"}, "mqtt.url"),
    ({"NHJC_DATABASE__URL": f"mysql://nhjc:{MQTT_PW}@db/nhjc"}, "database.url"),
    ({"NHJC_DATABASE__URL": f"postgresql://nhjc:{DB_PW}@db/nhjc"}, "database.url"),  # not encoded
    ({"NHJC_DATABASE__URL": f"postgresql://db/nhjc?sslpassword={MQTT_PW}"}, "database.url"),
    ({"NHJC_DATABASE__URL": f"postgresql://nhjc:{MQTT_PW}@db/nhjc", "NHJC_DATABASE__PASSWORD": PIN},
     "database.url"),
    ({"NHJC_MQTT__PASSWORD": MQTT_PW, "NHJC_MQTT__PASSWORD_FILE": "/etc/hostname"}, "mqtt.password_file"),
])
def test_settings_errors_never_echo_a_secret(no_env: pytest.MonkeyPatch, env: dict[str, str], named: str) -> None:
    no_env.setenv("NHJC_UPLINK__TARGETS__NAT__URL", "https://nat.example")
    no_env.setenv("NHJC_UPLINK__TARGETS__NAT__FLAVOUR", "yunnan")
    for k, v in env.items():
        no_env.setenv(k, v)
    with pytest.raises(SettingsError) as err:
        load_settings()
    message = str(err.value)
    assert named in message and "\n" not in message
    assert_no_secret(message)
    assert "fragment" not in message and "y#z" not in message


def test_a_settings_model_built_in_code_hides_its_input_in_errors() -> None:
    with pytest.raises(ValidationError) as err:
        TargetSettings(url="http://x", flavour="yunnan", pin=f"{PIN}x", secret=SM4)
    assert_no_secret(str(err.value), repr(err.value))


def test_every_secret_can_come_from_a_file(no_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    no_env.setenv("NHJC_DATABASE__PASSWORD_FILE", str(secret_file(tmp_path, "db", DB_PW)))
    no_env.setenv("NHJC_MQTT__PASSWORD_FILE", str(secret_file(tmp_path, "mqtt", MQTT_PW)))
    no_env.setenv("NHJC_UPLINK__TARGETS__NAT__URL", "https://nat.example")
    no_env.setenv("NHJC_UPLINK__TARGETS__NAT__FLAVOUR", "yunnan")
    no_env.setenv("NHJC_UPLINK__TARGETS__NAT__PIN_FILE", str(secret_file(tmp_path, "pin", PIN)))
    no_env.setenv("NHJC_UPLINK__TARGETS__NAT__SECRET_FILE", str(secret_file(tmp_path, "sm4", SM4)))
    s = load_settings()
    nat = s.uplink.targets["nat"]
    assert [secret_value(v) for v in (s.database.password, s.mqtt.password, nat.pin, nat.secret)] == [
        DB_PW, MQTT_PW, PIN, SM4]
    assert s.database.dsn() == f"postgresql://nhjc:{quote(DB_PW, safe='')}@127.0.0.1:5432/nhjc"
    assert_no_secret(repr(s))


@pytest.mark.parametrize("env_name", [
    "NHJC_DATABASE__PASSWORD_FILE", "NHJC_MQTT__PASSWORD_FILE",
    "NHJC_UPLINK__TARGETS__NAT__PIN_FILE", "NHJC_UPLINK__TARGETS__NAT__SECRET_FILE",
])
def test_a_missing_secret_file_is_one_line_naming_setting_and_path(no_env: pytest.MonkeyPatch, tmp_path: Path,
                                                                   env_name: str) -> None:
    no_env.setenv("NHJC_UPLINK__TARGETS__NAT__URL", "https://nat.example")
    missing = tmp_path / "run" / "secrets" / "absent"
    no_env.setenv(env_name, str(missing))
    with pytest.raises(SettingsError) as err:
        load_settings()
    name = env_name.removeprefix("NHJC_").lower().replace("__", ".")
    assert str(err.value) == f"bad setting {name} ({env_name}): no such file {missing}"


@pytest.mark.parametrize(("section", "name"), [("DATABASE", "password"), ("MQTT", "password"),
                                               ("UPLINK__TARGETS__NAT", "pin")])
def test_a_secret_given_twice_is_refused(no_env: pytest.MonkeyPatch, tmp_path: Path, section: str,
                                         name: str) -> None:
    no_env.setenv("NHJC_UPLINK__TARGETS__NAT__URL", "https://nat.example")
    no_env.setenv(f"NHJC_{section}__{name.upper()}", PIN)
    no_env.setenv(f"NHJC_{section}__{name.upper()}_FILE", str(secret_file(tmp_path, "pw", PIN)))
    with pytest.raises(SettingsError, match=f"give {name} or {name}_file, not both") as err:
        load_settings()
    assert f"NHJC_{section}__{name.upper()}_FILE" in str(err.value)
    assert_no_secret(str(err.value))


def test_an_empty_secret_file_is_refused(no_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    no_env.setenv("NHJC_MQTT__PASSWORD_FILE", str(secret_file(tmp_path, "empty", "")))
    with pytest.raises(SettingsError, match=r"mqtt\.password_file .*is empty"):
        load_settings()


# ------------------------------------------------------------- commands, as processes


def every_secret_env(tmp_path: Path, db_url: str, mqtt_url: str, *, db_password_in_url: bool) -> dict[str, str]:
    """Every secret setting filled: the database password in the URL or from a file,
    the broker password, and a Yunnan target's PIN and secret."""
    env = {
        "NHJC_MQTT__URL": mqtt_url, "NHJC_MQTT__USERNAME": "pipeline", "NHJC_MQTT__PASSWORD": MQTT_PW,
        "NHJC_MQTT__RECONNECT_MAX_S": "1",
        "NHJC_UPLINK__TARGETS__NAT__URL": f"http://127.0.0.1:{free_port()}",
        "NHJC_UPLINK__TARGETS__NAT__FLAVOUR": "yunnan",
        "NHJC_UPLINK__TARGETS__NAT__PIN": PIN,
        "NHJC_UPLINK__TARGETS__NAT__SECRET_FILE": str(secret_file(tmp_path, "sm4", SM4)),
    }
    if db_password_in_url:
        user, _, rest = db_url.removeprefix("postgresql://").partition("@")
        env["NHJC_DATABASE__URL"] = f"postgresql://{user}:{quote(DB_PW, safe='')}@{rest}"
    else:
        env["NHJC_DATABASE__URL"] = db_url
        env["NHJC_DATABASE__PASSWORD_FILE"] = str(secret_file(tmp_path, "dbpw", DB_PW))
    return env


@pytest.mark.parametrize("in_url", [True, False], ids=["password-in-url", "password-file"])
@pytest.mark.parametrize("command", [["run"], ["migrate"], ["items", "load", "{items}"]])
def test_commands_against_an_unreachable_database_show_no_secret(tmp_path: Path, command: list[str],
                                                                 in_url: bool) -> None:
    items = tmp_path / "items.json"
    items.write_text("[]")
    port = free_port()
    env = every_secret_env(tmp_path, f"postgresql://nhjc@127.0.0.1:{port}/nhjc", f"mqtt://127.0.0.1:{free_port()}",
                           db_password_in_url=in_url)
    result = nhjc(*[a.format(items=items) for a in command], env=clean_env(**env))
    assert result.returncode == 1
    assert_no_secret(result.stdout, result.stderr)
    assert f"cannot reach the database at postgresql://nhjc:***@127.0.0.1:{port}/nhjc" in result.stderr


def test_a_running_service_shows_no_secret_in_logs_metrics_or_stored_errors(db: str, tmp_path: Path) -> None:
    """`nhjc run` at DEBUG with every secret set, the broker password from a file and
    accepted by a broker that checks it, and a Yunnan platform that refuses our PIN: the
    readings flow, the uplink fails on authentication, and no secret shows anywhere."""
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "pipeline", MQTT_PW], check=True)
    # Anonymous stays allowed for the test gateway; a client giving a user name must
    # give its password.
    broker = PrivateBroker(tmp_path / "broker", extra=f"password_file {passwd}\n").start()
    platform_port = free_port()
    platform_log = tmp_path / "platform.log"
    with platform_log.open("wb") as out:
        platform = subprocess.Popen(
            [sys.executable, "-m", "nhjc", "mock-platform", "--port", str(platform_port), "--name", "nat",
             "--flavour", "yunnan"],
            cwd=ROOT, env=clean_env(), stdout=out, stderr=subprocess.STDOUT)
    gw: Gateway | None = None
    svc: ServiceProcess | None = None
    try:
        wait_port(platform_port, 20)
        env = every_secret_env(tmp_path, db, broker.url, db_password_in_url=True)
        del env["NHJC_MQTT__PASSWORD"]
        env |= {"NHJC_MQTT__PASSWORD_FILE": str(secret_file(tmp_path, "mqttpw", MQTT_PW)),
                "NHJC_UPLINK__TARGETS__NAT__URL": f"http://127.0.0.1:{platform_port}",
                "NHJC_UPLINK__TARGETS__NAT__REALTIME_DELAY_S": "0",
                "NHJC_UPLINK__TARGETS__NAT__BACKOFF_MIN_S": "0.2",
                "NHJC_UPLINK__TARGETS__NAT__BACKOFF_MAX_S": "1",
                "NHJC_PROCESSING__INTERVAL_MS": "100", "NHJC_UPLINK__INTERVAL_MS": "200",
                "NHJC_TEST_LOG_LEVEL": "DEBUG"}
        svc = ServiceProcess(broker.url, db, env=env, log=tmp_path / "svc.log")
        svc.start()  # ready: the broker took the password from the file
        ent = enterprise_code(870)
        code = "01-00-0000-023300-01"
        gw = Gateway(broker.url, ent)
        gw.items([item(code)])
        first = int(time.time()) // 900 * 900 - 3600
        gw.readings([{"code": code, "ts": first + i * 300, "value": 100.0 + i} for i in range(10)])
        wait_count(db, "SELECT count(*) FROM readings", 10)
        # the platform refuses the token request (our secret is not its secret): errors stored
        wait_for(lambda: query(db, "SELECT count(*) FROM uplink_outbox WHERE last_error IS NOT NULL")[0][0] > 0,
                 60, "a refused token request recorded in the outbox")
        _, metrics = svc.http("/metrics")
        assert "nhjc_uplink_retries_total" in metrics
        stored = json.dumps(query(db, "SELECT last_error FROM uplink_outbox WHERE last_error IS NOT NULL")
                            + query(db, "SELECT * FROM uplink_device"), default=str)
        assert "token refused" in stored
    finally:
        if svc is not None and svc.proc is not None:
            assert svc.stop() == 0
        if gw is not None:
            gw.close()
        platform.terminate()
        platform.wait(10)
        broker.stop()
    log = (tmp_path / "svc.log").read_text()
    assert " DEBUG " in log and "connected to 127.0.0.1" in log
    assert_no_secret(log, metrics, stored)


def test_a_refused_broker_login_shows_no_secret(db: str, tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "pipeline", "another-password"], check=True)
    broker = PrivateBroker(tmp_path / "broker", extra=f"password_file {passwd}\n").start()
    try:
        env = every_secret_env(tmp_path, db, broker.url, db_password_in_url=False)
        env["NHJC_TEST_LOG_LEVEL"] = "DEBUG"
        svc = ServiceProcess(broker.url, db, env=env, log=tmp_path / "svc.log").start(wait_ready=False)
        try:
            wait_for(lambda: "refused" in (tmp_path / "svc.log").read_text(), 20, "the refusal logged")
            status, body = svc.http("/readyz")
            _, metrics = svc.http("/metrics")
        finally:
            assert svc.stop() == 0
    finally:
        broker.stop()
    assert status == 503 and json.loads(body)["broker"] is False
    assert_no_secret((tmp_path / "svc.log").read_text(), metrics, body)


# ------------------------------------------- a PostgreSQL that checks passwords


class PasswordPostgres:
    """A private PostgreSQL (with TimescaleDB) asking for a password over TCP, owned by
    the postgres user in a temporary folder.  The shared server trusts loopback, so a
    wrong password could only be tried here."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="nhjc-pg-"))
        self.port = free_port()
        self.bin = Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                                       check=False).stdout.strip() or "/usr/lib/postgresql/15/bin")
        if not (self.bin / "initdb").exists():
            self.bin = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]

    def _as_postgres(self, *cmd: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True, capture_output=True, timeout=120)

    def start(self) -> PasswordPostgres:
        shutil.chown(self.dir, "postgres", "postgres")
        data = self.dir / "data"
        self._as_postgres(str(self.bin / "initdb"), "-D", str(data), "-A", "scram-sha-256",
                          "--auth-local=trust", "-U", "postgres")
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(data), "-l", str(self.dir / "log"), "-w", "-o",
                          f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                          f"-c shared_preload_libraries=timescaledb -c timescaledb.telemetry_level=off", "start")
        wait_port(self.port)
        sql = (f"CREATE ROLE nhjc LOGIN PASSWORD '{DB_PW}'; CREATE DATABASE nhjc OWNER nhjc;")
        self._as_postgres(str(self.bin / "psql"), "-h", str(self.dir), "-p", str(self.port), "-U", "postgres",
                          "-v", "ON_ERROR_STOP=1", "-c", sql.split(";")[0], "-c", sql.split(";")[1])
        self._as_postgres(str(self.bin / "psql"), "-h", str(self.dir), "-p", str(self.port), "-U", "postgres",
                          "-d", "nhjc", "-c", "CREATE EXTENSION timescaledb")
        return self

    def stop(self) -> None:
        pid_file = self.dir / "data" / "postmaster.pid"
        pid = int(pid_file.read_text().split()[0]) if pid_file.exists() else None
        subprocess.run(["runuser", "-u", "postgres", "--", str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"),
                        "-m", "immediate", "-t", "30", "stop"], capture_output=True, check=False, timeout=60)
        if pid is not None:  # our server, by its id, whatever pg_ctl managed
            deadline = time.monotonic() + 10
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL if time.monotonic() > deadline - 5 else signal.SIGQUIT)
                time.sleep(0.2)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def password_postgres() -> Iterator[PasswordPostgres]:
    pg = PasswordPostgres().start()
    yield pg
    pg.stop()


def test_the_database_password_from_a_file_or_the_url_is_used_and_never_shown(
        password_postgres: PasswordPostgres, tmp_path: Path) -> None:
    url = f"postgresql://nhjc@127.0.0.1:{password_postgres.port}/nhjc"
    from_file = nhjc("migrate", env=clean_env(NHJC_DATABASE__URL=url,
                                              NHJC_DATABASE__PASSWORD_FILE=str(secret_file(tmp_path, "pw", DB_PW))))
    assert from_file.returncode == 0, from_file.stderr
    assert "applied:" in from_file.stdout
    in_url = nhjc("migrate", env=clean_env(
        NHJC_DATABASE__URL=f"postgresql://nhjc:{quote(DB_PW, safe='')}@127.0.0.1:{password_postgres.port}/nhjc"))
    assert in_url.returncode == 0, in_url.stderr
    assert "schema is up to date" in in_url.stdout
    assert_no_secret(from_file.stdout, from_file.stderr, in_url.stdout, in_url.stderr)


@pytest.mark.parametrize("command", [["run"], ["migrate"], ["items", "load", "{items}"]])
def test_a_wrong_database_password_is_one_line_without_it(password_postgres: PasswordPostgres, tmp_path: Path,
                                                          command: list[str]) -> None:
    items = tmp_path / "items.json"
    items.write_text("[]")
    wrong = DB_PW[::-1]
    url = f"postgresql://nhjc@127.0.0.1:{password_postgres.port}/nhjc"
    result = nhjc(*[a.format(items=items) for a in command],
                  env=clean_env(NHJC_DATABASE__URL=url, NHJC_DATABASE__PASSWORD=wrong,
                                NHJC_MQTT__URL=f"mqtt://127.0.0.1:{free_port()}"))
    assert result.returncode == 1
    lines = [ln for ln in result.stderr.splitlines() if " DEBUG " not in ln]
    assert lines == [f"nhjc {' '.join(command[:2])}: the database at postgresql://nhjc:***@127.0.0.1:"
                     f"{password_postgres.port}/nhjc refused us (database.url, database.password): "
                     'password authentication failed for user "nhjc"']
    assert wrong not in result.stderr + result.stdout
    assert_no_secret(result.stdout, result.stderr)
