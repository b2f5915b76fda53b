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
from datetime import datetime
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from prometheus_client import CollectorRegistry

from config.settings import Settings, TargetSettings
from nhjc.demo_meters import Instruments, replacement_time
from nhjc.demo_view import Watcher, live_view, plain_line, render
from nhjc.service import SchemaError, Service
from nhjc.simulate import _faults, _speed, parse_duration, settings_kwargs
from nhjc.startup import DATABASE_ERRORS, database_problem
from runtime.migrate import migrate
from tools.guest import GuestError, PrivateBroker, scratch_database
from tools.platform.mock import DEFAULT_PIN, DEFAULT_SECRET, MockPlatform
from tools.sim import Counters, FaultSpec, PublishError, Simulator, pilot_enterprises
from tools.sim.instruments import instruments_records

__all__ = ["configure_demo", "main_demo"]

log = logging.getLogger("nhjc.demo")

# The demo's mock platforms and targets: one of each uplink flavour.
PLATFORMS = (("anhui", "gbt37947"), ("shandong", "shandong"), ("yunnan", "yunnan"))
PLAIN_EVERY_S = 3.0
# The demo's scorecard is rewritten this often (the service's default is 5 minutes).
SCORECARD_EVERY_S = 15.0



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
        "key_file": None, "shared_group": ""})
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
        "processing": settings.processing.model_copy(update={"scorecard_interval_s": SCORECARD_EVERY_S}),
    })


# ------------------------------------------------------------------------- the summary


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
    # The simulated enterprises' instruments, and the meter the simulator replaces.
    fleet = pilot_enterprises(args.enterprises, seed=args.seed)
    today = datetime.now(settings.processing.zone).date()
    instruments = Instruments(instruments_records(fleet, today=today, seed=args.seed), fleet,
                              replacement_time(since, args.history))
    try:
        sim = Simulator(enterprises=fleet, seed=args.seed, start=since,
                        duration=time.time() - since, speed=args.speed,
                        faults=FaultSpec.parse(args.faults), replacement=instruments.plan,
                        client_id=f"{settings.mqtt.client_id}-sim", **settings_kwargs(settings))
    except ValueError as exc:
        print(f"nhjc demo: {exc}", file=sys.stderr)
        return 2
    try:
        conn = await asyncpg.connect(settings.database.dsn())
        try:
            loaded = await instruments.load(conn)
        finally:
            await conn.close()
    except DATABASE_ERRORS as exc:
        print(f"nhjc demo: {database_problem(exc, settings.database)}", file=sys.stderr)
        return 1
    notes.append(f"{loaded} instruments loaded")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    service_stop, sim_stop = asyncio.Event(), asyncio.Event()
    service_task = asyncio.create_task(service.run(service_stop), name="service")
    watcher = Watcher(service, registry, platforms, sim, since)
    watcher.snap.note = "; ".join(notes)
    sim_task: asyncio.Task[Counters] | None = None
    live = None if args.plain or not sys.stdout.isatty() else live_view()
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
            await instruments.record_replacements(service.pool, sim)
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
