"""The platforms' scorecard on a real database, with every figure computed by hand:
completeness (per item and overall, the 90 % line), day-against-month agreement,
period-start accuracy and the share of instruments in verification, per day and month;
the gauges the job sets; and `nhjc quality report` in its three formats."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from config.settings import ProcessingSettings
from nhjc.quality import render_report, report_rows
from processing.scorecard import Score, ScorecardJob, refresh, refresh_month, scores
from tests.services import ROOT
from tools.gateway import enterprise_code
from tools.guest import create_database, drop_database

TZ = "Asia/Shanghai"
ZONE = ZoneInfo(TZ)
SETTLE_S = 900.0
EL, GAS, POWER, NEW = ("00-00-0000-023300-01", "00-00-0000-011500-01", "00-00-0000-033300-03",
                       "01-00-0000-023300-09")
E1, E2, E3 = enterprise_code(811), enterprise_code(812), enterprise_code(813)
MARCH = date(2026, 3, 1)
DAY = date(2026, 3, 10)
DAY_START = datetime(2026, 3, 10, tzinfo=ZONE)
NOW = datetime(2026, 3, 11, 0, 20, tzinfo=ZONE)  # day 11: nothing settled yet
REGISTERED = datetime(2026, 3, 1, tzinfo=ZONE)


def quarter(k: int, day: datetime = DAY_START) -> datetime:
    return day + timedelta(minutes=15 * k)


async def fill(conn: asyncpg.Connection) -> None:
    items = [(E1, EL, "3300", "kWh", "cumulative", REGISTERED), (E1, GAS, "1500", "m3", "cumulative", REGISTERED),
             (E1, POWER, "3300", "kW", "instant", REGISTERED),
             (E1, NEW, "3300", "kWh", "cumulative", datetime(2026, 3, 12, tzinfo=ZONE)),
             (E2, EL, "3300", "kWh", "cumulative", REGISTERED)]
    await conn.executemany(
        "INSERT INTO items (enterprise, code, energy, unit, kind, source, updated_at)"
        " VALUES ($1, $2, $3, $4, $5, 'test', $6)", items)
    # NEW was first registered on the 10th in the afternoon: it counts from that midnight
    await conn.execute("INSERT INTO items_history (changed_at, enterprise, code, source, item)"
                       " VALUES ($1, $2, $3, 'test', '{}')", datetime(2026, 3, 10, 15, tzinfo=ZONE), E1, NEW)
    c: list[tuple[str, str, int, datetime, float, float]] = []  # enterprise, code, tier, start, value, coverage
    for k in range(96):
        c.append((E1, EL, 0, quarter(k), 1.0, 1.0))
        c.append((E1, GAS, 0, quarter(k), 2.0, 0.5 if k < 80 else 0.0))  # 16 without coverage
        c.append((E1, POWER, 0, quarter(k), 50.0, 1.0))
        c.append((E1, "0000", 0, quarter(k), 1.0, 1.0))  # the total is not an item
        c.append((E1, "01-00-0000-023300-77", 0, quarter(k), 1.0, 1.0))  # not in the registry
        if k < 90:
            c.append((E2, EL, 0, quarter(k), 1.0, 1.0))
    c += [(E1, EL, 1, DAY_START, 96.0, 1.0), (E1, EL, 1, DAY_START - timedelta(days=1), 100.0, 1.0),
          (E1, EL, 2, datetime(2026, 3, 1, tzinfo=ZONE), 200.0, 1.0),
          (E1, GAS, 1, DAY_START, 170.0, 1.0),  # 10 from a gap across quarter boundaries: > 5 %
          (E1, POWER, 1, DAY_START, 50.0, 1.0), (E1, POWER, 2, datetime(2026, 3, 1, tzinfo=ZONE), 50.0, 1.0),
          (E2, EL, 1, DAY_START, 93.0, 1.0), (E2, EL, 2, datetime(2026, 3, 1, tzinfo=ZONE), 93.0, 1.0)]
    await conn.executemany(
        "INSERT INTO consumption (enterprise, code, stat_type, period_start, value, kgce, valid, coverage)"
        " VALUES ($1, $2, $3, $4, $5, 0, true, $6)", c)
    r: list[tuple[str, str, datetime, float]] = []
    for k in range(96):
        # E1 EL: the first 48 starts pinned (30 s after), the rest read 5 minutes in
        r.append((E1, EL, quarter(k) + timedelta(seconds=30 if k < 48 else 300), float(k)))
        r.append((E1, POWER, quarter(k) - timedelta(seconds=45), 50.0))  # 45 s before: pinned
        # E2: at every start, but the first reading is not a number
        r.append((E2, EL, quarter(k), math.nan if k == 0 else float(k)))
    await conn.executemany(
        "INSERT INTO readings (enterprise, code, ts, value, quality, received_at) VALUES ($1, $2, $3, $4, 0, now())", r)
    meters = [(E2, "M1", "verified", None), (E2, "M2", "verified", None), (E2, "M3", "none", None),
              (E2, "M4", "verified", datetime(2026, 3, 5, 8, tzinfo=ZONE)), (E3, "M5", "calibrated", None)]
    await conn.executemany(
        "INSERT INTO meters (enterprise, ser_no, meter_name, meter_level, align_state, retired_at, source)"
        " VALUES ($1, $2, 'meter', 1, $3, $4, 'test')", meters)
    await conn.executemany(
        "INSERT INTO meter_verifications (enterprise, ser_no, valid_from, valid_until, align_state)"
        " VALUES ($1, $2, $3, $4, 'verified')",
        [(E2, "M1", date(2026, 1, 1), date(2026, 12, 31)), (E2, "M2", date(2025, 3, 10), date(2026, 3, 9)),
         (E2, "M4", date(2026, 1, 1), date(2026, 12, 31)), (E3, "M5", date(2026, 2, 1), date(2027, 1, 31)),
         (E2, "M3", date(2026, 1, 1), date(2026, 12, 31))])  # M3 is not verified: its period does not count


def key(s: Score) -> tuple[object, ...]:
    return (s.items, s.expected, s.received, s.items_complete, s.agreement_items, s.agreement_ok,
            s.start_values, s.start_pinned, s.meters, s.meters_verified)


async def test_day_and_month_scores_by_hand(db: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        await fill(conn)
        await refresh_month(conn, MARCH, zone=ZONE, settle_s=SETTLE_S, now=NOW)
        day = {s.enterprise: s for s in await scores(conn, "day", DAY)}
        # E1: 4 items x 96; received 96 + 80 + 96 + 0; complete EL and POWER; EL agrees,
        # GAS does not (160 against 170); pinned 48 (EL) + 96 (POWER)
        assert key(day[E1]) == (4, 384, 272, 2, 2, 1, 272, 144, 0, 0)
        # E2: 90 of 96 (93.75 %: complete); 90 against 93 agrees; 89 pinned (a NaN does
        # not pin); M1 in, M2 expired the day before, M3 not verified, M4 retired
        assert key(day[E2]) == (1, 96, 90, 1, 1, 1, 90, 89, 3, 1)
        assert key(day[E3]) == (0, 0, 0, 0, 0, 0, 0, 0, 1, 1)
        assert day[E1].completeness == pytest.approx(272 / 384)
        assert day[E3].completeness is None and day[E3].verification == 1.0
        # the 9th: E1's EL has a day value and no 15-minute values: it disagrees
        ninth = {s.enterprise: s for s in await scores(conn, "day", DAY - timedelta(days=1))}
        assert key(ninth[E1]) == (3, 288, 0, 0, 1, 0, 0, 0, 0, 0)  # NEW not registered yet
        assert (ninth[E2].meters, ninth[E2].meters_verified) == (3, 2)  # M2 still in date
        # the 11th: nothing settled at 00:20
        eleventh = {s.enterprise: s for s in await scores(conn, "day", date(2026, 3, 11))}
        assert (eleventh[E1].expected, eleventh[E1].completeness) == (0, None)

        month = {s.enterprise: s for s in await scores(conn, "month", MARCH)}
        # E1: 960 quarters (1st to 10th) for three items, 96 for NEW; EL 196 against 200
        # agrees, GAS has day values and no month value; instant POWER is not compared
        assert key(month[E1]) == (4, 3 * 960 + 96, 272, 0, 2, 1, 272, 144, 0, 0)
        # E2: instrument-days over the 11 days: M1 11 in, M2 9 of 11, M3 0 of 11, M4 5 of 5
        assert key(month[E2]) == (1, 960, 90, 0, 1, 1, 90, 89, 38, 25)
        assert key(month[E3]) == (0, 0, 0, 0, 0, 0, 0, 0, 11, 11)
        items = {(r["enterprise"], r["code"]): (r["expected"], r["received"], r["parts_sum"], r["whole_value"], r["agrees"])
                 for r in await conn.fetch("SELECT * FROM quality_items WHERE period = 'month' AND period_start = $1",
                                           MARCH)}
        assert items == {(E1, EL): (960, 96, 196.0, 200.0, True), (E1, GAS): (960, 80, 170.0, None, False),
                         (E1, POWER): (960, 96, 50.0, 50.0, None), (E1, NEW): (96, 0, None, None, None),
                         (E2, EL): (960, 90, 93.0, 93.0, True)}
        # per item and day: GAS 80 of 96, none pinned, 160 against 170
        gas = await conn.fetchrow("SELECT expected, received, pinned, parts_sum, whole_value, agrees FROM quality_items"
                                  " WHERE period = 'day' AND period_start = $1 AND code = $2", DAY, GAS)
        assert tuple(gas) == (96, 80, 0, 160.0, 170.0, False)
        # the month's completeness is the sum of its days'
        sums = await conn.fetchrow("SELECT sum(expected) AS e, sum(received) AS r FROM quality_daily"
                                   " WHERE period = 'day' AND enterprise = $1 AND period_start >= $2", E1, MARCH)
        assert (sums["e"], sums["r"]) == (month[E1].expected, month[E1].received)

        # a replacing instrument counts from the day of its replacement: M6 replaced M1 on
        # the 10th at 12:00, so on the 9th E2 has M1 to M4 only
        await conn.execute("INSERT INTO meters (enterprise, ser_no, meter_name, meter_level, align_state, source)"
                           " VALUES ($1, 'M6', 'meter', 1, 'none', 'test')", E2)
        await conn.execute("UPDATE meters SET retired_at = $1 WHERE enterprise = $2 AND ser_no = 'M1'",
                           datetime(2026, 3, 10, 12, tzinfo=ZONE), E2)
        await conn.execute("INSERT INTO meter_replacements (enterprise, code, replaced_at, old_ser_no, new_ser_no,"
                           " old_final, new_initial, source) VALUES ($1, $2, $3, 'M1', 'M6', 10, 0, 'test')",
                           E2, EL, datetime(2026, 3, 10, 12, tzinfo=ZONE))
        await refresh(conn, [DAY - timedelta(days=1), DAY], zone=ZONE, settle_s=SETTLE_S, now=NOW)
        assert (lambda s: (s.meters, s.meters_verified))((await scores(conn, "day", DAY - timedelta(days=1), E2))[0]) \
            == (3, 2)  # M1, M2, M3 (M4 retired on the 5th)
        assert (lambda s: (s.meters, s.meters_verified))((await scores(conn, "day", DAY, E2))[0]) \
            == (4, 1)  # M1 (until noon), M2 expired, M3 never, M6 not verified
        # a rewrite follows the data: E2's items gone, the day keeps only its instruments
        await conn.execute("DELETE FROM items WHERE enterprise = $1", E2)
        await refresh(conn, [DAY], zone=ZONE, settle_s=SETTLE_S, now=NOW)
        assert key((await scores(conn, "day", DAY, E2))[0]) == (0, 0, 0, 0, 0, 0, 0, 0, 4, 1)
    finally:
        await conn.close()


async def test_a_day_with_a_clock_change_has_its_own_number_of_periods(db: str) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    conn = await asyncpg.connect(db)
    try:
        await conn.execute("INSERT INTO items (enterprise, code, energy, unit, kind, source, updated_at)"
                           " VALUES ($1, $2, '3300', 'kWh', 'cumulative', 'test', '2026-01-01')", E1, EL)
        now = datetime(2026, 3, 31, 1, 0, tzinfo=berlin)  # the 30th has settled whole
        await refresh(conn, [date(2026, 3, 29), date(2026, 3, 30)], zone=berlin, settle_s=SETTLE_S, now=now)
        assert (await scores(conn, "day", date(2026, 3, 29)))[0].expected == 92  # 23 hours
        assert (await scores(conn, "day", date(2026, 3, 30)))[0].expected == 96
    finally:
        await conn.close()


async def test_the_job_fills_the_months_and_sets_bounded_gauges(db: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        await fill(conn)
        registry = CollectorRegistry()
        job = ScorecardJob(ProcessingSettings(timezone=TZ, completeness_settle_s=SETTLE_S, scorecard_days=2),
                           pool=conn, registry=registry)

        def gauge(name: str, **labels: str) -> float:
            v = registry.get_sample_value(name, labels)
            assert v is not None, (name, labels)
            return v

        assert math.isnan(gauge("nhjc_scorecard_ratio", period="day", measure="completeness"))
        rounds = 1
        while await job.update(NOW):  # February and March 1st-9th: 37 days, 8 a round
            rounds += 1
        assert rounds == 5
        stored = await conn.fetchval("SELECT count(DISTINCT period_start) FROM quality_daily WHERE period = 'day'")
        assert stored == 28 + 11
        # day: the 10th, the last whole day
        assert gauge("nhjc_scorecard_ratio", period="day", measure="completeness") == pytest.approx(362 / 480)
        assert gauge("nhjc_scorecard_ratio", period="day", measure="verification") == pytest.approx(2 / 4)
        assert gauge("nhjc_scorecard_ratio", period="day", measure="start") == pytest.approx((144 + 89) / 362)
        assert gauge("nhjc_scorecard_ratio", period="day", measure="agreement") == pytest.approx(2 / 3)
        bands = {b: gauge("nhjc_enterprises_by_scorecard", period="day", measure="completeness", band=b)
                 for b in ("<50%", "50-90%", ">=90%")}
        assert bands == {"<50%": 0, "50-90%": 1, ">=90%": 1}  # E3 has no items: in no band
        bands = {b: gauge("nhjc_enterprises_by_scorecard", period="day", measure="verification", band=b)
                 for b in ("<50%", "50-90%", ">=90%")}
        assert bands == {"<50%": 1, "50-90%": 0, ">=90%": 1}
        assert gauge("nhjc_scorecard_ratio", period="month", measure="verification") == pytest.approx(36 / 49)
        assert gauge("nhjc_scorecard_errors_total") == 0
        # another instance takes the job over: this one shows no stale figures
        job.disowned()
        assert math.isnan(gauge("nhjc_scorecard_ratio", period="day", measure="completeness"))
        assert gauge("nhjc_enterprises_by_scorecard", period="day", measure="completeness", band=">=90%") == 0
        await job.update(NOW)
        assert gauge("nhjc_scorecard_ratio", period="day", measure="completeness") == pytest.approx(362 / 480)
        # no enterprise ever becomes a label
        for metric in registry.collect():
            for sample in metric.samples:
                assert set(sample.labels) <= {"period", "measure", "band"}, sample
    finally:
        await conn.close()


async def test_the_report_in_its_three_formats(db: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        await fill(conn)
        rows = await report_rows(conn, MARCH, zone=ZONE, settle_s=SETTLE_S, now=NOW, enterprise=None)
        as_json = json.loads(render_report(rows, "json"))
        assert [o["enterprise"] for o in as_json] == sorted([E1, E2, E3])
        by = {o["enterprise"]: o for o in as_json}
        assert by[E1]["completeness"] == pytest.approx(272 / 2976)
        assert by[E3]["completeness"] is None and by[E3]["verification"] == 1.0
        assert {i["code"]: i["agrees"] for i in by[E1]["item_scores"]} == {EL: True, GAS: False, POWER: None, NEW: None}
        table = render_report(rows, "table")
        assert E1 in table and "9.1%" in table  # 272 / 2976
        parsed = list(csv.DictReader(io.StringIO(render_report(rows, "csv"))))
        assert [r["enterprise"] for r in parsed] == sorted([E1, E2, E3])
        assert float(parsed[1]["verification"]) == pytest.approx(25 / 38)
        one = await report_rows(conn, MARCH, zone=ZONE, settle_s=SETTLE_S, now=NOW, enterprise=E2)
        assert [o["enterprise"] for o in json.loads(render_report(one, "json"))] == [E2]
    finally:
        await conn.close()


def nhjc(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NHJC_DATABASE__URL": dsn, "NHJC_PROCESSING__TIMEZONE": TZ}
    return subprocess.run([sys.executable, "-m", "nhjc", *args], env=env, cwd=ROOT, check=False,
                          capture_output=True, text=True, timeout=60)


async def test_the_command(db: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        await fill(conn)
    finally:
        await conn.close()
    r = nhjc(db, "quality", "report", "--month", "2026-03", "--format", "json")
    assert r.returncode == 0, r.stderr
    by = {o["enterprise"]: o for o in json.loads(r.stdout)}
    assert set(by) == {E1, E2, E3}
    assert by[E2]["completeness"] == pytest.approx(90 / (31 * 96))  # a past month: every day of it
    r = nhjc(db, "quality", "report", "--month", "2026-03", "--enterprise", E1)
    assert r.returncode == 0 and NEW in r.stdout and "differs" in r.stdout, r.stderr  # its items too
    r = nhjc(db, "quality", "report", "--month", "2026-13")
    assert r.returncode == 2 and "month '2026-13' is not YYYY-MM" in r.stderr
    r = nhjc(db, "quality", "report", "--month", "2026-03", "--enterprise", "nobody")
    assert r.returncode == 1 and "no scorecard for enterprise nobody in 2026-03" in r.stderr
    r = nhjc(db.rsplit("/", 1)[0] + "/nhjc_no_such_database", "quality", "report")
    assert r.returncode == 1 and r.stderr.startswith("nhjc quality report: ") and "Traceback" not in r.stderr


async def test_a_failed_round_is_counted_and_raised_to_the_runner(db: str) -> None:
    empty = await create_database("nhjc_test_noscorecard")  # no tables: every round fails
    conn = await asyncpg.connect(empty)
    try:
        registry = CollectorRegistry()
        job = ScorecardJob(ProcessingSettings(timezone=TZ), pool=conn, registry=registry)
        with pytest.raises(asyncpg.UndefinedTableError):
            await job.step()
        assert registry.get_sample_value("nhjc_scorecard_errors_total") == 1
        assert math.isnan(registry.get_sample_value("nhjc_scorecard_ratio", {"period": "month", "measure": "start"}))
    finally:
        await conn.close()
        await drop_database(empty)
