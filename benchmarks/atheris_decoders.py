"""Coverage-guided fuzzing of the frame and items decoders with atheris (libFuzzer).
Any exception that escapes ``decode_readings``, or anything but ItemsError from the
items decoders, or a quarantine text PostgreSQL would refuse, stops the run with the
input that caused it (written by libFuzzer as ``crash-…``).

atheris is not a dependency of nhjc; install it in a venv of your own
(``pip install -e '.[fuzz]'``), then for example:

    .venv/bin/python -m benchmarks.atheris_decoders -runs=1000000 -max_len=8192

Without a corpus directory on the command line it starts from a few valid frames and
items messages in a temporary one.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["ingest"]):
    from ingest.frames import decode_readings, pg_storable
    from ingest.items import ItemsError, parse_items_file_bytes, parse_items_payload
    from ingest.topics import parse_topic

ENTERPRISE = "91350100M000100Y43"
TOPIC_NAME = f"nhjc/v1/{ENTERPRISE}/gw-1/readings"
TOPIC = parse_topic(TOPIC_NAME)
KNOWN = frozenset({"01-00-0000-023300-01"})
NOW_US = 1_764_303_300 * 1_000_000

SEEDS = [
    {"v": 1, "seq": 3, "readings": [{"code": "01-00-0000-023300-01", "ts": 1764303300, "value": 182736.25},
                                    {"code": "0100000002330001", "ts": "2025-11-28T12:15:00+08:00", "value": 5}]},
    {"v": 1, "items": [{"code": "01-00-0000-023300-01", "name": "总进线", "energy": "3300", "unit": "kWh",
                        "kind": "cumulative", "multiplier": 200, "rollover": 999999.99}]},
    [{"enterprise": ENTERPRISE, "code": "01-00-0000-023300-01", "energy": "3300", "unit": "kWh",
      "kind": "instant", "min": 0, "max": 10}],
]




def test_one_input(data: bytes) -> None:
    b = decode_readings(TOPIC_NAME, TOPIC, data, NOW_US, known_codes=KNOWN)
    for q in b.quarantine:
        if not all(pg_storable(t) for t in (q.topic, q.enterprise, q.reason, q.detail)):
            raise AssertionError(f"unstorable quarantine text: {q!r}")
    try:
        _good, bad = parse_items_payload(data, ENTERPRISE)
        if not all(pg_storable(why) for _i, why, _raw in bad):
            raise AssertionError(f"unstorable item reason: {bad!r}")
    except ItemsError as exc:
        if not pg_storable(str(exc)):
            raise AssertionError(f"unstorable ItemsError: {exc!r}") from None
    for encoding in (None, "gb18030"):
        with contextlib.suppress(ItemsError):
            parse_items_file_bytes(data, encoding)


def main() -> None:
    args = list(sys.argv)
    if not any(Path(a).is_dir() for a in args[1:] if not a.startswith("-")):
        corpus = tempfile.mkdtemp(prefix="nhjc-fuzz-")
        for i, seed in enumerate(SEEDS):
            Path(corpus, f"seed{i}").write_bytes(json.dumps(seed, ensure_ascii=False).encode())
        args.append(corpus)
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
