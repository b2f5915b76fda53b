"""Fuzz the frame and items decoders in-process: N inputs, 30 % generated (valid and
mutated frames and items messages, JSON-ish structures with wrong types, deep nesting,
huge integers, NaN literals, NUL, lone surrogates, invalid UTF-8, duplicate keys, random
bytes), 70 % byte mutations of recent generated ones, and every 20,000th a 5,000-reading
frame of garbage.  Every input goes through
``decode_readings`` and ``parse_items_payload``, a quarter also through
``parse_items_file_bytes``.  Prints the inputs tried, the exceptions that escaped (the
goal is 0; ItemsError is the items decoders' answer, not an escape), quarantine rows
whose texts PostgreSQL would refuse, and the throughput.

    .venv/bin/python -m benchmarks.fuzz_decoders [--inputs 1000000] [--seed 1]

Stands alone (it imports nothing from tests/) so that it can run on any checkout.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import time
from typing import Any

from ingest.frames import DEFAULT_LIMITS, decode_readings, pg_storable
from ingest.items import ItemsError, parse_items_file_bytes, parse_items_payload
from ingest.topics import parse_topic

ENTERPRISE = "91350100M000100Y43"
TOPIC = f"nhjc/v1/{ENTERPRISE}/gw-1/readings"
CODES = ["01-00-0000-023300-01", "0100000002330002", "00-00-0000-011500-01"]
KNOWN = frozenset({"01-00-0000-023300-01", "01-00-0000-023300-02"})
NOW_US = 1_764_303_300 * 1_000_000

TEXTS = ["", "a", "\x00", "\ud800", "\udfff", "a\x00\ud800", "电表", "٠١٠٠٠٠٠٠٠٢٣٣٠٠٠١", "０１", CODES[0],
         CODES[0] + "\x00", "2025-11-28T12:15:00+08:00", "2025-11-28T12:15:00+08:00\x00x", "2025-11-28T12:15:00",
         "0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59", "yesterday", "NaN", "1e308", "x" * 300]
NUMBERS: list[Any] = [0, 1, -1, 1.0, 0.5, 2**63, -(2**63) - 1, 2**64, 10**30, 10**400, -(10**400), 1e15,
                      1e15 + 1, 1e308, -1e308, 5e-324, float("nan"), float("inf"), float("-inf"),
                      1764303300, 1764303300.5, 946684799, 10**11 + 1]
SCALARS: list[Any] = [None, True, False, *TEXTS, *NUMBERS]
KEYS = ["v", "seq", "readings", "items", "code", "ts", "value", "name", "energy", "unit", "kind",
        "multiplier", "multipler", "rollover", "min", "max", "scope", "input_type", "coefficient",
        "enterprise", "", "\x00", "\ud800"]
INSERTS = [b"\x00", b"\xff", b"\xfe", b"\xed\xa0\x80", b"\xc0\x80", b"\xe4\xb8", b"[", b"]", b"{", b"}",
           b'"', b",", b":", b"NaN", b"-Infinity", b"1e999", b"9" * 400, b'\\u0000', b'\\ud800', b"[" * 2000,
           b'"v":2,', b'"readings":', b"\xef\xbb\xbf"]


def value(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if depth > 3 or r < 0.6:
        return rng.choice(SCALARS)
    if r < 0.8:
        return [value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(KEYS): value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def reading(rng: random.Random) -> Any:
    r: dict[str, Any] = {"code": rng.choice(CODES), "ts": rng.choice([1764303300 - rng.randint(0, 10**6),
                                                                      "2025-11-28T12:15:00+08:00"]),
                         "value": round(rng.random() * 10**6, 2)}
    if rng.random() < 0.3:
        for key in rng.sample(["code", "ts", "value", "extra"], rng.randint(1, 2)):
            r[key] = value(rng)
    if rng.random() < 0.05:
        r.pop(rng.choice(["code", "ts", "value"]))
    return r if rng.random() < 0.95 else value(rng)


def item(rng: random.Random) -> Any:
    it: dict[str, Any] = {"code": rng.choice(CODES), "name": rng.choice(["", "总进线", "line 1"]),
                          "energy": "3300", "unit": "kWh", "kind": rng.choice(["cumulative", "interval", "instant"]),
                          "multiplier": rng.choice([1, 40, 200.0])}
    if rng.random() < 0.5:
        for key in rng.sample(KEYS[7:], rng.randint(1, 3)):
            it[key] = value(rng)
    return it


def dumps(doc: Any, rng: random.Random) -> bytes:
    """JSON text with NaN literals; lone surrogates as escapes or (invalid UTF-8) raw."""
    try:
        text = json.dumps(doc, ensure_ascii=rng.random() < 0.5)
    except (RecursionError, ValueError):
        text = json.dumps(str(doc)[:200])
    return text.encode("utf-8", "surrogatepass")


def mutate(data: bytes, rng: random.Random, other: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 5)):
        op = rng.random()
        at = rng.randint(0, len(b))
        if op < 0.3 and at < len(b):
            b[at] ^= 1 << rng.randint(0, 7)
        elif op < 0.6:
            b[at:at] = rng.choice(INSERTS)
        elif op < 0.8:
            del b[at:at + rng.randint(1, 16)]
        elif op < 0.9:
            del b[at:]
        else:  # splice in part of another input
            i = rng.randint(0, len(other))
            b[at:at] = other[i:i + rng.randint(1, 64)]
    return bytes(b)


def garbage_frame(rng: random.Random, n: int = 5000) -> bytes:
    readings = []
    for _ in range(n):
        r: dict[str, Any] = {"code": CODES[0], "ts": 1764303300, "value": 1.0}
        for key in rng.sample(["code", "ts", "value"], rng.randint(1, 3)):
            r[key] = rng.choice(SCALARS)
        readings.append(r if rng.random() < 0.9 else rng.choice(SCALARS))
    return dumps({"v": 1, "readings": readings}, rng)


def make_input(rng: random.Random, previous: bytes) -> bytes:
    r = rng.random()
    if r < 0.3:
        data = dumps({"v": 1, "seq": rng.randint(0, 10**6), "readings": [reading(rng) for _ in range(rng.randint(1, 20))]}, rng)
        return mutate(data, rng, previous) if rng.random() < 0.7 else data
    if r < 0.5:
        data = dumps({"v": 1, "items": [item(rng) for _ in range(rng.randint(1, 5))]}, rng)
        return mutate(data, rng, previous) if rng.random() < 0.7 else data
    if r < 0.65:  # a structure with the right keys and anything in them
        doc = {k: value(rng) for k in rng.sample(["v", "seq", "readings", "items", "sent_at"], rng.randint(1, 4))}
        if rng.random() < 0.5:
            doc["readings" if rng.random() < 0.5 else "items"] = [value(rng) for _ in range(rng.randint(1, 6))]
        return dumps(doc, rng)
    if r < 0.75:  # duplicate keys, deep nesting, huge numbers written as text
        depth = rng.choice([10, 500, 1000, 1025, 2000, 50_000])
        parts = [b'{"v": 1, ', b'"readings": ', b"[" * depth + b"]" * depth, b', "readings": [{"code": "',
                 CODES[0].encode(), b'", "ts": ', rng.choice([b"1764303300", b"9" * 400, b"-" + b"9" * 400, b"NaN"]),
                 b', "value": ', rng.choice([b"1", b"9" * 400, b"1e400", b"-Infinity", b"NaN", b"1e308"]), b"}]}"]
        return b"".join(rng.sample(parts, len(parts)) if rng.random() < 0.2 else parts)
    if r < 0.85:
        return dumps(value(rng), rng)
    return rng.randbytes(rng.randint(0, 200))




def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    topic = parse_topic(TOPIC)
    limits = DEFAULT_LIMITS
    escaped: collections.Counter[str] = collections.Counter()
    examples: dict[str, bytes] = {}
    unsafe = rows = quarantined = items_errors = 0
    pool = [make_input(rng, b"{}") for _ in range(1000)]  # recent generated inputs, to mutate
    t0 = time.perf_counter()
    for n in range(args.inputs):
        if n % 20_000 == 19_999:
            data = garbage_frame(rng)
        elif rng.random() < 0.3:
            data = pool[n % 1000] = make_input(rng, rng.choice(pool))
        else:
            data = mutate(rng.choice(pool), rng, rng.choice(pool))
        for which in ("frame", "items", "file"):
            if which == "file" and n % 4:
                continue
            try:
                if which == "frame":
                    b = decode_readings(TOPIC, topic, data, NOW_US, known_codes=KNOWN, limits=limits)
                    rows += len(b.rows)
                    quarantined += len(b.quarantine)
                    unsafe += sum(not all(pg_storable(t) for t in (q.topic, q.enterprise, q.reason, q.detail))
                                  for q in b.quarantine)
                elif which == "items":
                    _good, bad = parse_items_payload(data, ENTERPRISE)
                    unsafe += sum(not pg_storable(why) for _i, why, _raw in bad)
                else:
                    parse_items_file_bytes(data, None if n % 8 else "gb18030")
            except ItemsError as exc:
                items_errors += 1
                unsafe += not pg_storable(str(exc))
            except Exception as exc:
                key = f"{which}: {type(exc).__name__}"
                escaped[key] += 1
                examples.setdefault(key, data[:300])
        if (n + 1) % 100_000 == 0:
            print(f"  {n + 1:>10,} inputs, {sum(escaped.values())} escaped, "
                  f"{(n + 1) / (time.perf_counter() - t0):,.0f} inputs/s", file=sys.stderr)
    secs = time.perf_counter() - t0
    print(f"inputs tried:               {args.inputs:>12,}  (seed {args.seed})")
    print(f"exceptions escaped:         {sum(escaped.values()):>12,}")
    for key, count in escaped.most_common():
        print(f"  {key}: {count:,}  e.g. {examples[key]!r}")
    print(f"unsafe quarantine texts:    {unsafe:>12,}")
    print(f"readings stored / rows quarantined: {rows:,} / {quarantined:,}; ItemsError answers: {items_errors:,}")
    print(f"throughput:                 {args.inputs / secs:>12,.0f} inputs/s  ({secs:.1f} s, each through "
          f"the frame and items decoders, a quarter also as an items file)")
    return 1 if escaped or unsafe else 0


if __name__ == "__main__":
    sys.exit(main())
