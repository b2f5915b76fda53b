"""The pipeline under adversity: a crash, a blocked database, a long outage, a bad setting."""

import os
import signal
import subprocess
import sys
import time

import psycopg

from tests.harness import wait_count
from tests.services import ROOT
from tools.gateway import Gateway, enterprise_code, item
from tools.process import ServiceProcess, count, query, wait_for

CODES = [f"01-00-0000-02330{k}-01" for k in range(5)]
T0 = 1764303300


def frames(n_frames: int, per_frame: int = 50, t0: int = T0) -> list[list[dict]]:
    """n_frames frames of per_frame readings (10 timestamps × 5 items), all keys distinct."""
    per_code = per_frame // len(CODES)
    out = []
    for f in range(n_frames):
        out.append([{"code": c, "ts": t0 + (f * per_code + i) * 60, "value": float(f * per_code + i) + k / 10}
                    for k, c in enumerate(CODES) for i in range(per_code)])
    return out


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def hold_insert_lock(dsn: str) -> psycopg.Connection:
    """A transaction holding SHARE on readings: inserts block, reads go on."""
    conn = psycopg.connect(dsn)
    conn.execute("LOCK TABLE readings IN SHARE MODE")
    return conn


def test_sigkill_with_messages_in_flight_loses_nothing_and_stores_once(broker, db, tmp_path) -> None:
    ent = enterprise_code(10)
    gw = Gateway(broker.url, ent)
    gw.items([item(c) for c in CODES])
    client_id = "nhjc-crash-test"
    svc = ServiceProcess(broker.url, db, client_id=client_id, log=tmp_path / "svc.log").start()
    lock = hold_insert_lock(db)
    sent = frames(200)
    for f in sent:
        gw.readings(f)
    wait_for(lambda: svc.metric("nhjc_unacked_messages") > 0 or svc.metric("nhjc_queue_depth") > 0, 20,
             "messages in flight")
    svc.kill()  # SIGKILL: nothing committed, nothing acknowledged
    lock.rollback()
    lock.close()
    assert count(db, "SELECT count(*) FROM readings") == 0
    svc2 = ServiceProcess(broker.url, db, client_id=client_id, log=tmp_path / "svc.log").start()
    try:
        expected = {(r["code"], r["ts"]): r["value"] for f in sent for r in f}
        wait_count(db, "SELECT count(*) FROM readings", len(expected), timeout=60)
        rows = query(db, "SELECT code, extract(epoch FROM ts)::bigint, value FROM readings")
        assert {(c, t): v for c, t, v in rows} == expected
        assert count(db, "SELECT count(*) FROM quarantine WHERE enterprise = %s", ent) == 0
    finally:
        assert svc2.stop() == 0
        gw.close()


def test_blocked_database_bounds_memory_and_acknowledges_nothing(broker, db, tmp_path) -> None:
    ent = enterprise_code(11)
    gw = Gateway(broker.url, ent)
    gw.items([item(c) for c in CODES])
    svc = ServiceProcess(broker.url, db, client_id="nhjc-backpressure",
                         env={"NHJC_MQTT__RECEIVE_MAXIMUM": "100"}, log=tmp_path / "svc.log").start()
    lock = hold_insert_lock(db)
    try:
        sent = frames(1500)
        for f in sent[:500]:
            gw.readings(f)
        wait_for(lambda: svc.metric("nhjc_unacked_messages") >= 100, 20, "the receive window to fill")
        time.sleep(0.5)
        rss_early = rss_kib(svc.proc.pid)
        for f in sent[500:]:
            gw.readings(f)
        time.sleep(1.0)
        rss_late = rss_kib(svc.proc.pid)
        # The broker holds everything beyond the 100-message window.
        assert svc.metric("nhjc_unacked_messages") <= 100
        assert svc.metric("nhjc_queue_depth") <= 100
        assert svc.metric("nhjc_readings_accepted_total") == 0
        assert rss_late - rss_early < 20_000, (rss_early, rss_late)  # 1000 more frames: no growth
        lock.rollback()
        expected = sum(len(f) for f in sent)
        wait_count(db, "SELECT count(*) FROM readings", expected, timeout=90)
        wait_for(lambda: svc.metric("nhjc_unacked_messages") == 0, 10, "all acknowledged")
    finally:
        lock.close()
        assert svc.stop() == 0
        gw.close()


def test_sigterm_while_database_blocked_exits_quickly_and_redelivery_completes(broker, db, tmp_path) -> None:
    ent = enterprise_code(12)
    gw = Gateway(broker.url, ent)
    gw.items([item(c) for c in CODES])
    svc = ServiceProcess(broker.url, db, client_id="nhjc-term-blocked", log=tmp_path / "svc.log").start()
    lock = hold_insert_lock(db)
    sent = frames(20)
    for f in sent:
        gw.readings(f)
    wait_for(lambda: svc.metric("nhjc_unacked_messages") > 0, 20, "messages in flight")
    started = time.monotonic()
    assert svc.stop(signal.SIGTERM, timeout=30) == 0
    assert time.monotonic() - started < 15
    lock.rollback()
    lock.close()
    svc2 = ServiceProcess(broker.url, db, client_id="nhjc-term-blocked", log=tmp_path / "svc.log").start()
    try:
        wait_count(db, "SELECT count(*) FROM readings", sum(len(f) for f in sent), timeout=60)
    finally:
        assert svc2.stop() == 0
        gw.close()


def test_outage_longer_than_default_broker_queue_loses_nothing(fresh_broker, db, tmp_path) -> None:
    """Mosquitto keeps 1000 messages for an offline session by default; the shipped
    broker configuration raises that, so a long outage's backlog survives."""
    ent = enterprise_code(13)
    gw = Gateway(fresh_broker.url, ent)
    gw.items([item(c) for c in CODES])
    svc = ServiceProcess(fresh_broker.url, db, client_id="nhjc-outage", log=tmp_path / "svc.log").start()
    assert svc.stop() == 0  # the session now exists at the broker, and we are away
    sent = frames(2500, per_frame=10)
    for f in sent:
        gw.readings(f)
    svc2 = ServiceProcess(fresh_broker.url, db, client_id="nhjc-outage", log=tmp_path / "svc.log").start()
    try:
        wait_count(db, "SELECT count(*) FROM readings", sum(len(f) for f in sent), timeout=90)
    finally:
        assert svc2.stop() == 0
        gw.close()


def test_bad_setting_gives_one_line_and_nonzero_exit() -> None:
    env = {**os.environ, "NHJC_MQTT__RECEIVE_MAXIMUM": "0"}
    r = subprocess.run([sys.executable, "-m", "nhjc", "run"], env=env, cwd=ROOT, check=False, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "mqtt.receive_maximum" in lines[0] and "NHJC_MQTT__RECEIVE_MAXIMUM" in lines[0]


def test_bad_config_file_value_is_named(tmp_path) -> None:
    cfg = tmp_path / "nhjc.toml"
    cfg.write_text('[uplink.targets.provincial]\nurl = "ftp://nowhere"\n')
    r = subprocess.run([sys.executable, "-m", "nhjc", "--config", str(cfg), "run"], cwd=ROOT,
                       check=False, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "uplink.targets.provincial.url" in r.stderr


def test_unmigrated_database_is_refused_with_one_line(broker) -> None:
    from tests.services import run
    from tools.guest import create_database, drop_database
    dsn = run(create_database())
    try:
        env = {**os.environ, "NHJC_DATABASE__URL": dsn, "NHJC_MQTT__URL": broker.url}
        r = subprocess.run([sys.executable, "-m", "nhjc", "run"], env=env, cwd=ROOT, check=False, capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 1
        assert "run `nhjc migrate`" in r.stderr
    finally:
        run(drop_database(dsn))
