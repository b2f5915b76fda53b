"""``nhjc meters replace`` on a real database: a replacement is recorded (and the segment
it falls in queued), the same again changes nothing, a record the readings contradict is
recorded with a warning saying what processing will make of it, and every bad argument
is one line naming it, exit status 1, nothing stored."""

from __future__ import annotations

import os
import subprocess
import sys

import asyncpg
import pytest

from tests.services import ROOT
from tests.strategies import ELEC, GAS, item
from tests.test_processing_aggregator import add_items, store
from tools.gateway import enterprise_code

pytestmark = pytest.mark.services
ENT = enterprise_code(7)
BARE = ELEC.replace("-", "")


def nhjc(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NHJC_DATABASE__URL": dsn}
    return subprocess.run([sys.executable, "-m", "nhjc", "meters", "replace", *args], env=env,
                          cwd=ROOT, check=False, capture_output=True, text=True, timeout=60)


def replace_args(**over: str) -> list[str]:
    args = {"enterprise": ENT, "data-code": BARE, "time": "2024-03-01T00:07:00+08:00",
            "old-final": "114", "new-initial": "5"} | over
    return [x for k, v in args.items() for x in (f"--{k}", v)]


async def _setup(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await add_items(conn, [item(enterprise=ENT), item(GAS, enterprise=ENT, kind="interval")])
        await store(conn, [(ELEC, 1709222400_000000, 100.0), (ELEC, 1709222700_000000, 110.0),
                           (ELEC, 1709223000_000000, 9.0)], enterprise=ENT)
        await conn.execute("DELETE FROM pending_recompute")
    finally:
        await conn.close()


async def _fetch(dsn: str, sql: str) -> list[tuple[object, ...]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


async def test_a_replacement_is_recorded_once_and_its_segment_queued(db: str) -> None:
    await _setup(db)
    r = nhjc(db, *replace_args(), "--old-ser-no", "A-1", "--new-ser-no", "B-2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"replacement recorded: {ENT} {ELEC} at 2024-03-01T00:07:00+08:00")
    assert r.stderr == ""
    assert await _fetch(db, "SELECT code, old_ser_no, new_ser_no, old_final, new_initial, source"
                            " FROM meter_replacements") == [
        (ELEC, "A-1", "B-2", 114.0, 5.0, "command:meters replace")]
    # The segment (00:05, 00:10] holding 00:07 is queued, nothing else.
    assert await _fetch(db, "SELECT extract(epoch FROM from_ts)::int8, extract(epoch FROM to_ts)::int8"
                            " FROM pending_recompute") == [(1709222700, 1709223000)]
    again = nhjc(db, *replace_args(), "--old-ser-no", "A-1", "--new-ser-no", "B-2")
    assert (again.returncode, again.stdout.split(":")[0]) == (0, "replacement unchanged")


async def test_a_contradicted_record_is_kept_with_a_warning(db: str) -> None:
    await _setup(db)
    r = nhjc(db, *replace_args(**{"old-final": "101"}))
    assert r.returncode == 0
    assert "warning: the last reading before 2024-03-01T00:07:00+08:00 is 110.0, above --old-final" in r.stderr
    assert "(old_below)" in r.stderr


@pytest.mark.parametrize(("over", "message"), [
    ({"enterprise": "91340100MA2N0XXXX1"}, "--enterprise '91340100MA2N0XXXX1': not a GB 32100 credit code"),
    ({"data-code": "01-00-23300"}, "--data-code '01-00-23300': not a data code"),
    ({"time": "2024-03-01T00:07:00"}, "--time '2024-03-01T00:07:00': not an RFC 3339 time with its UTC offset"),
    ({"time": "yesterday"}, "--time 'yesterday': not an RFC 3339 time"),
    ({"old-final": "abc"}, "--old-final 'abc': not a number"),
    ({"old-final": "nan"}, "--old-final 'nan': a register value is a finite number >= 0"),
    ({"new-initial": "-1"}, "--new-initial '-1': a register value is a finite number >= 0"),
    ({"data-code": "99-00-0000-023300-01"}, "no data item 99-00-0000-023300-01 of enterprise"),
    ({"data-code": GAS}, f"data item {GAS} is interval, not cumulative"),
])
async def test_every_bad_argument_is_one_line_naming_it(db: str, over: dict[str, str], message: str) -> None:
    await _setup(db)
    r = nhjc(db, *replace_args(**over))
    assert r.returncode == 1
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("nhjc meters replace: "), r.stderr
    assert message in lines[0]
    assert await _fetch(db, "SELECT count(*) FROM meter_replacements") == [(0,)]


async def test_a_replacement_recorded_by_mistake_is_withdrawn(db: str) -> None:
    await _setup(db)
    assert nhjc(db, *replace_args()).returncode == 0
    await _fetch(db, "DELETE FROM pending_recompute RETURNING 1")
    where = ["--enterprise", ENT, "--data-code", ELEC, "--time", "2024-03-01T00:07:00+08:00"]
    r = nhjc(db, *where, "--withdraw")
    assert (r.returncode, r.stdout.split(":")[0]) == (0, "replacement withdrawn"), r.stderr
    assert await _fetch(db, "SELECT count(*) FROM meter_replacements") == [(0,)]
    assert await _fetch(db, "SELECT extract(epoch FROM from_ts)::int8, extract(epoch FROM to_ts)::int8"
                            " FROM pending_recompute") == [(1709222700, 1709223000)]
    again = nhjc(db, *where, "--withdraw")
    assert again.returncode == 1
    assert again.stderr.strip() == (f"nhjc meters replace: no replacement is recorded for {ENT} {ELEC}"
                                    " at 2024-03-01T00:07:00+08:00")
    missing = nhjc(db, *where, "--new-initial", "5")
    assert missing.returncode == 1
    assert missing.stderr.strip() == ("nhjc meters replace: --old-final is required (the register value"
                                      " as the meter showed it)")
