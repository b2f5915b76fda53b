"""Frames over a real Mosquitto into a real TimescaleDB through `nhjc run`."""

import json
import signal

from tests.harness import wait_count
from tools.gateway import Gateway, enterprise_code, item
from tools.process import ServiceProcess, count, query, wait_for

CODES = ["01-00-0000-023300-01", "00-00-0000-011500-01", "02-01-0101-023300-03"]
T0 = 1764303300  # 2025-11-28 12:15:00+08:00


def test_published_readings_are_exactly_the_stored_rows(broker, db, tmp_path) -> None:
    ent = enterprise_code(1)
    gw = Gateway(broker.url, ent)
    gw.items([item(c) for c in CODES])
    svc = ServiceProcess(broker.url, db, log=tmp_path / "svc.log").start()
    try:
        sent = {}
        for f in range(20):
            rs = [{"code": c, "ts": T0 + (f * 5 + i) * 60, "value": 100.0 + f * 5 + i + k * 0.25}
                  for k, c in enumerate(CODES) for i in range(5)]
            gw.readings(rs, seq=f)
            sent.update({(r["code"], r["ts"]): r["value"] for r in rs})
        wait_count(db, "SELECT count(*) FROM readings", len(sent))
        rows = query(db, "SELECT enterprise, code, extract(epoch FROM ts)::bigint, value, quality FROM readings")
        assert {r[0] for r in rows} == {ent}
        assert {(r[1], r[2]): r[3] for r in rows} == sent
        assert all(r[4] in (0, 2) for r in rows)  # T0 lies in the past: at most "late"
        assert count(db, "SELECT count(*) FROM items WHERE enterprise = %s", ent) == 3
        assert count(db, "SELECT count(*) FROM quarantine WHERE enterprise = %s", ent) == 0
        wait_for(lambda: svc.metric("nhjc_readings_accepted_total") == len(sent), 10, "accepted metric")
        assert svc.metric("nhjc_frames_received_total") == 20
        assert svc.http("/healthz")[0] == 200
    finally:
        assert svc.stop(signal.SIGTERM) == 0
        gw.close()


def test_bad_frames_and_readings_are_quarantined_with_good_ones_stored(broker, db, tmp_path) -> None:
    ent = enterprise_code(2)
    gw = Gateway(broker.url, ent)
    gw.items([item(CODES[0]), {"code": "bogus", "kind": "cumulative"}])
    svc = ServiceProcess(broker.url, db, log=tmp_path / "svc.log").start()
    try:
        good = {"code": CODES[0], "ts": T0, "value": 5.0}
        gw.publish_raw(gw.topic("readings"), b"{oops")
        gw.publish_raw(gw.topic("readings"), json.dumps({"v": 9, "readings": [good]}))
        gw.publish_raw(gw.topic("readings"), json.dumps({"v": 1, "readings": "many"}))
        gw.publish_raw(gw.topic("readings"), b"[" + b"1," * 140_000 + b"1]")
        gw.publish_raw(gw.topic("readings", enterprise="91340100MA00000010"), json.dumps({"v": 1, "readings": [good]}))
        gw.readings([
            good,
            {"code": CODES[1], "ts": T0, "value": 1.0},
            {"code": CODES[0], "ts": "not a time", "value": 1.0},
            {"code": CODES[0], "ts": T0 + 60, "value": "NaN"},
            {"code": "12", "ts": T0 + 60, "value": 1.0},
            {"code": CODES[0], "ts": T0 + 120, "value": 7.5},
        ])
        gw.publish_raw(gw.topic("readings"), f'{{"v": 1, "readings": [{{"code": "{CODES[0]}", "ts": {T0 + 180}, "value": NaN}},'
                       f' {{"code": "{CODES[0]}", "ts": {T0 + 240}, "value": 9.0}}]}}')
        expected = {"bad_json": 1, "bad_version": 1, "bad_shape": 1, "too_large": 1, "bad_enterprise": 1,
                    "unknown_item": 1, "bad_timestamp": 1, "bad_value": 1, "bad_code": 1, "not_finite": 1,
                    "bad_item": 1}
        # Only this test's enterprises: other gateways may share the session broker.
        ours = "enterprise IN (%s, '91340100MA00000010')"
        wait_count(db, f"SELECT count(*) FROM quarantine WHERE {ours}", sum(expected.values()), 30, ent)
        got = dict(query(db, f"SELECT reason, count(*) FROM quarantine WHERE {ours} GROUP BY reason", ent))
        assert got == expected
        stored = query(db, "SELECT extract(epoch FROM ts)::bigint, value FROM readings ORDER BY ts")
        assert stored == [(T0, 5.0), (T0 + 120, 7.5), (T0 + 240, 9.0)]
        raw = query(db, "SELECT raw FROM quarantine WHERE reason = 'bad_json'")[0][0]
        assert bytes(raw) == b"{oops"
        ent_bad = query(db, "SELECT enterprise FROM quarantine WHERE reason = 'bad_enterprise'")[0][0]
        assert ent_bad == "91340100MA00000010"
        wait_for(lambda: svc.metric("nhjc_quarantined_total", 'level="frame",reason="bad_json"') == 1, 10, "metric")
    finally:
        assert svc.stop() == 0
        gw.close()
