"""Record and item-configuration values as the platforms see them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tools.platform.targets import TZ, local
from uplink.records import ItemConfig, Record, energy_of, local_text, scope_of


@pytest.mark.parametrize(("code", "scope"), [
    ("00-00-0000-011500-01", 1), ("01-00-0000-023300-01", 2), ("01-02-0000-023300-01", 3),
    ("01-02-0103-023300-01", 4), ("00-00-0001-023300-01", 4), ("0000", 1),
])
def test_scope_from_the_code_shape(code: str, scope: int) -> None:
    assert scope_of(code) == scope


def test_energy_kind_inside_a_code() -> None:
    assert energy_of("01-00-0000-023300-01") == "3300"
    assert energy_of("0000") == "0000"


def test_times_are_local_and_naive_times_refused() -> None:
    assert local_text(datetime(2026, 11, 27, 16, 0, tzinfo=UTC), TZ) == "2026-11-28 00:00:00"
    with pytest.raises(ValueError):
        local_text(datetime(2026, 11, 28), TZ)


def test_record_on_the_wire() -> None:
    r = Record("E", "0000", "00-00-0000-000000-00", 1, local(2026, 11, 27), 3600.5, False, 1, 4, 7)
    assert r.to_wire(TZ, datetime(2026, 11, 27, 16, 10, 5, tzinfo=UTC)) == {
        "dataCode": "00-00-0000-000000-00", "dataValue": 3600.5, "inputType": 4, "statType": 1,
        "statDate": "2026-11-27 00:00:00", "uploadDate": "2026-11-28 00:10:05", "scope": 1, "valid": False}


def test_item_ranges_are_per_quarter_hour_except_for_instant_items() -> None:
    cumulative = ItemConfig("01-00-0000-023300-01", "电", "3300", 2, 4, "cumulative", 0.0, 2000.0)
    assert (cumulative.to_wire()["dataValueMin"], cumulative.to_wire()["dataValueMax"]) == (0.0, 500.0)
    instant = ItemConfig("01-00-0000-023300-02", "功率", "3300", 2, 4, "instant", 10.0, 800.0)
    assert instant.to_wire()["dataValueMax"] == 800.0
    assert "dataValueMax" not in ItemConfig("00-00-0000-011500-01", "气", "1500", 1, 4).to_wire()
