"""One run of the throughput workloads against the limits measured in the same run, on a
private Mosquitto and scratch databases of the local PostgreSQL, printed as one table.

* W2, backlog drain: 40,000 frames of 50 readings (2,000,000) queued for nhjc's
  persistent session, drained by ``nhjc run`` (validation and aggregation in the path);
  beside it the limits: a bare paho drain of the same backlog, the same rows written by
  staged binary COPY + upsert into ``readings``, and by plain binary COPY.
* W3, tiny frames: 100,000 frames of 1 reading, against a bare paho drain of them.
* The aggregator's real-time worst case: one new reading per item per run.
* W1, province steady state (``--w1``, ten minutes): see benchmarks/steady.py.

Resident memory and CPU of ``nhjc run`` are sampled from /proc throughout.  ``--scale``
shrinks W2 and W3 for a quick run; ``--before PATH`` also measures the ``nhjc run`` of
another checkout (e.g. an export of main) on the same backlogs, one after the other.

    .venv/bin/python -m benchmarks.run [--scale 0.1] [--before /tmp/main] [--w1] [--only w3] [--profile P]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.backlog import (
    Backlog,
    RssSampler,
    bare_drain,
    copy_limit,
    item_codes,
    make_session,
    publish,
    upsert_limit,
)
from tools.gateway import enterprise_code, item
from tools.guest import PrivateBroker, drop_database, migrated_database
from tools.process import PROJECT_ROOT, ServiceProcess, count

ENTERPRISES, ITEMS = 20, 50
Row = tuple[str, str, str, str]  # workload, what, figure, ratio / note


def load_items(root: Path, dsn: str, enterprises: int, items: int, work: Path) -> None:
    recs = [{"enterprise": enterprise_code(e), **item(code)}
            for e in range(enterprises) for code in item_codes(items)]
    path = work / "items.json"
    path.write_text(json.dumps(recs))
    env = ServiceProcess("mqtt://127.0.0.1:1", dsn).env
    subprocess.run([sys.executable, "-m", "nhjc", "items", "load", str(path)], env=env, cwd=root,
                   check=True, stdout=subprocess.DEVNULL)


def service(root: Path, port: int, dsn: str, client_id: str) -> ServiceProcess:
    return ServiceProcess(f"mqtt://127.0.0.1:{port}", dsn, client_id=client_id, quick=False,
                          log_level="WARNING", root=root)


def drain(root: Path, port: int, dsn: str, client_id: str, n: int, profile: Path | None) -> dict[str, float]:
    """``nhjc run`` draining the backlog queued for ``client_id``: readings/s from its
    readiness to the last reading accepted, peak RSS and CPU, and the seconds after that
    until the aggregator has worked off its pending rows."""
    svc = service(root, port, dsn, client_id)
    t_start = time.perf_counter()
    svc.start(wait_ready=False)
    assert svc.proc is not None
    sampler = RssSampler(svc.proc.pid)
    sampler.start()
    spy = None
    if profile is not None:  # py-spy (the bench extra) samples the service; collapsed stacks
        spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                                str(svc.proc.pid), "--format", "raw", "--rate", "250", "--nonblocking",
                                "--output", str(profile)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        svc.wait_ready(60)
        t0 = time.perf_counter()
        cpu0 = sampler.cpu_s
        while svc.metric("nhjc_readings_accepted_total") < n:
            time.sleep(0.05)
        secs = time.perf_counter() - t0
        cpu = sampler.cpu_s - cpu0
        commits = svc.metric("nhjc_commit_seconds_count")
        commit_s = svc.metric("nhjc_commit_seconds_sum")
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        deadline = time.perf_counter() + 600
        while count(dsn, "SELECT count(*) FROM pending_recompute") and time.perf_counter() < deadline:
            time.sleep(0.2)
        aggregated = time.perf_counter() - t0
        stored = count(dsn, "SELECT count(*) FROM readings")
        if stored != n:
            raise SystemExit(f"{root}: stored {stored:,} readings, expected {n:,}")
    finally:
        sampler.stop()
        svc.stop(timeout=60)
    return {"rate": n / secs, "secs": secs, "startup": t0 - t_start, "rss": sampler.peak_mb,
            "cpu": cpu / secs, "aggregated": aggregated, "commits": commits,
            "commit_ms": commit_s / max(commits, 1) * 1000, "committing": commit_s / secs}


def workload(name: str, backlog: Backlog, roots: dict[str, Path], limits: bool,
             profile: Path | None = None) -> list[Row]:
    rows: list[Row] = []
    n = backlog.readings
    with tempfile.TemporaryDirectory(prefix="nhjc-run-") as tmp:
        work = Path(tmp)
        broker = PrivateBroker(work / "broker").start()
        dsns: dict[str, str] = {}
        try:
            for label, root in roots.items():
                dsns[label] = asyncio.run(migrated_database())
                load_items(root, dsns[label], backlog.enterprises, backlog.items, work)
                svc = service(root, broker.port, dsns[label], f"nhjc-{label}").start(timeout=60)
                svc.stop(timeout=30)  # the session exists: the backlog queues for it
            make_session(broker.port, "bench-bare")
            secs = publish(broker.port, backlog.payloads())
            print(f"{name}: published {backlog.frames:,} frames of {backlog.per_frame} in {secs:.1f} s",
                  flush=True)
            secs = bare_drain(broker.port, "bench-bare", backlog.frames)
            bare = n / secs
            rows.append((name, "bare paho drain", f"{bare:,.0f} readings/s",
                         f"{backlog.frames / secs:,.0f} messages/s"))
            print(f"{name}: bare paho {bare:,.0f} readings/s", flush=True)
            if limits:
                batches = backlog.copy_batches(10_000)
                for what, fn in (("plain binary COPY", copy_limit), ("staged COPY + upsert", upsert_limit)):
                    dsn = asyncio.run(migrated_database())
                    try:
                        secs = fn(dsn, batches, n)
                    finally:
                        asyncio.run(drop_database(dsn))
                    rows.append((name, f"{what} into readings", f"{n / secs:,.0f} rows/s", "10,000-row commits"))
                    print(f"{name}: {what} {n / secs:,.0f} rows/s", flush=True)
            for label, root in roots.items():
                spy = None if profile is None else profile.with_name(f"{profile.name}-{name}-{label}.txt")
                r = drain(root, broker.port, dsns[label], f"nhjc-{label}", n, spy)
                print(f"{name}: nhjc run ({label}) {r['rate']:,.0f} readings/s", flush=True)
                ratios = [f"{r['rate'] / bare:.2f} of bare paho"]
                for _, what, figure, _ in rows:
                    if what.endswith("into readings"):
                        limit = float(figure.split()[0].replace(",", ""))
                        ratios.append(f"{r['rate'] / limit:.2f} of {what.split(' into')[0]}")
                rows.append((name, f"nhjc run ({label})", f"{r['rate']:,.0f} readings/s", "; ".join(ratios)))
                rows.append((name, f"nhjc run ({label}): memory, CPU", f"peak RSS {r['rss']:.0f} MB",
                             f"{r['cpu']:.2f} cores while draining; start-up {r['startup']:.1f} s"))
                rows.append((name, f"nhjc run ({label}): commits", f"{r['commits']:,.0f} commits",
                             f"{n / max(r['commits'], 1):,.0f} readings and {r['commit_ms']:.1f} ms each; "
                             f"committing {r['committing'] * 100:.0f} % of the time"))
                rows.append((name, f"nhjc run ({label}): aggregated", f"{n / r['aggregated']:,.0f} readings/s",
                             f"every pending row done {r['aggregated']:.1f} s after readiness"))
        finally:
            broker.stop()
            for dsn in dsns.values():
                asyncio.run(drop_database(dsn))
    return rows


def aggregator_rows(roots: dict[str, Path]) -> list[Row]:
    """The aggregator worst case, each checkout's in a process of its own."""
    rows: list[Row] = []
    for label, root in roots.items():
        out = subprocess.run([sys.executable, "-m", "benchmarks.aggregate"], cwd=root, check=True,
                             capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        rows.append(("aggregator", f"real time, 1 reading per item per run ({label})",
                     f"{r['realtime']:,.0f} readings/s", f"{r['items']:,} items, {r['run_ms']:.0f} ms a run"))
        rows.append(("aggregator", f"backlog, 30 readings per item ({label})", f"{r['backlog']:,.0f} readings/s",
                     ""))
        print(f"aggregator ({label}): {r['realtime']:,.0f} readings/s real time", flush=True)
        # The same after 30 days of service: as many chunks of readings before the data.
        out = subprocess.run([sys.executable, "-m", "benchmarks.aggregate", "--history-days", "30"],
                             cwd=root, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        rows.append(("aggregator", f"real time, after 30 days of readings ({label})",
                     f"{r['realtime']:,.0f} readings/s", f"{r['run_ms']:.0f} ms a run"))
    return rows


def table(rows: list[Row]) -> str:
    head: Row = ("workload", "what", "figure", "ratio / note")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    line = "| " + " | ".join("-" * w for w in widths) + " |"
    fmt = "| " + " | ".join(f"{{:<{w}}}" for w in widths) + " |"
    return "\n".join([fmt.format(*head), line, *(fmt.format(*r) for r in rows)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="shrink W2 and W3 (0.1: a tenth)")
    ap.add_argument("--before", type=Path, help="another checkout whose nhjc run is measured too")
    ap.add_argument("--w1", action="store_true", help="also the 10-minute province steady state")
    ap.add_argument("--w1-minutes", type=float, default=10, help="how long W1 publishes (a shorter check)")
    ap.add_argument("--profile", type=Path, help="py-spy the drains: collapsed stacks to PROFILE-W2-this.txt...")
    ap.add_argument("--only", choices=["w2", "w3", "aggregator", "none"], action="append",
                    help="run only these parts (repeatable)")
    args = ap.parse_args()
    roots = {"this": PROJECT_ROOT}
    if args.before:
        for name in ("run.py", "backlog.py", "aggregate.py"):  # the same harness for both
            shutil.copy(PROJECT_ROOT / "benchmarks" / name, args.before / "benchmarks" / name)
        roots = {"before": args.before.resolve(), "this": PROJECT_ROOT}
    only = set(args.only or ["w2", "w3", "aggregator"])
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows: list[Row] = []
    if "w2" in only:
        rows += workload("W2", Backlog(round(40_000 * args.scale), 50, ENTERPRISES, ITEMS), roots, limits=True,
                         profile=args.profile)
    if "w3" in only:
        rows += workload("W3", Backlog(round(100_000 * args.scale), 1, ENTERPRISES, ITEMS), roots, limits=False,
                         profile=args.profile)
    if "aggregator" in only:
        rows += aggregator_rows(roots)
    if args.w1:
        from benchmarks.steady import steady_rows
        rows += steady_rows(roots, args.w1_minutes)
    print(f"\n{started}, scale {args.scale}, load average at the end {Path('/proc/loadavg').read_text().split()[:3]}")
    print(table(rows))


if __name__ == "__main__":
    main()
