"""Faults during load, each followed by exact accounting (tests/fault_scenarios.py):
every valid reading stored once with its value, every 15-minute period (items and the
enterprise total) at both platforms with its value, and quarantine holding exactly the
bad inputs mixed into the load.  Short rounds here; tests/soak.py runs them for longer
and prints the recovery times, which are never asserted."""

from __future__ import annotations

import random
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.adversity import PrivatePostgres, TcpProxy
from tests.fault_scenarios import PLATFORMS, RoundResult, chain_on, run_round
from tests.harness import platform_control
from tools.guest import PrivateBroker
from tools.process import query


def assert_exact(r: RoundResult) -> None:
    a = r.account
    assert not r.service_exited, "nhjc run exited on its own"
    assert r.recovery_s is not None, f"not caught up: {a.problems()}"
    assert a.readings_ok, a.problems()
    assert a.periods_ok, a.problems()
    # A commit whose outcome the service did not learn (SIGKILL before the acknowledgement,
    # a connection lost during COMMIT) is redelivered or retried: readings are keyed, and
    # so are quarantine rows (by their content), so neither is stored twice.
    assert not a.quarantine_missing and not a.quarantine_unexpected and not a.quarantine_copies, a.problems()


def test_repeated_sigkill_during_load(fresh_broker: PrivateBroker, db: str, tmp_path: Path) -> None:
    with chain_on(fresh_broker, db, tmp_path) as chain:
        r = run_round(chain, "sigkill", 1, rng=random.Random(1))
    assert r.service_restarts == 3
    assert_exact(r)


def test_broker_restart_during_load(fresh_broker: PrivateBroker, db: str, tmp_path: Path) -> None:
    with chain_on(fresh_broker, db, tmp_path) as chain:
        r = run_round(chain, "broker_restart", 1, rng=random.Random(2))
    assert_exact(r)


def test_one_platform_down_for_a_simulated_hour(fresh_broker: PrivateBroker, db: str, tmp_path: Path) -> None:
    # The fault itself checks that the other platform got every period while this one
    # refused, and that this one got none; then it comes back and must get them all.
    with chain_on(fresh_broker, db, tmp_path) as chain:
        r = run_round(chain, "platform_down", 1, rng=random.Random(3))
        assert_exact(r)
        for name, url in chain.platforms.items():
            stats = platform_control(url)  # the mode is back to healthy
            assert stats["down"] is False, name


def test_postgres_restart_during_load(fresh_broker: PrivateBroker, tmp_path: Path) -> None:
    with PrivatePostgres() as pg:
        dsn = pg.create_database()
        with chain_on(fresh_broker, dsn, tmp_path, admin_dsn=pg.admin_dsn, database=pg) as chain:
            r = run_round(chain, "pg_restart", 1, rng=random.Random(4))
    assert_exact(r)


def test_backend_termination_during_load(fresh_broker: PrivateBroker, db: str, tmp_path: Path) -> None:
    with chain_on(fresh_broker, db, tmp_path) as chain:
        r = run_round(chain, "terminate_backends", 1, rng=random.Random(5))
    assert_exact(r)


@pytest.fixture
def proxied(db: str) -> Iterator[tuple[str, TcpProxy]]:
    """The test database, and a stalling and dropping proxy in front of its server."""
    port = int(db.rsplit(":", 1)[1].split("/", 1)[0])
    with TcpProxy(port) as proxy:
        yield db.replace(f":{port}/", f":{proxy.port}/"), proxy


def test_database_proxy_stalls_then_drops_during_load(fresh_broker: PrivateBroker, db: str,
                                                      proxied: tuple[str, TcpProxy], tmp_path: Path) -> None:
    service_dsn, proxy = proxied
    with chain_on(fresh_broker, db, tmp_path, service_dsn=service_dsn, proxy=proxy) as chain:
        r = run_round(chain, "proxy_stall_drop", 1, rng=random.Random(6))
    assert proxy.accepted > 1  # the service did reconnect through it
    assert_exact(r)


def test_accounting_sees_each_kind_of_loss(fresh_broker: PrivateBroker, db: str, tmp_path: Path) -> None:
    """The accounting itself: after a clean round it is exact, and it notices a reading
    lost, a value changed, a stray quarantine row, a lost one, and a platform that forgot."""
    with chain_on(fresh_broker, db, tmp_path) as chain:
        r = run_round(chain, "none", 1)
        assert_exact(r)
        assert r.account.quarantine_expected == r.account.quarantine_actual == 21
        assert all(r.account.targets[p].expected == 80 for p in PLATFORMS)
        ledger = r.ledger
        (e1, c1, t1), (e2, c2, t2) = list(ledger.readings)[:2]
        query(db, "DELETE FROM readings WHERE enterprise = %s AND code = %s"
                  " AND ts = to_timestamp(%s::float8 / 1e6) RETURNING 1", e1, c1, t1)
        query(db, "UPDATE readings SET value = value + 1 WHERE enterprise = %s AND code = %s"
                  " AND ts = to_timestamp(%s::float8 / 1e6) RETURNING 1", e2, c2, t2)
        topic, reason = ledger.bad[0]
        # A row of another reason, and a second row of a known bad input (as a store
        # without a key on its quarantine rows would write on a redelivery).
        query(db, "INSERT INTO quarantine (received_at, topic, enterprise, reason, raw, fingerprint)"
                  " SELECT now(), %s, NULL, 'bad_shape', ''::bytea, sha256(random()::text::bytea) UNION ALL"
                  " SELECT now(), %s, NULL, %s, ''::bytea, sha256(random()::text::bytea) RETURNING 1",
              topic, topic, reason)
        topic2, reason2 = ledger.bad[1]
        query(db, "DELETE FROM quarantine WHERE id = (SELECT min(id) FROM quarantine WHERE topic = %s"
                  " AND reason = %s) RETURNING 1", topic2, reason2)
        platform_reset(chain.platforms["national"])
        a = chain.account(ledger)
    assert (a.missing, a.wrong, a.stored, a.published) == (1, 1, a.published - 1, len(ledger.readings))
    assert a.quarantine_unexpected == (f"{topic} bad_shape",)
    assert a.quarantine_copies == (f"{topic} {reason}",)
    assert a.quarantine_missing == (f"{topic2} {reason2}",)
    assert a.targets["national"].missing == 80 and a.targets["provincial"].missing == 0
    assert not a.ok


def platform_reset(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(url + "/_reset", data=b"", method="POST"), timeout=5).close()
