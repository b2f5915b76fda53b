"""`nhjc run` against database faults, on real parts: a gateway publishing over Mosquitto
while the service's connections are terminated, its PostgreSQL restarts, or a TCP proxy
in front of it stalls and drops.  After each, exact accounting: every published valid
reading stored once with its value, every 15-minute period computed (and its total),
every period at the mock platform, quarantine holding exactly the bad frames; the
service never stopped and logged each outage once.  Recovery times are printed (run
with -s) and recorded as test properties."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pytest

from tests.adversity import PrivatePostgres, TcpProxy
from tests.services import ROOT, run, terminate_backends
from tools.gateway import Gateway, enterprise_code, item
from tools.guest import free_port, wait_port
from tools.process import ServiceProcess, count, query, wait_for

TZ = ZoneInfo("Asia/Shanghai")
N_ITEMS = 8
STEP_S = 15  # one reading per item every 15 s ...
SPAN_S = 3 * 3600  # ... over the three hours before now
PER_FRAME_TS = 5
PER_QUARTER = 30.0  # each register grows 0.5 per step: 60 steps a quarter
TOTAL_CODE = "00-00-0000-000000-00"


@dataclass
class Load:
    """What a gateway publishes: frames of readings, the items now and then, and a few
    frames that are not JSON (the only things that belong in quarantine)."""

    ent: str
    codes: list[str]
    start: int
    end: int
    frames: list[list[dict]] = field(default_factory=list)
    bad: list[bytes] = field(default_factory=list)
    published: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    @classmethod
    def plan(cls, n: int) -> Load:
        end = int(time.time() - 120) // 900 * 900  # the last quarter closed 2 minutes ago at least
        load = cls(enterprise_code(n), [f"00-00-0000-023300-{k + 1:02d}" for k in range(N_ITEMS)], end - SPAN_S, end)
        stamps = list(range(load.start, load.end + 1, STEP_S))
        for f in range(0, len(stamps), PER_FRAME_TS):
            load.frames.append([{"code": c, "ts": t, "value": 1000.0 + 100 * k + 0.5 * ((t - load.start) // STEP_S)}
                                for k, c in enumerate(load.codes) for t in stamps[f:f + PER_FRAME_TS]])
        load.bad = [b'{"v": 1, "readings": [' + str(i).encode() for i in range(len(load.frames) // 15)]
        return load

    @property
    def readings(self) -> dict[tuple[str, int], float]:
        return {(r["code"], r["ts"]): r["value"] for f in self.frames for r in f}

    @property
    def quarters(self) -> list[int]:
        return list(range(self.start, self.end, 900))

    def publish(self, gw: Gateway, seconds: float) -> threading.Thread:
        """Publish everything, spread over about `seconds`, in a thread."""
        def run() -> None:
            try:
                pause = seconds / len(self.frames)
                bad = iter(self.bad)
                for i, frame in enumerate(self.frames):
                    gw.readings(frame)
                    if i % 15 == 14:
                        gw.publish_raw(gw.topic("readings"), next(bad))
                    if i % 50 == 25:
                        gw.items([item(c) for c in self.codes])  # unchanged: applied again, under the fault
                    self.published = i + 1
                    time.sleep(pause)
            except BaseException as exc:
                self.error = exc
            finally:
                self.done.set()

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    with open(tmp_path / "platform.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "nhjc", "mock-platform", "--port", str(port),
                                 "--name", "provincial"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    wait_port(port)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


def platform_records(url: str) -> list[dict]:
    with urllib.request.urlopen(url + "/_records", timeout=5) as r:
        return json.loads(r.read())


def service(broker, dsn: str, platform: str, tmp_path: Path) -> ServiceProcess:
    return ServiceProcess(broker.url, dsn, log=tmp_path / "svc.log", env={
        "NHJC_UPLINK__TARGETS__PROVINCIAL__URL": platform,
        "NHJC_UPLINK__TARGETS__PROVINCIAL__REALTIME_DELAY_S": "0",
        "NHJC_UPLINK__TARGETS__PROVINCIAL__BACKOFF_MAX_S": "2",
        # A period sent and then revised goes again after 1 s of quiet, not the default
        # 120 s: the checks wait for every period's final value within a minute.
        "NHJC_UPLINK__TARGETS__PROVINCIAL__RESEND_QUIET_S": "1",
        "NHJC_UPLINK__SETTLE_S": "1",
        "NHJC_UPLINK__INTERVAL_MS": "200",
        "NHJC_PROCESSING__INTERVAL_MS": "200",
    })


def local(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).astimezone(TZ).strftime("%Y-%m-%d %H:%M:%S")


def periods(dsn: str, load: Load) -> dict[tuple[str, str], float]:
    """(data code at the platform, local start) -> value of the stored 15-minute periods."""
    rows = query(dsn, "SELECT code, extract(epoch FROM period_start)::bigint, value FROM consumption"
                      " WHERE stat_type = 0 AND period_start >= to_timestamp(%s) AND period_start < to_timestamp(%s)",
                 load.start, load.end)
    return {(TOTAL_CODE if c == "0000" else c, local(t)): v for c, t, v in rows}


def delivered(platform: str) -> dict[tuple[str, str], float]:
    return {(r["dataCode"], r["statDate"]): r["dataValue"] for r in platform_records(platform) if r["statType"] == 0}


def progress(dsn: str, load: Load, platform: str) -> dict[str, tuple[int, int]]:
    """(have, want) of readings, pending work, 15-minute periods and periods delivered
    with their stored value (a period computed from part of its readings is sent, then
    sent again once complete).  Read in the order the work flows (readings, pending
    work, periods, the platform): periods read before the last pending work was done
    could match a platform that holds a value computed from part of the readings."""
    readings = count(dsn, "SELECT count(*) FROM readings")
    pending = count(dsn, "SELECT count(*) FROM pending_recompute")
    stored = periods(dsn, load)
    at_platform = delivered(platform)
    want = (N_ITEMS + 1) * len(load.quarters)
    return {
        "readings": (readings, len(load.readings)),
        "pending": (pending, 0),
        "periods": (len(stored), want),
        "delivered": (sum(1 for k, v in stored.items() if at_platform.get(k) == v), want),
    }


def wait_settled(dsn: str, load: Load, platform: str, timeout: float = 60) -> None:
    """Everything stored, computed and delivered (checked exactly afterwards)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(have == want for have, want in progress(dsn, load, platform).values()):
            return
        time.sleep(0.2)
    raise AssertionError(f"not settled after {timeout}s: {progress(dsn, load, platform)}")


def check_accounting(dsn: str, load: Load, platform: str, svc: ServiceProcess) -> dict[str, float]:
    """Exactly what was published, once; every period; quarantine = the bad frames."""
    rows = query(dsn, "SELECT enterprise, code, extract(epoch FROM ts)::bigint, value FROM readings")
    assert {e for e, *_ in rows} == {load.ent}
    stored = {(c, t): v for _, c, t, v in rows}
    assert len(rows) == len(stored) == len(load.readings)
    assert stored == load.readings

    quarters = query(dsn, "SELECT code, extract(epoch FROM period_start)::bigint, value, valid, coverage"
                          " FROM consumption WHERE stat_type = 0 AND period_start >= to_timestamp(%s)"
                          " AND period_start < to_timestamp(%s)", load.start, load.end)
    by_code: dict[str, dict[int, tuple]] = {}
    for code, start, value, valid, coverage in quarters:
        assert start not in by_code.setdefault(code, {})
        by_code[code][start] = (value, valid, coverage)
    assert set(by_code) == {*load.codes, "0000"}
    for code in load.codes:
        assert sorted(by_code[code]) == load.quarters, code
        for start, (value, valid, coverage) in by_code[code].items():
            assert (value, valid, coverage) == (pytest.approx(PER_QUARTER), True, 1.0), (code, start)
    assert sorted(by_code["0000"]) == load.quarters
    assert count(dsn, "SELECT count(*) FROM pending_recompute") == 0

    bad = query(dsn, "SELECT enterprise, reason, raw FROM quarantine")
    assert sorted(bytes(raw) for _, _, raw in bad) == sorted(load.bad), "quarantine holds exactly the bad frames"
    assert {(e, reason) for e, reason, _ in bad} == {(load.ent, "bad_json")}

    delivered = [r for r in platform_records(platform) if r["statType"] == 0]
    keys = {(r["dataCode"], r["statDate"]) for r in delivered}
    assert len(keys) == len(delivered)
    want = {(c, local(q)) for c in [*load.codes, TOTAL_CODE] for q in load.quarters}
    assert keys == want
    for r in delivered:
        assert r["enterpriseCode"] == load.ent
        if r["dataCode"] != TOTAL_CODE:
            assert r["dataValue"] == pytest.approx(PER_QUARTER), (r, query(
                dsn, "SELECT o.*, c.value, c.revision, c.computed_at FROM uplink_outbox o JOIN consumption c"
                     " USING (enterprise, code, stat_type, period_start) WHERE o.code = %s AND o.stat_type = 0"
                     " AND to_char(o.period_start AT TIME ZONE 'Asia/Shanghai', 'YYYY-MM-DD HH24:MI:SS') = %s",
                r["dataCode"], r["statDate"]))
    resends = sum(r["count"] - 1 for r in delivered)
    return {"platform_resends": resends, "database_retries": metric_sum(svc, "nhjc_database_retries_total")}


def metric_sum(svc: ServiceProcess, name: str) -> float:
    _, text = svc.http("/metrics")
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def check_log(path: Path, faults: int) -> tuple[int, int]:
    """No traceback; each outage logged once when it began and once when it ended."""
    text = path.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]
    down = len(re.findall(r"database down \(", text))
    up = len(re.findall(r"database up again after", text))
    assert down <= faults, text[-3000:]
    assert up == down, text[-3000:]
    return down, up


def report(record_property: Callable[[str, object], None], name: str, figures: dict[str, float]) -> None:
    for k, v in figures.items():
        record_property(k, v)
    print(f"\n{name}: " + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in figures.items()))


def wait_ready(svc: ServiceProcess, timeout: float) -> float:
    started = time.monotonic()
    wait_for(lambda: svc.http("/readyz")[0] == 200, timeout, "ready again")
    return time.monotonic() - started


def test_terminating_the_service_connections_twenty_times_under_load(broker, db, platform, tmp_path,
                                                                     record_property) -> None:
    load = Load.plan(81)
    gw = Gateway(broker.url, load.ent, gateway="gw-term")
    gw.items([item(c) for c in load.codes])
    svc = service(broker, db, platform, tmp_path).start()
    dbname = db.rsplit("/", 1)[1]
    try:
        publisher = load.publish(gw, seconds=8)
        terminated = 0
        for _ in range(20):
            time.sleep(0.35)
            terminated += run(terminate_backends(dbname))
        last_fault = time.monotonic()
        assert terminated >= 20  # every round found connections of the service to end
        ready_s = wait_ready(svc, 10)
        publisher.join(30)
        assert load.error is None and load.published == len(load.frames)
        wait_settled(db, load, platform)
        recovered_s = time.monotonic() - last_fault
        figures = check_accounting(db, load, platform, svc)
        assert svc.proc.poll() is None
    finally:
        assert svc.stop() == 0
        gw.close()
    down, _ = check_log(tmp_path / "svc.log", faults=20 * 2)
    report(record_property, "terminate x20", {"backends_terminated": terminated, "ready_after_last_s": ready_s,
                                              "all_settled_after_last_s": recovered_s, "outages_logged": down,
                                              **figures})


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres().start()
    yield pg
    pg.close()


def test_postgres_restarts_under_load(broker, private_pg, platform, tmp_path, record_property) -> None:
    dsn = private_pg.create_database()
    load = Load.plan(82)
    gw = Gateway(broker.url, load.ent, gateway="gw-restart")
    gw.items([item(c) for c in load.codes])
    svc = service(broker, dsn, platform, tmp_path).start()
    figures: dict[str, float] = {}
    try:
        publisher = load.publish(gw, seconds=8)
        time.sleep(2)
        for mode in ("fast", "immediate"):
            t0 = time.monotonic()
            private_pg.restart(mode)
            figures[f"restart_{mode}_s"] = time.monotonic() - t0
            figures[f"ready_after_{mode}_s"] = wait_ready(svc, 15)
            accepted = svc.metric("nhjc_readings_accepted_total")
            if not load.done.is_set():
                wait_for(lambda a=accepted: svc.metric("nhjc_readings_accepted_total") > a, 15, "commits again")
                figures[f"commits_after_{mode}_s"] = time.monotonic() - t0
            time.sleep(1.5)
        last_fault = time.monotonic()
        publisher.join(30)
        assert load.error is None and load.published == len(load.frames)
        wait_settled(dsn, load, platform)
        figures["all_settled_after_last_s"] = time.monotonic() - last_fault
        figures.update(check_accounting(dsn, load, platform, svc))
        assert svc.proc.poll() is None
    finally:
        assert svc.stop() == 0
        gw.close()
    # A restart may show twice: a connection still answering while others are cut.
    down, _ = check_log(tmp_path / "svc.log", faults=2 * 2)
    assert down >= 1
    report(record_property, "postgres restart", {**figures, "outages_logged": down})


def test_stalling_then_dropping_proxy(broker, db, platform, tmp_path, record_property) -> None:
    pg_port = int(db.rsplit(":", 1)[1].split("/", 1)[0])
    proxy = TcpProxy(pg_port).start()
    via_proxy = db.replace(f":{pg_port}/", f":{proxy.port}/")
    load = Load.plan(83)
    gw = Gateway(broker.url, load.ent, gateway="gw-proxy")
    gw.items([item(c) for c in load.codes])
    svc = service(broker, via_proxy, platform, tmp_path).start()
    figures: dict[str, float] = {}
    try:
        publisher = load.publish(gw, seconds=14)
        time.sleep(1.5)

        # A stall: every byte held both ways, every connection open.
        proxy.stall()
        t0 = time.monotonic()
        wait_for(lambda: svc.http("/readyz")[0] == 503, 5, "not ready within 5 s of the stall")
        figures["unready_after_stall_s"] = time.monotonic() - t0
        status, body = svc.http("/readyz")
        ready = json.loads(body)
        assert status == 503 and ready["database"] is False and ready["down"] == ["database"], ready
        assert "TimeoutError" in ready["reasons"]["database"], ready
        assert svc.http("/healthz")[0] == 200
        time.sleep(max(0.0, 10 - (time.monotonic() - t0)))
        proxy.resume()
        figures["ready_after_resume_s"] = wait_ready(svc, 10)

        # Every connection closed at once.
        time.sleep(1)
        figures["connections_dropped"] = proxy.drop()
        figures["ready_after_drop_s"] = wait_ready(svc, 10)

        # A stall that ends in the connections being cut (a partition, then resets).
        time.sleep(1)
        proxy.stall()
        t0 = time.monotonic()
        wait_for(lambda: svc.http("/readyz")[0] == 503, 5, "not ready within 5 s of the second stall")
        figures["unready_after_stall2_s"] = time.monotonic() - t0
        proxy.drop()
        proxy.resume()
        figures["ready_after_stall_drop_s"] = wait_ready(svc, 10)
        last_fault = time.monotonic()

        publisher.join(30)
        assert load.error is None and load.published == len(load.frames)
        wait_settled(db, load, platform)
        figures["all_settled_after_last_s"] = time.monotonic() - last_fault
        figures.update(check_accounting(db, load, platform, svc))
        assert svc.proc.poll() is None
    finally:
        assert svc.stop() == 0
        gw.close()
        proxy.stop()
    down, _ = check_log(tmp_path / "svc.log", faults=3 * 2)
    assert down >= 2  # the two stalls at least
    report(record_property, "proxy stall/drop", {**figures, "outages_logged": down})


def test_a_revision_committed_after_settle_s_still_reaches_the_target(broker, db, platform, tmp_path) -> None:
    """A stalled database holds a transaction open longer than uplink.settle_s: the
    revision it took was seen (and passed) before it committed.  The target still gets
    the value it committed."""
    ent = enterprise_code(84)
    code = "00-00-0000-023300-01"
    gw = Gateway(broker.url, ent, gateway="gw-late")
    gw.items([item(code)])
    svc = service(broker, db, platform, tmp_path).start()
    try:
        start = int(time.time() - 120) // 900 * 900 - 900
        gw.readings([{"code": code, "ts": start + 60 * i, "value": 100.0 + 2 * i} for i in range(16)])
        first = (code, local(start))
        wait_for(lambda: delivered(platform).get(first) == 30.0, 30, "the period at the platform")
        with psycopg.connect(db) as conn:  # one transaction, open 3 x settle_s
            conn.execute("UPDATE consumption SET value = 31.5, revision = nextval('consumption_revision')"
                         " WHERE enterprise = %s AND code = %s AND stat_type = 0 AND period_start = to_timestamp(%s)",
                         (ent, code, start))
            time.sleep(3)
        wait_for(lambda: delivered(platform).get(first) == 31.5, 15, "the late commit's value at the platform")
    finally:
        assert svc.stop() == 0
        gw.close()


async def test_pool_waits_are_bounded_and_a_dead_connection_never_fails_finished_work(db) -> None:
    from runtime.dbpool import open_pool

    pool = await open_pool(db, max_size=1, command_timeout_s=1.0, connect_timeout_s=2.0)
    try:
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE t (x int)")
            # The only connection is held: another acquire gives up after command_timeout_s.
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await pool.fetchval("SELECT 1")
            assert 0.9 < time.monotonic() - started < 5
        for i in range(10):
            async with pool.acquire() as conn:
                async with conn.transaction():
                    await conn.execute("INSERT INTO t VALUES ($1)", i)
                # Killed once its work is committed: a plain asyncpg pool raises from
                # release() here (InternalClientError, ConnectionDoesNotExistError), and a
                # caller would take the committed write for a failed one.
                assert await terminate_backends(db.rsplit("/", 1)[1]) == 1
        assert await pool.fetchval("SELECT array_agg(x ORDER BY x) FROM t") == list(range(10))
    finally:
        pool.terminate()


def test_sigterm_during_a_stall_exits_within_the_grace_period_and_loses_nothing(broker, db, tmp_path,
                                                                                record_property) -> None:
    pg_port = int(db.rsplit(":", 1)[1].split("/", 1)[0])
    proxy = TcpProxy(pg_port).start()
    ent = enterprise_code(85)
    code = "00-00-0000-023300-01"
    gw = Gateway(broker.url, ent, gateway="gw-term-stall")
    gw.items([item(code)])
    client_id = "nhjc-term-stall"
    svc = ServiceProcess(broker.url, db.replace(f":{pg_port}/", f":{proxy.port}/"), client_id=client_id,
                         log=tmp_path / "svc.log").start()
    start = int(time.time()) // 900 * 900 - 3600
    sent = [[{"code": code, "ts": start + 60 * (10 * f + i), "value": 100.0 + 10 * f + i} for i in range(10)]
            for f in range(6)]
    try:
        for frame in sent[:3]:
            gw.readings(frame)
        wait_for(lambda: count(db, "SELECT count(*) FROM readings") == 30, 15, "the first frames stored")
        proxy.stall()  # the aggregator and the next commit now hang in mid-statement
        for frame in sent[3:]:
            gw.readings(frame)
        wait_for(lambda: svc.metric("nhjc_unacked_messages") > 0, 10, "messages in hand")
        t0 = time.monotonic()
        assert svc.stop(timeout=60) == 0
        exit_s = time.monotonic() - t0
        assert exit_s < 15  # the 10 s grace, then every connection cut
    finally:
        if svc.proc.poll() is None:
            svc.kill()
        proxy.stop()
    assert "Traceback" not in (tmp_path / "svc.log").read_text()
    # Nothing of the stalled batch was acknowledged: the next run gets it again.
    again = ServiceProcess(broker.url, db, client_id=client_id, log=tmp_path / "svc.log").start()
    try:
        wait_for(lambda: count(db, "SELECT count(*) FROM readings") == 60, 20, "the rest after redelivery")
        rows = query(db, "SELECT extract(epoch FROM ts)::bigint, value FROM readings WHERE code = %s", code)
        assert sorted(rows) == sorted((r["ts"], r["value"]) for f in sent for r in f)
    finally:
        assert again.stop() == 0
        gw.close()
    report(record_property, "SIGTERM in a stall", {"exit_s": exit_s})


def test_classification_of_database_errors() -> None:
    import asyncpg
    from asyncpg import exceptions as pgx
    from asyncpg.exceptions import _base

    from runtime.dberrors import is_retryable

    for exc in (pgx.AdminShutdownError("terminating connection due to administrator command"),
                pgx.CannotConnectNowError("the database system is starting up"),
                pgx.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
                asyncpg.InterfaceError("cannot perform operation: connection is closed"),
                pgx.InternalClientError("cannot switch to state 15; another operation (2) is in progress"),
                pgx.TooManyConnectionsError("sorry, too many clients already"),
                pgx.IdleInTransactionSessionTimeoutError("idle-in-transaction timeout"),
                ConnectionRefusedError(111, "refused"), TimeoutError(),
                ExceptionGroup("round", [OSError(), pgx.AdminShutdownError("x")])):
        assert is_retryable(exc), exc
    for exc in (pgx.CharacterNotInRepertoireError("invalid byte sequence for encoding UTF8: 0x00"),
                pgx.DataError("invalid input for query argument $1"), pgx.UniqueViolationError("duplicate key"),
                _base.DataError("invalid input for query argument $1"), _base.ClientConfigurationError("bad"),
                ValueError(), ExceptionGroup("round", [OSError(), KeyError("bug")])):
        assert not is_retryable(exc), exc
