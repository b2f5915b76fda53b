"""``nhjc demo``: the whole pipeline on this machine, in one process, with a live summary
(docs/demo.md).  Migrations, three mock platforms (anhui, shandong, yunnan: one per
uplink flavour), the service
pointed at them, and the simulator replaying the recent past on an accelerated clock."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from prometheus_client import CollectorRegistry

from config.settings import Settings, TargetSettings
from nhjc.service import SchemaError, Service
from nhjc.simulate import _faults, _speed, parse_duration, settings_kwargs
from nhjc.startup import DATABASE_ERRORS, database_problem
from runtime.migrate import migrate
from tools.guest import GuestError, PrivateBroker, scratch_database
from tools.platform.mock import DEFAULT_PIN, DEFAULT_SECRET, MockPlatform
from tools.sim import Counters, FaultSpec, PublishError, Simulator
from tools.sim.frames import CST

__all__ = ["configure_demo", "main_demo"]

log = logging.getLogger("nhjc.demo")

STAT_NAMES = {0: "15 min", 1: "day", 2: "month", 3: "year"}
# The demo's mock platforms and targets: one of each uplink flavour.
PLATFORMS = (("anhui", "gbt37947"), ("shandong", "shandong"), ("yunnan", "yunnan"))
SQL_EVERY_S = 3.0
PLAIN_EVERY_S = 3.0

PERIODS_SQL = "SELECT stat_type, count(*) AS n FROM consumption WHERE enterprise = ANY($1::text[]) GROUP BY 1"
# Per simulated enterprise: 15-minute values received since the replay began, against
# its items x the quarters computed so far (for any enterprise).
COMPLETENESS_SQL = """
WITH q AS (
    SELECT count(DISTINCT period_start) AS n FROM consumption
    WHERE stat_type = 0 AND period_start >= $2 AND enterprise = ANY($1::text[])
), reg AS (
    SELECT enterprise, count(*) AS items FROM items WHERE enterprise = ANY($1::text[]) GROUP BY 1
), got AS (
    SELECT c.enterprise, count(*) AS n
    FROM consumption c JOIN items i ON i.enterprise = c.enterprise AND i.code = c.code
    WHERE c.stat_type = 0 AND c.coverage > 0 AND c.period_start >= $2
      AND c.enterprise = ANY($1::text[])
    GROUP BY 1
)
SELECT r.enterprise, r.items * q.n AS expected, coalesce(g.n, 0) AS received
FROM reg r CROSS JOIN q LEFT JOIN got g ON g.enterprise = r.enterprise
"""


def configure_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--enterprises", type=int, default=30, metavar="N", help="pilot enterprises (default 30)")
    p.add_argument("--speed", type=_speed, default=60.0, metavar="N",
                   help="simulated seconds per real second (default 60: a 15-minute period every 15 s)")
    p.add_argument("--history", type=parse_duration, default=12 * 3600.0, metavar="D",
                   help="replay this much of the recent past, ending now (default 12h)")
    p.add_argument("--faults", type=_faults, default="all", metavar="KINDS",
                   help="simulator faults, as for nhjc simulate (default: all, at their low default "
                        "rates; 'none' for clean data)")
    p.add_argument("--seed", type=int, default=0, help="simulator seed (default 0)")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="stop by itself after this many real seconds (default: until Ctrl-C)")
    for name, flavour in PLATFORMS:
        p.add_argument(f"--{name}-port", type=int, default=0, metavar="PORT",
                       help=f"port of the mock {name} platform ({flavour}; default: a free one)")
    p.add_argument("--use-configured", action="store_true",
                   help="run on the configured broker and database instead of the demo's own "
                        "(the demo's enterprises, items and retained messages then stay there)")
    p.add_argument("--plain", action="store_true",
                   help="print a summary line every few seconds instead of the live view "
                        "(the default when stdout is not a terminal)")


def main_demo(args: argparse.Namespace, settings: Settings) -> int:
    if args.enterprises < 1:
        print("nhjc demo: --enterprises must be at least 1", file=sys.stderr)
        return 2
    if args.faults == "none":
        args.faults = None
    try:
        return asyncio.run(_demo(args, settings))
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C or SIGTERM while starting
        print("nhjc demo: stopped while starting", file=sys.stderr)
        return 130


# ------------------------------------------------------------------------- set-up


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def guest_settings(settings: Settings, broker_url: str, database_url: str) -> Settings:
    """The user's settings pointed at the demo's own broker (anonymous, loopback, one
    instance) and its own database."""
    mqtt = settings.mqtt.model_copy(update={
        "url": broker_url, "username": None, "password": None, "ca_file": None, "cert_file": None,
        "key_file": None, "share_group": ""})
    # The scratch database's URL carries the password for the driver; the settings keep
    # it apart, as they do for the configured database (never shown in a message).
    url = urlunsplit(urlsplit(settings.database.url)._replace(path=urlsplit(database_url).path))
    return settings.model_copy(update={
        "mqtt": mqtt, "database": settings.database.model_copy(update={"url": url})})


def demo_settings(settings: Settings, urls: dict[str, str], metrics_port: int) -> Settings:
    """The user's settings (broker, database, ...) with the mock platforms (``urls`` by
    the names of :data:`PLATFORMS`) as the only uplink targets and the given metrics
    port.  The Yunnan target carries the PIN and secret its mock platform expects of
    every enterprise."""
    flavours = dict(PLATFORMS)
    targets = {name: TargetSettings(url=url, flavour=flavours[name],
                                    **({"pin": DEFAULT_PIN, "secret": DEFAULT_SECRET}
                                       if flavours[name] == "yunnan" else {}))
               for name, url in urls.items()}
    return settings.model_copy(update={
        "uplink": settings.uplink.model_copy(update={"targets": targets}),
        "metrics": settings.metrics.model_copy(update={"port": metrics_port}),
    })


# ------------------------------------------------------------------------- the summary


@dataclass
class Snapshot:
    elapsed_s: float = 0.0
    accepted: float = 0.0
    rate: float = 0.0
    frames: float = 0.0
    quarantine: dict[tuple[str, str], float] = field(default_factory=dict)
    computed: dict[str, float] = field(default_factory=dict)   # nhjc_periods_computed_total
    periods: dict[int, int] = field(default_factory=dict)      # consumption rows by stat_type
    backlog: dict[str, float] = field(default_factory=dict)
    acked: dict[str, float] = field(default_factory=dict)
    platforms: dict[str, dict[str, Any]] = field(default_factory=dict)
    completeness: list[tuple[str, float]] = field(default_factory=list)  # (enterprise, ratio) low first
    sim: Counters | None = None
    sim_state: str = "starting"
    note: str = ""


class Watcher:
    """Reads the figures: the service's registry each refresh, the database every few s."""

    def __init__(self, service: Service, registry: CollectorRegistry, platforms: list[MockPlatform],
                 sim: Simulator, since: float) -> None:
        self.service, self.registry, self.platforms, self.sim = service, registry, platforms, sim
        self.codes = [e.code for e in sim.enterprises]
        self.since = since
        self.began = time.monotonic()
        self._last = (self.began, 0.0)
        self._next_sql = 0.0
        self.snap = Snapshot()

    async def refresh(self) -> Snapshot:
        s = self.snap
        now = time.monotonic()
        s.elapsed_s = now - self.began
        s.quarantine, s.computed, s.backlog, s.acked = {}, {}, {}, {}
        for metric in self.registry.collect():
            for sample in metric.samples:
                n, lab, v = sample.name, sample.labels, sample.value
                if n == "nhjc_readings_accepted_total":
                    s.accepted = v
                elif n == "nhjc_frames_received_total":
                    s.frames = v
                elif n == "nhjc_quarantined_total":
                    s.quarantine[(lab["reason"], lab["level"])] = v
                elif n == "nhjc_periods_computed_total":
                    s.computed[STAT_NAMES.get(int(lab["stat_type"]), lab["stat_type"])] = v
                elif n == "nhjc_uplink_backlog":
                    s.backlog[lab["target"]] = v
                elif n == "nhjc_uplink_acked_total":
                    s.acked[lab["target"]] = v
        t0, a0 = self._last
        if now - t0 >= 1.0:
            s.rate = (s.accepted - a0) / (now - t0)
            self._last = (now, s.accepted)
        s.platforms = {p.name: p.stats() for p in self.platforms}
        s.sim = self.sim.counters
        pool = self.service.pool
        if pool is not None and now >= self._next_sql:
            self._next_sql = now + SQL_EVERY_S
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                rows = await pool.fetch(PERIODS_SQL, self.codes, timeout=5)
                s.periods = {int(r["stat_type"]): int(r["n"]) for r in rows}
                rows = await pool.fetch(COMPLETENESS_SQL, self.codes,
                                        datetime.fromtimestamp(self.since, UTC), timeout=5)
                s.completeness = sorted(
                    ((r["enterprise"], r["received"] / r["expected"]) for r in rows if r["expected"]),
                    key=lambda x: x[1])
        return s


def _n(v: float) -> str:
    return f"{v:,.0f}"


def _sim_time(c: Counters | None) -> str:
    if c is None or c.sim_time is None:
        return "-"
    return datetime.fromtimestamp(c.sim_time, CST).strftime("%m-%d %H:%M")


def plain_line(s: Snapshot) -> str:
    q = sum(s.quarantine.values())
    qs = ", ".join(f"{r}/{lv} {_n(v)}" for (r, lv), v in sorted(s.quarantine.items()) if v) or "none"
    per = ", ".join(f"{STAT_NAMES[k]} {_n(v)}" for k, v in sorted(s.periods.items())) or "none yet"
    up = "; ".join(
        f"{name} backlog {_n(s.backlog.get(name, 0))} acked {_n(s.acked.get(name, 0))} "
        f"platform received {_n(st['received'])} records {_n(st['records'])}"
        for name, st in s.platforms.items())
    if s.completeness:
        lo, hi = s.completeness[0], s.completeness[-1]
        comp = f"lowest {lo[0]} {lo[1]:.0%}, highest {hi[0]} {hi[1]:.0%}"
    else:
        comp = "none yet"
    c = s.sim
    sim = (f"{s.sim_state}, sim time {_sim_time(c)}, frames {_n(c.frames)}, readings {_n(c.readings)}"
           if c else s.sim_state)
    return (f"[demo {s.elapsed_s:.0f}s] readings accepted {_n(s.accepted)} ({s.rate:,.0f}/s), "
            f"frames {_n(s.frames)} | quarantine {_n(q)}: {qs} | periods {per} | uplink {up} | "
            f"completeness {comp} | simulator {sim}")


def render(s: Snapshot) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head = Text.assemble(("nhjc demo", "bold"), f"  {s.elapsed_s:.0f} s   Ctrl-C to stop")
    if s.note:
        head.append(f"\n{s.note}", style="yellow")

    ingest = Table(title="ingest", show_header=False, title_justify="left")
    ingest.add_row("readings accepted", _n(s.accepted))
    ingest.add_row("readings/s", f"{s.rate:,.0f}")
    ingest.add_row("frames", _n(s.frames))
    c = s.sim
    ingest.add_row("[dim]simulator[/]", s.sim_state)
    if c is not None:
        ingest.add_row("[dim]sim time[/]", _sim_time(c))
        ingest.add_row("[dim]frames published[/]", _n(c.frames))
        ingest.add_row("[dim]readings published[/]", _n(c.readings))
        ingest.add_row("[dim]quarantine expected[/]", _n(c.quarantined))

    quar = Table("reason", "level", "count", title="quarantine", title_justify="left")
    for (reason, level), v in sorted(s.quarantine.items(), key=lambda kv: -kv[1]):
        if v:
            quar.add_row(reason, level, _n(v))
    if not quar.rows:
        quar.add_row("none yet", "", "")

    per = Table("period", "rows", "computed", title="periods", title_justify="left")
    for k, name in STAT_NAMES.items():
        per.add_row(name, _n(s.periods.get(k, 0)), _n(s.computed.get(name, 0)))

    up = Table("target", "backlog", "acked", "received", "records", "rejected",
               title="uplink → mock platforms", title_justify="left")
    for name, st in s.platforms.items():
        up.add_row(name, _n(s.backlog.get(name, 0)), _n(s.acked.get(name, 0)), _n(st["received"]),
                   _n(st["records"]), _n(st["rejected_records"]))

    comp = Table("enterprise", "15-min values", title="completeness (lowest, highest)", title_justify="left")
    few = s.completeness
    shown = few if len(few) <= 6 else few[:3] + few[-3:]
    for i, (ent, ratio) in enumerate(shown):
        if len(few) > 6 and i == 3:
            comp.add_row("…", "")
        style = "red" if ratio < 0.5 else "yellow" if ratio < 0.9 else "green"
        comp.add_row(ent, f"[{style}]{ratio:.1%}[/]")
    if not shown:
        comp.add_row("none yet", "")

    top = Table.grid(padding=(0, 3))
    top.add_row(ingest, quar, per)
    bottom = Table.grid(padding=(0, 3))
    bottom.add_row(up, comp)
    return Group(head, top, bottom)


# ------------------------------------------------------------------------- running


async def _demo(args: argparse.Namespace, settings: Settings) -> int:
    # SIGTERM while starting cancels like Ctrl-C does (the run below handles both itself).
    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    if args.use_configured:
        return await _demo_on(args, settings, ["on the configured broker and database"])
    # A guest: its own broker and database, removed at exit (errors and Ctrl-C too).
    async with contextlib.AsyncExitStack() as guest:
        try:
            broker = guest.enter_context(PrivateBroker())
            database = await guest.enter_async_context(scratch_database(settings.database.dsn()))
        except GuestError as exc:
            print(f"nhjc demo: {exc}", file=sys.stderr)
            return 1
        note = (f"own broker 127.0.0.1:{broker.port}, own database {urlsplit(database).path[1:]} "
                "(both removed at exit; --use-configured for the configured ones)")
        return await _demo_on(args, guest_settings(settings, broker.url, database), [note])


async def _demo_on(args: argparse.Namespace, settings: Settings, notes: list[str]) -> int:
    try:
        applied = await migrate(settings.database.dsn())
    except DATABASE_ERRORS as exc:
        print(f"nhjc demo: {database_problem(exc, settings.database)}", file=sys.stderr)
        return 1
    if applied:
        log.info("migrations applied: %s", ", ".join(applied))

    host, port = settings.metrics.host, settings.metrics.port
    if port and not _port_free(host, port):
        new = _free_port(host)
        notes.append(f"metrics port {port} is taken; /metrics is on {host}:{new}")
        port = new
    else:
        notes.append(f"/metrics on {host}:{port}")

    platforms: list[MockPlatform] = []
    try:
        for name, flavour in PLATFORMS:
            port_arg = getattr(args, f"{name}_port")
            platforms.append(await MockPlatform(name=name, flavour=flavour, port=port_arg).start())
    except OSError as exc:
        print(f"nhjc demo: mock platform: {exc}", file=sys.stderr)
        for p in platforms:
            await p.stop()
        return 1
    notes.append("platforms: " + ", ".join(f"{p.name} {p.url}" for p in platforms))
    try:
        return await _run(args, settings, platforms, port, notes)
    finally:
        for p in platforms:
            await p.stop()


def simulator_state(task: asyncio.Task[Counters]) -> str:
    """What the view says of a simulator task that has ended."""
    if task.cancelled():
        return "stopped"
    failure = task.exception()
    return f"failed: {failure}" if failure else "caught up with now (finished)"


async def finish_simulator(task: asyncio.Task[Counters]) -> None:
    """Waits until the simulator has sent what it holds.  Its failure is logged, never
    raised: the service is stopped after it whatever happened, so that it commits what
    it has in hand and the demo ends with its summary."""
    try:
        await task
    except PublishError as exc:
        log.warning("simulator: %s", exc)
    except Exception:
        log.exception("simulator failed")


async def _run(args: argparse.Namespace, settings: Settings, platforms: list[MockPlatform],
               metrics_port: int, notes: list[str]) -> int:
    registry = CollectorRegistry()
    service = Service(demo_settings(settings, {p.name: p.url for p in platforms}, metrics_port),
                      registry=registry)
    since = math.floor((time.time() - args.history) / 900) * 900.0  # a whole quarter
    try:
        sim = Simulator(enterprises=args.enterprises, seed=args.seed, start=since,
                        duration=time.time() - since, speed=args.speed,
                        faults=FaultSpec.parse(args.faults),
                        client_id=f"{settings.mqtt.client_id}-sim", **settings_kwargs(settings))
    except ValueError as exc:
        print(f"nhjc demo: {exc}", file=sys.stderr)
        return 2

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    service_stop, sim_stop = asyncio.Event(), asyncio.Event()
    service_task = asyncio.create_task(service.run(service_stop), name="service")
    watcher = Watcher(service, registry, platforms, sim, since)
    watcher.snap.note = "; ".join(notes)
    sim_task: asyncio.Task[Counters] | None = None
    live = None if args.plain or not sys.stdout.isatty() else _live()
    rc = 0
    try:
        if live is None:
            print("nhjc demo: " + watcher.snap.note, flush=True)
        else:
            live.start()
        next_plain = 0.0
        deadline = None if args.duration is None else time.monotonic() + args.duration
        while not stop.is_set():
            if service_task.done():
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            if sim_task is None and service.ready()["broker"]:
                # Subscribed first, so nothing the simulator sends is missed.
                sim_task = asyncio.create_task(sim.run(sim_stop), name="simulator")
                watcher.snap.sim_state = "replaying"
            if sim_task is not None and sim_task.done() and watcher.snap.sim_state == "replaying":
                watcher.snap.sim_state = simulator_state(sim_task)
            snap = await watcher.refresh()
            if live is not None:
                live.update(render(snap))
            elif time.monotonic() >= next_plain:
                next_plain = time.monotonic() + PLAIN_EVERY_S
                print(plain_line(snap), flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
    finally:
        # From the source: the simulator (it sends what it holds), then the service
        # (it commits what is in hand), then the platforms (by the caller).
        sim_stop.set()
        if sim_task is not None:
            await finish_simulator(sim_task)
        service_stop.set()
        try:
            await service_task
        except (SchemaError, ValueError) as exc:
            print(f"nhjc demo: {exc}", file=sys.stderr)
            rc = 1
        except DATABASE_ERRORS as exc:
            print(f"nhjc demo: {database_problem(exc, settings.database)}", file=sys.stderr)
            rc = 1
        watcher._next_sql = 0.0
        snap = await watcher.refresh()
        watcher.snap.sim_state = "stopped"
        if live is not None:
            live.update(render(snap))
            live.stop()
        else:
            print(plain_line(snap), flush=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    print("nhjc demo: stopped", flush=True)
    return rc


def _live() -> Any:
    """A rich Live view; log records are printed above it (warnings and worse)."""
    from rich.console import Console
    from rich.live import Live
    from rich.logging import RichHandler

    console = Console()
    root = logging.getLogger()
    handler = RichHandler(console=console, show_path=False)
    handler.setLevel(max(logging.WARNING, root.level))
    root.handlers = [handler]
    return Live(console=console, refresh_per_second=2, transient=False)
