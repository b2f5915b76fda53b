"""The soak: fault rounds one after another on one chain for N minutes, with the figures.

    /work/main/.venv/bin/python -m tests.soak --minutes 10

Everything runs on loopback and is private to the run: a PrivateBroker, a PostgreSQL
cluster with TimescaleDB (tests/adversity.py) behind a TCP proxy the service connects
through, `nhjc run` and two mock platforms.  Each round (tests/fault_scenarios.py) has
new enterprises, an hour of simulated readings with known-bad inputs mixed in, and one
fault; the faults come in shuffled cycles so each is met about equally often.  Each
round's row: readings published and stored, duplicates, missing, quarantine rows
(expected/actual), 15-minute records at each platform (expected/actual) and the seconds
from the end of the fault (or of the publishing, if later) until all was caught up.
Exit status 1 when any round's accounting did not come out exact.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.adversity import PrivatePostgres, TcpProxy
from tests.fault_scenarios import FAULTS, PLATFORMS, Chain, RoundResult, run_round
from tools.guest import PrivateBroker

COLUMNS = ("round", "fault", "detail", "published", "stored", "duplicates", "missing", "quarantine e/a",
           *(f"{p} e/a" for p in PLATFORMS), "recovery s", "ok")


def row(n: int, r: RoundResult) -> tuple[str, ...]:
    a = r.account
    return (str(n), r.fault, r.detail, str(a.published), str(a.stored), str(a.duplicates), str(a.missing),
            f"{a.quarantine_expected}/{a.quarantine_actual}",
            *(f"{a.targets[p].expected}/{a.targets[p].received}" for p in PLATFORMS),
            "-" if r.recovery_s is None else f"{r.recovery_s:.1f}",
            "yes" if a.ok else "NO" + (" (service exited)" if r.service_exited else ""))


WIDTHS = [max(len(c), {"fault": 18, "detail": 22}.get(c, 6)) for c in COLUMNS]


def line(cells: tuple[str, ...]) -> str:
    return "  ".join(c.ljust(w) if n in (1, 2) else c.rjust(w)
                     for n, (c, w) in enumerate(zip(cells, WIDTHS, strict=True)))


def header() -> str:
    return line(COLUMNS) + "\n" + line(tuple("-" * w for w in WIDTHS))


def summary(results: list[RoundResult]) -> str:
    out = ["", "fault               rounds  exact  recovery s (min / median / max)"]
    for fault in sorted({r.fault for r in results}):
        rs = [r for r in results if r.fault == fault]
        rec = [r.recovery_s for r in rs if r.recovery_s is not None]
        figures = f"{min(rec):.1f} / {statistics.median(rec):.1f} / {max(rec):.1f}" if rec else "-"
        out.append(f"{fault:<20}{len(rs):>6}{sum(r.account.ok for r in rs):>7}  {figures}")
    total = sum(r.account.published for r in results)
    out.append(f"\n{len(results)} rounds, {total} valid readings published, "
               f"{sum(r.account.stored for r in results)} stored, "
               f"{sum(r.account.missing for r in results)} missing, "
               f"{sum(r.account.duplicates for r in results)} duplicated")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to keep starting rounds")
    parser.add_argument("--faults", default=",".join(f for f in FAULTS if f != "none"),
                        help="comma-separated faults to draw from (default: all but none)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock)")
    parser.add_argument("--enterprises", type=int, default=4, help="enterprises per round")
    parser.add_argument("--rate", type=float, default=150.0, help="messages published per second")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a round may take to catch up")
    args = parser.parse_args(argv)
    faults = args.faults.split(",")
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        parser.error(f"unknown faults: {', '.join(unknown)} (known: {', '.join(FAULTS)})")
    seed = args.seed if args.seed is not None else int(time.time())
    rng = random.Random(seed)
    print(f"soak: {args.minutes:g} minutes, faults {', '.join(faults)}, seed {seed}", flush=True)
    print(header(), flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="nhjc-soak-"))
    broker = PrivateBroker(workdir / "mosquitto").start()
    pg = PrivatePostgres().start()
    proxy = TcpProxy(pg.port).start()
    results: list[RoundResult] = []
    errors: list[str] = []
    rows: list[tuple[str, ...]] = []
    try:
        dsn = pg.create_database()
        service_dsn = dsn.replace(f":{pg.port}/", f":{proxy.port}/")
        chain = Chain(broker, dsn, workdir / "chain", service_dsn=service_dsn, admin_dsn=pg.admin_dsn,
                      database=pg, proxy=proxy).start()
        try:
            deadline = time.monotonic() + args.minutes * 60
            cycle: list[str] = []
            while time.monotonic() < deadline:
                if not cycle:
                    cycle = rng.sample(faults, len(faults))
                fault = cycle.pop()
                try:
                    result = run_round(chain, fault, len(results) + len(errors) + 1, rng=random.Random(rng.random()),
                                       enterprises=args.enterprises, rate=args.rate, timeout=args.timeout)
                except Exception as exc:  # the harness, not nhjc: say so and go on
                    errors.append(f"{fault}: {type(exc).__name__}: {exc}")
                    print(f"  round {len(results) + len(errors)} ({fault}) could not be run: {errors[-1]}", flush=True)
                    if not pg.running:
                        pg.start()
                    if not chain.service_alive():
                        chain.start_service(wait_ready=False)
                    continue
                results.append(result)
                rows.append(row(len(results), result))
                print(line(rows[-1]), flush=True)
                if not result.account.ok:
                    print(f"  round {len(results)}: {'; '.join(result.account.problems())[:2000]}", flush=True)
                if not chain.service_alive():
                    print(f"  round {len(results)}: nhjc run exited; started again (log: {workdir}/chain)")
                    chain.start_service(wait_ready=False)
                elif result.recovery_s is None:
                    # Alive but not catching up: stuck.  Kill it so later rounds measure
                    # their own faults rather than this one.
                    print(f"  round {len(results)}: nhjc run stuck; killed and started again (log: {workdir}/chain)")
                    chain.kill_service()
                    chain.start_service(wait_ready=False)
            # A round that did not catch up in time (a stuck service, killed and started
            # again) is looked at once more: were its readings late, or lost?
            for n, r in enumerate(results, 1):
                if r.recovery_s is None:
                    until = time.monotonic() + max(args.timeout, 60)
                    a = chain.account_when_reachable(r.ledger, until)
                    while not a.caught_up and time.monotonic() < until:
                        time.sleep(0.5)
                        a = chain.account_when_reachable(r.ledger, until)
                    print(f"  round {n} at the end: stored {a.stored} of {a.published}, missing {a.missing}, "
                          f"quarantine {a.quarantine_expected}/{a.quarantine_actual}, "
                          + ", ".join(f"{p} {a.targets[p].expected}/{a.targets[p].received}" for p in PLATFORMS),
                          flush=True)
        finally:
            chain.stop()
    finally:
        proxy.stop()
        if pg.workdir is not None and (pg.workdir / "postgres.log").exists():
            shutil.copy(pg.workdir / "postgres.log", workdir / "postgres.log")
        pg.close()
        broker.stop()
    print(summary(results))
    if errors:
        print(f"{len(errors)} round(s) could not be run: " + "; ".join(errors))
    print(f"\nlogs: {workdir}")
    return 0 if results and not errors and all(r.account.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
