from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import run
from tools.guest import PrivateBroker, drop_database, migrated_database

# Fixtures that start or need a service; a test using one (directly or through another
# fixture built on it) is marked `services` by pytest_collection_modifyitems below.
SERVICE_FIXTURES = frozenset({"broker", "fresh_broker", "db"})
# Test modules that start services themselves (a private broker, PostgreSQL, `nhjc run`
# or a script that needs them) in their own tests rather than through a fixture.
SERVICE_MODULES = frozenset({
    "test_broker_secure", "test_collector_window", "test_demo", "test_migrate", "test_setup",
    "test_store",
})


def needs_services(item: pytest.Item) -> bool:
    """Whether ``item`` needs the broker or the database: it uses a service fixture (the
    closure of its fixtures counts those of fixtures it uses), or its module starts them."""
    fixtures = set(getattr(item, "fixturenames", ()))
    return bool(fixtures & SERVICE_FIXTURES) or item.path.stem in SERVICE_MODULES


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if needs_services(item):
            item.add_marker(pytest.mark.services)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    """One private Mosquitto for the test session (tests use distinct topics/enterprises)."""
    b = PrivateBroker(tmp_path_factory.mktemp("mosquitto")).start()
    yield b
    b.stop()


@pytest.fixture
def fresh_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    """A broker of the test's own, for tests that stop or restart it."""
    b = PrivateBroker(tmp_path / "mosquitto").start()
    yield b
    b.stop()


@pytest.fixture
def db() -> Iterator[str]:
    """DSN of a fresh, migrated database (TimescaleDB), dropped afterwards."""
    dsn = run(migrated_database())
    yield dsn
    run(drop_database(dsn))
