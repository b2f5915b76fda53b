from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import Mosquitto, drop_database, migrated_database, run


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One private Mosquitto for the test session (tests use distinct topics/enterprises)."""
    b = Mosquitto(tmp_path_factory.mktemp("mosquitto")).start()
    yield b
    b.stop()


@pytest.fixture
def fresh_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker of the test's own, for tests that stop or restart it."""
    b = Mosquitto(tmp_path / "mosquitto").start()
    yield b
    b.stop()


@pytest.fixture
def db() -> Iterator[str]:
    """DSN of a fresh, migrated database (TimescaleDB), dropped afterwards."""
    dsn = run(migrated_database())
    yield dsn
    run(drop_database(dsn))
