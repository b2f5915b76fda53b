"""``nhjc uplink rejected`` and ``nhjc uplink resend`` over a real outbox: refusals made
by an adapter in memory, listed by the command in local time with their reason, and
sent again only by the operator's ``resend``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from tests.test_uplink_delivery import NOW, seed
from tests.test_uplink_stage import FakeAdapter, fake_target, states
from tests.test_uplink_support import E1, E2, POWER, FakeClock, outbox

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOT = Path(__file__).resolve().parents[1]


def nhjc(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NHJC_DATABASE__URL": dsn, "NHJC_PROCESSING__TIMEZONE": "Asia/Shanghai",
           "NHJC_UPLINK__TARGETS__P__URL": "http://platform.invalid",
           "NHJC_UPLINK__TARGETS__P__TOTAL_CODE": "99-00-0000-000000-00"}
    return subprocess.run([sys.executable, "-m", "nhjc", *args], env=env, cwd=ROOT, check=False,
                          capture_output=True, text=True, timeout=60)


async def test_rejected_lists_kept_refusals_and_resend_sends_them_again(db: str) -> None:
    await seed(db)
    clock, registry, fake = FakeClock(NOW), CollectorRegistry(), FakeAdapter()
    fake.refuse = {POWER}
    async with fake_target(db, fake, clock, registry) as stage:
        await stage.step()
        assert states(await outbox(db, "p"))["rejected"] == 6

        r = nhjc(db, "uplink", "rejected", "--target", "p")
        assert r.returncode == 0, r.stderr
        header, *lines = r.stdout.splitlines()
        assert header.split("\t") == ["target", "enterprise", "dataCode", "statType", "period", "rejected",
                                      "status", "reason", "message"]
        rows = {tuple(line.split("\t")) for line in lines}
        assert len(rows) == 6
        for e in (E1, E2):
            assert ("p", e, POWER, "0", "2026-11-28 11:45:00", "2026-11-28 12:16:30", "400", "http_4xx",
                    "dataCode refused") in rows
            assert ("p", e, POWER, "2", "2026-10-01 00:00:00", "2026-11-28 12:16:30", "400", "http_4xx",
                    "dataCode refused") in rows
        assert len(nhjc(db, "uplink", "rejected", "--limit", "2").stdout.splitlines()) == 3
        assert nhjc(db, "uplink", "rejected", "--target", "q").stdout.splitlines() == [header]

        # Stepping again sends nothing refused; the operator's resend does, for E1 only.
        written = len(fake.written())
        clock.advance(seconds=30)
        await stage.step()
        assert len(fake.written()) == written
        fake.refuse = set()
        r = nhjc(db, "uplink", "resend", "--target", "p", "--enterprise", E1)
        assert r.returncode == 0 and r.stdout.startswith(f"3 rejected record(s) of {E1} at p pending again")
        await stage.step()
        assert sorted(k[0] for k in fake.written()[written:]) == [E1] * 3
        rows_now = await outbox(db, "p")
        assert states(rows_now) == {"acked": len(rows_now) - 3, "rejected": 3}
        assert {r["enterprise"] for r in rows_now if r["state"] == "rejected"} == {E2}


async def test_usage_errors_are_one_line(db: str) -> None:
    r = nhjc(db, "uplink", "rejected", "--limit", "0")
    assert r.returncode == 1 and r.stderr.strip() == "nhjc uplink rejected: --limit must be at least 1"
    r = nhjc(db, "uplink", "resend", "--target", "p")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
