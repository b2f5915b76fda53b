"""The `services` marker is put on every test that needs the broker or the database,
so `pytest -m "not services"` is a quick run that needs neither: collected here in a
pytest of its own, which reports each test's fixtures (with those of the fixtures it
uses) and markers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import SERVICE_FIXTURES, SERVICE_MODULES
from tests.services import ROOT

REPORTER = '''
import json, os

def pytest_collection_finish(session):
    with open(os.environ["COLLECTED_JSON"], "w") as f:
        json.dump([{"id": i.nodeid, "fixtures": list(getattr(i, "fixturenames", ())),
                    "markers": [m.name for m in i.iter_markers()]} for i in session.items], f)
'''


def _collect(tmp_path: Path, *args: str) -> list[dict[str, Any]]:
    (tmp_path / "collected_reporter.py").write_text(REPORTER)
    out = tmp_path / "collected.json"
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "collected_reporter", "--co", "-q",
                        "-p", "no:randomly", "-p", "no:cacheprovider", *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
                       env={**os.environ, "PYTHONPATH": str(tmp_path), "COLLECTED_JSON": str(out)})
    assert r.returncode == 0, r.stdout + r.stderr
    items: list[dict[str, Any]] = json.loads(out.read_text())
    return items


def test_not_services_collects_no_test_that_needs_a_service(tmp_path: Path) -> None:
    everything = _collect(tmp_path)
    quick = _collect(tmp_path, "-m", "not services")
    needing = [t for t in everything if set(t["fixtures"]) & SERVICE_FIXTURES]
    assert needing, "no test uses a service fixture: the check below would prove nothing"
    assert all("services" in t["markers"] for t in needing)
    # Through a fixture built on one: test_fault_accounting's `proxied` is built on db.
    via = [t for t in everything if "proxied" in t["fixtures"]]
    assert via and all("db" in t["fixtures"] and "services" in t["markers"] for t in via)
    leaked = [t["id"] for t in quick
              if set(t["fixtures"]) & SERVICE_FIXTURES or Path(t["id"].split("::")[0]).stem in SERVICE_MODULES]
    assert leaked == []
    assert 0 < len(quick) < len(everything)
    assert not any("services" in t["markers"] for t in quick)
