"""The whole chain on real parts: a gateway publishes over Mosquitto, `nhjc run` stores
readings in TimescaleDB, aggregates them into consumption and delivers the periods to
two `nhjc mock-platform` processes over HTTP."""

import json
import subprocess
import sys
import urllib.request
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from tests.services import ROOT
from tools.gateway import Gateway, enterprise_code, item
from tools.guest import free_port, wait_port
from tools.process import ServiceProcess, query, wait_for

TZ = ZoneInfo("Asia/Shanghai")
CODE = "00-00-0000-023300-01"  # whole-plant (scope 1) electricity, kWh


@pytest.fixture
def platforms(tmp_path):
    procs, urls = [], {}
    for name in ("provincial", "national"):
        port = free_port()
        with open(tmp_path / f"{name}.log", "wb") as log:  # the child has its own copy
            procs.append(subprocess.Popen([sys.executable, "-m", "nhjc", "mock-platform", "--port", str(port),
                                           "--name", name], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
        wait_port(port)
        urls[name] = f"http://127.0.0.1:{port}"
    yield urls
    for p in procs:
        p.terminate()
        p.wait(10)


def records(url: str) -> list[dict]:
    with urllib.request.urlopen(url + "/_records", timeout=5) as r:
        return json.loads(r.read())


def test_readings_become_consumption_delivered_to_both_platforms(broker, db, platforms, tmp_path) -> None:
    ent = enterprise_code(40)
    gw = Gateway(broker.url, ent, gateway="gw-chain")
    gw.items([item(CODE, multiplier=10, max=100_000)])
    now = datetime.now(TZ)
    start = now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0) - timedelta(hours=2)
    svc = ServiceProcess(broker.url, db, log=tmp_path / "svc.log", env={
        "NHJC_UPLINK__TARGETS__PROVINCIAL__URL": platforms["provincial"],
        "NHJC_UPLINK__TARGETS__NATIONAL__URL": platforms["national"],
        "NHJC_UPLINK__TARGETS__PROVINCIAL__REALTIME_DELAY_S": "0",
        "NHJC_UPLINK__TARGETS__NATIONAL__REALTIME_DELAY_S": "0",
        "NHJC_UPLINK__SETTLE_S": "1",
        "NHJC_UPLINK__INTERVAL_MS": "200",
    }).start()
    try:
        # One reading a minute for an hour: the register grows 2 per minute, x10 multiplier.
        gw.readings([{"code": CODE, "ts": (start + timedelta(minutes=i)).isoformat(), "value": 5000.0 + 2 * i}
                     for i in range(61)])
        first = start.strftime("%Y-%m-%d %H:%M:%S")
        wait_for(lambda: query(db, "SELECT count(*) FROM consumption WHERE stat_type = 0 AND code = %s"
                                   " AND coverage = 1", CODE)[0][0] == 4, 30, "four full 15-minute periods")
        rows = query(db, "SELECT value, kgce, valid FROM consumption WHERE stat_type = 0 AND code = %s"
                         " AND period_start = %s", CODE, start)
        assert rows == [(pytest.approx(300.0), pytest.approx(300.0 * 0.1229), True)]
        total = query(db, "SELECT value FROM consumption WHERE stat_type = 0 AND code = '0000' AND period_start = %s",
                      start)
        assert total == [(pytest.approx(300.0 * 0.1229),)]
        for name, url in platforms.items():
            def delivered(url: str = url) -> list[dict]:
                return [r for r in records(url) if r["dataCode"] == CODE and r["statType"] == 0
                        and r["statDate"] == first]
            wait_for(lambda d=delivered: len(d()) == 1, 30, f"the first period at {name}")
            rec = delivered()[0]
            assert rec["enterpriseCode"] == ent
            assert rec["dataValue"] == pytest.approx(300.0)
            assert rec["valid"] is True
            datetime.strptime(rec["uploadDate"], "%Y-%m-%d %H:%M:%S")
    finally:
        assert svc.stop() == 0
        gw.close()


def test_changed_multiplier_recomputes_stored_periods(broker, db, tmp_path) -> None:
    ent = enterprise_code(41)
    gw = Gateway(broker.url, ent, gateway="gw-mult")
    gw.items([item(CODE, multiplier=10)])
    now = datetime.now(TZ)
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    svc = ServiceProcess(broker.url, db, log=tmp_path / "svc.log").start()
    try:
        gw.readings([{"code": CODE, "ts": (start + timedelta(minutes=i)).isoformat(), "value": 100.0 + i}
                     for i in range(16)])

        def first_period() -> list[tuple]:
            return query(db, "SELECT value FROM consumption WHERE stat_type = 0 AND code = %s AND period_start = %s",
                         CODE, start)
        wait_for(lambda: first_period() == [(pytest.approx(150.0),)], 30, "15 x 10 kWh")
        gw.items([item(CODE, multiplier=20)])  # a CT replaced by one of twice the ratio
        wait_for(lambda: first_period() == [(pytest.approx(300.0),)], 30, "recomputed with the new multiplier")
    finally:
        assert svc.stop() == 0
        gw.close()
