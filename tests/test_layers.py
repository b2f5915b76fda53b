"""The import graph has floors, and every arrow points down: a stage imports only the
floors beneath it, never one beside or above it, and no module imports itself back
through others.  Read from the source (no import is run), so a new arrow upward fails
here before anyone has to find it in review.

    nhjc        the composition root: command line, service, operator endpoint
    tools       simulator, mock platforms, private broker and scratch database
    uplink      adapters, outbox, schedule, planner, delivery       (config, runtime)
    processing  validation, aggregation, completeness   (config, runtime, ingest)
    ingest      collector, decoding, quality flags, reading store, registries
    runtime     database pool, errors and health, schema, backoff, stage runner
    config      the settings model
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# What each package may import from the project (besides itself).  uplink is fed by the
# database alone: it imports no other stage.
ALLOWED: dict[str, set[str]] = {
    "config": set(),
    "runtime": set(),
    "ingest": {"config", "runtime"},
    "processing": {"config", "runtime", "ingest"},
    "uplink": {"config", "runtime"},
    "tools": {"config", "runtime", "ingest", "processing", "uplink"},
    "nhjc": {"config", "runtime", "ingest", "processing", "uplink", "tools"},
}
PROJECT = set(ALLOWED) | {"tests", "benchmarks"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Project modules this file imports (``from a import b`` counts a.b when that is a
    module, else a)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n.split(".")[0] in PROJECT}


def _sources(*packages: str) -> dict[str, Path]:
    return {_module(p): p for pkg in packages for p in sorted((ROOT / pkg).rglob("*.py"))}


def test_every_arrow_points_down() -> None:
    sources = _sources(*ALLOWED)
    wrong = []
    for module, path in sources.items():
        here = module.split(".")[0]
        for name in _imports(path):
            there = name.split(".")[0]
            if there != here and there not in ALLOWED[here]:
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "imports across floors:\n" + "\n".join(sorted(wrong))


def test_no_cycles() -> None:
    sources = _sources(*ALLOWED)
    graph = {m: {n for n in _imports(p) if n in sources and n != m} for m, p in sources.items()}
    # A package's __init__ re-exporting its modules is not a cycle of the design.
    for m in graph:
        graph[m] = {n for n in graph[m] if not (m.startswith(n + ".") and n in sources)}
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None


def test_benchmarks_import_nothing_from_tests() -> None:
    wrong = [f"{p.relative_to(ROOT)} imports {n}" for p in sorted((ROOT / "benchmarks").rglob("*.py"))
             for n in _imports(p) if n.split(".")[0] == "tests"]
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_an_arrow_upward(tmp_path: Path) -> None:
    """The check itself can fail: an ingest module importing processing is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from processing.aggregator import Aggregator\nimport uplink.runner\n")
    assert _imports(bad) >= {"processing.aggregator", "uplink.runner"}
    assert {n.split(".")[0] for n in _imports(bad)} - ALLOWED["ingest"] == {"processing", "uplink"}
