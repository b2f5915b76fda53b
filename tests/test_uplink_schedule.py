"""When periods become due, and the SQL twin of that rule."""

from __future__ import annotations

import random
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.backoff import backoff_delay
from tools.platform.targets import TZ, local
from uplink.schedule import (
    DUE_SQL,
    due_at,
    enqueue_limit,
    initial_through,
    next_start,
    period_start,
)

DELAY = timedelta(seconds=60)
UPLOAD = time(0, 10)


def test_realtime_period_is_due_a_delay_after_it_closes() -> None:
    assert due_at(0, local(2026, 11, 28, 12, 0), TZ, realtime_delay=DELAY, upload_time=UPLOAD) \
        == local(2026, 11, 28, 12, 16)
    # At 12:15:59 the 12:00 period is not yet due; at 12:16:00 it is.
    assert enqueue_limit(0, local(2026, 11, 28, 12, 15, 59), TZ, DELAY) == local(2026, 11, 28, 12, 0)
    assert enqueue_limit(0, local(2026, 11, 28, 12, 16, 0), TZ, DELAY) == local(2026, 11, 28, 12, 15)


@pytest.mark.parametrize(("stat_type", "start", "due"), [
    (1, local(2026, 11, 27), local(2026, 11, 28, 0, 10)),
    (1, local(2026, 12, 31), local(2027, 1, 1, 0, 10)),
    (2, local(2026, 11, 1), local(2026, 12, 2, 0, 10)),
    (2, local(2026, 12, 1), local(2027, 1, 2, 0, 10)),
    (3, local(2026, 1, 1), local(2027, 1, 2, 0, 10)),
])
def test_days_months_years_go_at_the_upload_time(stat_type: int, start: datetime, due: datetime) -> None:
    assert due_at(stat_type, start, TZ, realtime_delay=DELAY, upload_time=UPLOAD) == due


def test_closed_periods_enter_the_outbox() -> None:
    now = local(2026, 12, 1, 0, 5)
    assert enqueue_limit(1, now, TZ, DELAY) == local(2026, 12, 1)   # 30 Nov has closed
    assert enqueue_limit(2, now, TZ, DELAY) == local(2026, 12, 1)   # November has closed
    assert enqueue_limit(3, now, TZ, DELAY) == local(2026, 1, 1)    # 2026 has not


def test_a_new_target_starts_with_the_backfill_and_the_latest_finished_periods() -> None:
    now = local(2026, 12, 1, 0, 30)
    kw = {"backfill": timedelta(days=1), "realtime_delay": DELAY}
    assert initial_through(0, now, TZ, **kw) == local(2026, 11, 30, 0, 30)
    assert initial_through(1, now, TZ, **kw) == local(2026, 11, 30)
    assert initial_through(2, now, TZ, **kw) == local(2026, 11, 1)   # November, not lost
    assert initial_through(3, now, TZ, **kw) == local(2025, 1, 1)
    kw0 = {"backfill": timedelta(0), "realtime_delay": DELAY}
    assert initial_through(0, now, TZ, **kw0) == local(2026, 12, 1, 0, 0)  # the last due one


def test_periods_follow_local_time() -> None:
    t = datetime(2026, 11, 27, 16, 7, tzinfo=UTC)  # 00:07 on the 28th in Shanghai
    assert period_start(1, t, TZ) == local(2026, 11, 28)
    assert period_start(0, t, TZ) == local(2026, 11, 28, 0, 0)
    kolkata = ZoneInfo("Asia/Kolkata")  # 00:10 UTC is 05:40 there
    assert period_start(0, datetime(2026, 1, 1, 0, 10, tzinfo=UTC), kolkata).astimezone(kolkata) \
        == datetime(2026, 1, 1, 5, 30, tzinfo=kolkata)
    assert period_start(1, datetime(2026, 1, 1, 0, 10, tzinfo=UTC), kolkata) \
        == datetime(2026, 1, 1, tzinfo=kolkata)
    assert next_start(2, local(2026, 12, 1), TZ) == local(2027, 1, 1)


@given(attempt=st.integers(1, 200), lo=st.floats(0.01, 10), span=st.floats(1, 100))
def test_backoff_grows_and_stays_bounded(attempt: int, lo: float, span: float) -> None:
    hi = lo * span
    d = backoff_delay(attempt, lo, hi)
    ceiling = min(hi, lo * 2 ** (attempt - 1))
    assert ceiling / 2 <= d <= ceiling


def _samples() -> list[tuple[str, int, datetime, time]]:
    rng = random.Random(37947)
    zones = ["Asia/Shanghai", "Europe/Berlin", "Asia/Kolkata"]
    base = datetime(2024, 1, 1, tzinfo=UTC)
    out = []
    for _ in range(400):
        tz = ZoneInfo(rng.choice(zones))
        stat = rng.randrange(4)
        t = base + timedelta(seconds=rng.randrange(4 * 366 * 86400))
        upload = time(rng.randrange(24), rng.randrange(60), rng.randrange(60))
        if tz.key == "Europe/Berlin" and upload.hour == 2:
            upload = time(1, upload.minute)  # skip the spring-forward gap: no such wall time
        out.append((tz.key, stat, period_start(stat, t, tz), upload))
    # Around Berlin's DST changes.
    for day in (datetime(2026, 3, 29, 1, tzinfo=UTC), datetime(2026, 10, 25, 1, tzinfo=UTC)):
        for stat in range(4):
            out.append(("Europe/Berlin", stat, period_start(stat, day, ZoneInfo("Europe/Berlin")), UPLOAD))
    return out


async def test_sql_due_time_agrees_with_python(db: str) -> None:
    sql = "SELECT " + DUE_SQL.format(tz="$3", delay="$4", upload="$5::time") + \
          " FROM (SELECT $1::smallint AS stat_type, $2::timestamptz AS period_start) c"
    conn = await asyncpg.connect(db)
    try:
        for zone, stat, start, upload in _samples():
            got = await conn.fetchval(sql, stat, start, zone, DELAY, upload)
            want = due_at(stat, start, ZoneInfo(zone), realtime_delay=DELAY, upload_time=upload)
            assert got == want, (zone, stat, start, upload)
    finally:
        await conn.close()
