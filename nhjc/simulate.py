"""``nhjc simulate``: publish realistic readings of pilot enterprises (docs/simulator.md)."""

from __future__ import annotations

import argparse
import json
import math
import re
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from config.settings import Settings, secret_value
from tools.sim import (
    FAULT_KINDS,
    Counters,
    FaultSpec,
    Limits,
    PublishError,
    Simulator,
    items_json,
    parse_time,
)
from tools.sim.instruments import instruments_json

__all__ = ["configure_simulate", "main_simulate", "parse_duration", "settings_kwargs"]

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``6h``, ``2d`` or ``1h30m``."""
    s = text.strip().lower()
    pos, total = 0, 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 90s, 15m, 6h, 2d)")
    return total


def _speed(text: str) -> float:
    if text.lower() in ("max", "inf"):
        return math.inf
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a speed: {text!r} (a number, or max)") from None
    if not v > 0:
        raise argparse.ArgumentTypeError("speed must be positive")
    return v


def _start(text: str) -> float:
    try:
        return parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None


def _faults(text: str) -> str:
    try:
        FaultSpec.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def settings_kwargs(settings: Settings) -> dict[str, Any]:
    """The Simulator arguments that come from the settings: the broker and its
    credentials, and ingest's frame limits and flag thresholds (the demo uses it too)."""
    mq, ingest = settings.mqtt, settings.ingest
    return dict(
        url=mq.url, username=mq.username, password=secret_value(mq.password), ca_file=mq.ca_file,
        cert_file=mq.cert_file, key_file=mq.key_file,
        limits=Limits(ingest.max_frame_bytes, ingest.max_readings_per_frame),
        early_tolerance_s=ingest.early_tolerance_s, late_horizon_s=ingest.late_horizon_s,
    )


def configure_simulate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--enterprises", type=int, default=30, metavar="N", help="pilot enterprises (default 30)")
    p.add_argument("--items", type=int, default=None, metavar="N",
                   help="items per enterprise (default: tens, by the plant's size)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same enterprises and readings (default 0)")
    p.add_argument("--start", type=_start, default=None, metavar="ISO",
                   help="simulated start, e.g. 2026-11-28T00:00+08:00 (default: now, or now minus "
                        "--duration when --speed > 1)")
    p.add_argument("--duration", type=parse_duration, default=None, metavar="D",
                   help="simulated length: 90s, 15m, 6h, 2d (default: until Ctrl-C)")
    p.add_argument("--interval", type=parse_duration, default=60.0, metavar="D",
                   help="reading interval (default 60s)")
    p.add_argument("--speed", type=_speed, default=1.0, metavar="N",
                   help="simulated seconds per real second, or max (default 1: real time)")
    p.add_argument("--backfill", type=float, default=0.0, metavar="HOURS",
                   help="first publish the HOURS before the start at once, like a gateway back from an outage")
    p.add_argument("--faults", type=_faults, default=None, metavar="KINDS",
                   help=f"comma-separated, each optionally =RATE, or all: {','.join(FAULT_KINDS)}")
    p.add_argument("--fault-rate", type=float, default=None, metavar="P",
                   help="rate for --faults kinds given without =RATE (default: each kind's own)")
    p.add_argument("--rate", type=float, default=None, metavar="R",
                   help="publish at most R readings per second (default: no cap)")
    p.add_argument("--connections", type=int, default=64, metavar="N",
                   help="MQTT connections at most; gateways share them beyond that (default 64)")
    p.add_argument("--write-items", type=Path, default=None, metavar="FILE",
                   help="write the items as a file for 'nhjc items load' and exit")
    p.add_argument("--write-instruments", type=Path, default=None, metavar="FILE",
                   help="write the simulated items' measuring instruments as a file for 'nhjc meters load' "
                        "(verification dates around today) and exit")
    p.add_argument("--dry-run", action="store_true", help="generate everything, publish nothing")
    p.add_argument("--json", action="store_true", help="print the final counters as JSON")


def main_simulate(args: argparse.Namespace, settings: Settings) -> int:
    if args.enterprises < 1 or (args.items is not None and args.items < 8):
        print("nhjc simulate: --enterprises must be at least 1 and --items at least 8", file=sys.stderr)
        return 2
    if args.fault_rate is not None and not 0 <= args.fault_rate <= 1:
        print("nhjc simulate: --fault-rate must be between 0 and 1", file=sys.stderr)
        return 2
    try:
        sim = Simulator(
            enterprises=args.enterprises, items=args.items, seed=args.seed,
            start=args.start, duration=args.duration, interval=max(1, round(args.interval)),
            speed=args.speed, backfill=args.backfill * 3600,
            faults=FaultSpec.parse(args.faults, args.fault_rate), rate=args.rate,
            connections=args.connections, dry_run=args.dry_run, **settings_kwargs(settings),
        )
    except ValueError as exc:
        print(f"nhjc simulate: {exc}", file=sys.stderr)
        return 2
    if args.write_items is not None:
        args.write_items.write_text(items_json(sim.enterprises), encoding="utf-8")
        print(f"wrote {sum(len(e.items) for e in sim.enterprises)} items of "
              f"{len(sim.enterprises)} enterprises to {args.write_items}")
        return 0
    if args.write_instruments is not None:
        text = instruments_json(sim.enterprises, today=datetime.now(settings.processing.zone).date(), seed=args.seed)
        args.write_instruments.write_text(text, encoding="utf-8")
        print(f"wrote {sum(len(e.items) for e in sim.enterprises)} instruments of "
              f"{len(sim.enterprises)} enterprises to {args.write_instruments}")
        return 0
    # Ctrl-C or SIGTERM: stop cleanly (held frames and "offline" still go out).
    previous = {sig: signal.signal(sig, lambda *_: sim.stop()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        counters = sim.run_blocking()
    except PublishError as exc:
        print(f"nhjc simulate: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if args.json:
        print(json.dumps(counters.as_dict(), ensure_ascii=False, indent=2))
    else:
        _summary(counters)
    return 0


def _summary(c: Counters) -> None:
    from rich.console import Console
    from rich.table import Table

    d = c.as_dict()
    t = Table(title="nhjc simulate", show_header=False)
    for key in ("enterprises", "gateways", "items", "frames", "readings", "unique_readings",
                "backfill_readings", "quarantined", "wall_s"):
        v = d[key]
        t.add_row(key.replace("_", " "), f"{v:,.1f}" if isinstance(v, float) else f"{v:,}")
    groups = {"quarantine": c.quarantine, "flags": c.flags, "generated": c.generated,
              "tagged_frames": c.tagged_frames}
    for group, counts in groups.items():
        if counts:
            t.add_row(group.replace("_", " "), ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())))
    Console(stderr=True).print(t)
