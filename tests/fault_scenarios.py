"""Fault scenarios with exact accounting, shared by the suite
(tests/test_fault_accounting.py, short) and the soak script (tests/soak.py, long).

One *round* is: a fresh set of enterprises with their items, an hour of simulated
readings (one frame per enterprise and time step, all items in it) published fast with a
few known-bad inputs mixed in, one fault applied while that load runs, and then the
accounting: every valid reading stored once with its value, every 15-minute period at
every platform with its value, quarantine holding exactly the bad inputs.  The time from
the end of the fault (or of the publishing, whichever is later) until the accounting
comes out right is the round's recovery time.

The chain is real: a PrivateBroker, TimescaleDB, `nhjc run` as a process and two
`nhjc mock-platform` processes as uplink targets.  Rounds use new enterprises, so
they can follow each other on one chain and each is accounted on its own.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import psycopg

from processing.coefficients import DEFAULT_COEFFICIENTS
from tests.harness import Account, Ledger, account, platform_control
from tests.services import ROOT, run, terminate_backends
from tools.gateway import Gateway, enterprise_code, item
from tools.guest import ADMIN_DSN, PrivateBroker, free_port, wait_port
from tools.process import ServiceProcess, count, wait_for

__all__ = ["FAULTS", "Chain", "Load", "Publisher", "RoundResult", "run_round"]

TZ = ZoneInfo("Asia/Shanghai")
PLATFORMS = ("provincial", "national")
TOTAL_CODE = "00-00-0000-000000-00"  # the targets' default total_code

# code, energy, unit, multiplier, scope: three whole-plant meters and one sub-meter
# (which the enterprise total leaves out).
ITEMS = (
    ("00-00-0000-023300-01", "3300", "kWh", 10.0, 1),
    ("00-00-0000-021500-01", "1500", "m3", 1.0, 1),
    ("00-00-0000-023200-01", "3200", "MJ", 1.0, 1),
    ("01-01-0001-023300-01", "3300", "kWh", 5.0, 2),
)
UNKNOWN_CODE = "00-00-0000-020100-09"  # never registered: readings of it are unknown_item


def _platform_time(t: datetime) -> str:
    return t.astimezone(TZ).strftime("%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True)
class Load:
    """One round's input: ``enterprises`` new enterprises, each with the four ITEMS,
    a cumulative register per item read every ``step_s`` for ``minutes`` simulated
    minutes (both ends included, so every 15-minute period is fully covered), five bad
    inputs per enterprise and a frame under an invalid enterprise code."""

    round_no: int
    enterprises: int = 4
    minutes: int = 60
    step_s: int = 30
    start: datetime = field(default_factory=lambda: _quarter_floor(datetime.now(TZ)) - timedelta(hours=2))

    @property
    def gateway(self) -> str:
        return f"gw-r{self.round_no}"

    @property
    def codes(self) -> list[str]:
        return [enterprise_code(100_000 + self.round_no * 100 + k) for k in range(self.enterprises)]

    def topic(self, enterprise: str, kind: str = "readings") -> str:
        return f"nhjc/v1/{enterprise}/{self.gateway}/{kind}"

    def items(self) -> list[dict[str, Any]]:
        return [item(code, unit=unit, energy=energy, multiplier=mult, scope=scope, name=f"meter {code}")
                for code, energy, unit, mult, scope in ITEMS]

    def register(self, e: int, k: int, i: int) -> float:
        """Item k's register at step i: a different, exactly representable pace each."""
        return 1000.0 * (k + 1) + e * 10.0 + sum(1.0 + ((j * 7 + k * 3 + e) % 5) * 0.25 for j in range(i))

    def steps(self) -> int:
        return self.minutes * 60 // self.step_s + 1

    def frames(self) -> list[tuple[str, list[dict[str, Any]]]]:
        """(topic, readings) of every good frame, interleaved across enterprises as
        gateways publishing side by side would."""
        t0 = int(self.start.timestamp())
        out = []
        for i in range(self.steps()):
            for e, ent in enumerate(self.codes):
                out.append((self.topic(ent), [{"code": code, "ts": t0 + i * self.step_s,
                                               "value": self.register(e, k, i)}
                                              for k, (code, *_) in enumerate(ITEMS)]))
        return out

    def bad(self) -> list[tuple[str, bytes, str | None]]:
        """(topic, payload, reason) of the bad inputs; reason None: a frame whose good
        readings count (they are in :meth:`ledger`) and whose bad ones are listed next."""
        t0 = int(self.start.timestamp())
        out: list[tuple[str, bytes, str | None]] = []
        for e, ent in enumerate(self.codes):
            topic = self.topic(ent)
            out.append((topic, b'{"v": 1, "readings": [', "bad_json"))
            out.append((topic, json.dumps({"v": 2, "readings": [
                {"code": ITEMS[0][0], "ts": t0, "value": 1.0}]}).encode(), "bad_version"))
            # A frame with a good reading and three bad ones: the good one is stored
            # (it repeats a published reading, so it changes nothing).
            out.append((topic, json.dumps({"v": 1, "readings": [
                {"code": ITEMS[0][0], "ts": t0, "value": self.register(e, 0, 0)},
                {"code": UNKNOWN_CODE, "ts": t0, "value": 5.0},
                {"code": ITEMS[1][0], "ts": t0 + 1, "value": math.nan},
                {"code": ITEMS[2][0], "ts": "2026-01-01T00:00:00", "value": 1.0},
            ]}).encode(), None))
        bogus = f"nhjc/v1/BAD{self.round_no:06d}ENTERPRISE/{self.gateway}/readings"
        out.append((bogus, json.dumps({"v": 1, "readings": [
            {"code": ITEMS[0][0], "ts": t0, "value": 1.0}]}).encode(), "bad_enterprise"))
        return out

    def ledger(self) -> Ledger:
        t0 = int(self.start.timestamp())
        readings: dict[tuple[str, str, int], float] = {}
        for topic, frame in self.frames():
            ent = topic.split("/")[2]
            for r in frame:
                readings[(ent, r["code"], r["ts"] * 1_000_000)] = r["value"]
        bad: list[tuple[str, str]] = []
        for topic, _, reason in self.bad():
            if reason is not None:
                bad.append((topic, reason))
            else:
                bad += [(topic, "unknown_item"), (topic, "not_finite"), (topic, "bad_timestamp")]
        periods: dict[tuple[str, str, str], float] = {}
        per_quarter = 900 // self.step_s
        for e, ent in enumerate(self.codes):
            for q in range(self.minutes // 15):
                start = _platform_time(datetime.fromtimestamp(t0 + q * 900, TZ))
                total = 0.0
                for k, (code, energy, _, mult, scope) in enumerate(ITEMS):
                    value = (self.register(e, k, (q + 1) * per_quarter) - self.register(e, k, q * per_quarter)) * mult
                    periods[(ent, code, start)] = value
                    if scope == 1:
                        total += value * DEFAULT_COEFFICIENTS[energy]
                periods[(ent, TOTAL_CODE, start)] = total
        return Ledger(enterprises=tuple(self.codes), gateway=self.gateway, readings=readings, bad=tuple(bad),
                      periods=periods)

    def messages(self) -> list[tuple[str, bytes]]:
        """Everything to publish in order: the good frames with the bad inputs spread
        evenly among them."""
        good = [(t, json.dumps({"v": 1, "readings": f}).encode()) for t, f in self.frames()]
        bad = [(t, p) for t, p, _ in self.bad()]
        every = max(1, len(good) // (len(bad) + 1))
        out: list[tuple[str, bytes]] = []
        for n, msg in enumerate(good):
            out.append(msg)
            if bad and (n + 1) % every == 0:
                out.append(bad.pop(0))
        return out + bad


def _quarter_floor(t: datetime) -> datetime:
    return t.replace(minute=t.minute - t.minute % 15, second=0, microsecond=0)


class Publisher:
    """Publishes a round's messages at QoS 1 from a thread, each confirmed by the broker
    (PUBACK) before the next, at about ``rate`` messages a second.  It can be paused
    between messages (to stop the broker under it) and reconnects when resumed."""

    def __init__(self, broker_url: str, messages: list[tuple[str, bytes]], rate: float) -> None:
        self.url, self.messages, self.rate = broker_url, messages, rate
        self.sent = 0
        self.finished_at: float | None = None
        self.error: BaseException | None = None
        self._run = threading.Event()
        self._run.set()
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="publisher", daemon=True)

    def start(self) -> Publisher:
        self._thread.start()
        return self

    def _loop(self) -> None:
        gw = Gateway(self.url, "-")
        try:
            started = time.monotonic()
            for topic, payload in self.messages:
                if not self._run.is_set():
                    gw.close()
                    self._idle.set()
                    self._run.wait()
                    self._idle.clear()
                    gw = Gateway(self.url, "-")
                gw.publish_raw(topic, payload)
                self.sent += 1
                delay = started + self.sent / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            self.finished_at = time.monotonic()
        except BaseException as exc:  # reported by wait()
            self.error = exc
        finally:
            gw.close()

    def pause(self) -> None:
        """Stop between two messages and disconnect; returns once idle."""
        self._run.clear()
        while not self._idle.wait(0.05):
            if not self._thread.is_alive():
                return

    def resume(self) -> None:
        self._run.set()

    def wait_progress(self, fraction: float, timeout: float = 60) -> None:
        wait_for(lambda: self.sent >= fraction * len(self.messages) or not self._thread.is_alive(), timeout,
                 f"{fraction:.0%} of the messages published")

    def wait(self, timeout: float = 120) -> float:
        self._thread.join(timeout)
        if self.error is not None:
            raise RuntimeError(f"publishing failed after {self.sent} messages") from self.error
        if self._thread.is_alive() or self.finished_at is None:
            raise AssertionError(f"publishing did not finish in {timeout}s ({self.sent} sent)")
        return self.finished_at


class Database(Protocol):
    """What a PostgreSQL restart needs (tests/adversity.py's PrivatePostgres)."""

    def restart(self, mode: str = "fast") -> None: ...


class Proxy(Protocol):
    def stall(self) -> None: ...
    def resume(self) -> None: ...
    def drop(self) -> None: ...


class Chain:
    """Broker, database, `nhjc run` and two mock platforms, started together.

    ``dsn`` is what the accounting reads (direct); ``service_dsn`` what the service
    uses (through a proxy, if one is given); ``admin_dsn`` the server's superuser, to
    terminate the service's connections.  ``database`` and ``proxy`` are needed only by
    the faults that act on them."""

    def __init__(self, broker: PrivateBroker, dsn: str, workdir: Path, *, service_dsn: str | None = None,
                 admin_dsn: str = ADMIN_DSN, database: Database | None = None, proxy: Proxy | None = None) -> None:
        self.broker, self.dsn, self.workdir = broker, dsn, workdir
        self.service_dsn = service_dsn or dsn
        self.admin_dsn = admin_dsn
        self.database, self.proxy = database, proxy
        self.platforms: dict[str, str] = {}
        self._platform_procs: list[subprocess.Popen[bytes]] = []
        self.client_id = f"nhjc-faults-{free_port()}"
        self.service: ServiceProcess | None = None
        self.restarts = 0

    def start(self) -> Chain:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name in PLATFORMS:
            port = free_port()
            with open(self.workdir / f"{name}.log", "ab") as log:  # the child has its own copy
                self._platform_procs.append(subprocess.Popen(
                    [sys.executable, "-m", "nhjc", "mock-platform", "--port", str(port), "--name", name],
                    cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
            wait_port(port)
            self.platforms[name] = f"http://127.0.0.1:{port}"
        self.start_service()
        return self

    def _new_service(self) -> ServiceProcess:
        env = {"NHJC_UPLINK__SETTLE_S": "1", "NHJC_UPLINK__INTERVAL_MS": "200",
               "NHJC_PROCESSING__INTERVAL_MS": "200", "NHJC_TEST_LOG_LEVEL": "WARNING"}
        for name, url in self.platforms.items():
            prefix = f"NHJC_UPLINK__TARGETS__{name.upper()}__"
            # Sent as soon as a period closes; retries at most 5 s apart, so the time to
            # recover measures nhjc and not a long backoff (the default maximum is 300 s).
            # A period sent and then revised goes again after 1 s of quiet (default 120 s).
            env |= {prefix + "URL": url, prefix + "REALTIME_DELAY_S": "0", prefix + "BACKOFF_MAX_S": "5",
                    prefix + "RESEND_QUIET_S": "1"}
        return ServiceProcess(self.broker.url, self.service_dsn, client_id=self.client_id, env=env,
                              log=self.workdir / "service.log")

    def start_service(self, wait_ready: bool = True) -> None:
        self.service = self._new_service().start(wait_ready=wait_ready)

    def kill_service(self) -> None:
        assert self.service is not None
        self.service.kill()
        self.restarts += 1

    def stop(self) -> None:
        if self.service is not None and self.service.proc is not None and self.service.proc.poll() is None:
            self.service.stop()
        for p in self._platform_procs:
            p.terminate()
            p.wait(10)

    def service_alive(self) -> bool:
        return self.service is not None and self.service.proc is not None and self.service.proc.poll() is None

    def account(self, ledger: Ledger) -> Account:
        return account(self.dsn, ledger, self.platforms)

    def account_when_reachable(self, ledger: Ledger, deadline: float) -> Account:
        """The account, waiting (until deadline) for a database that is coming back."""
        while True:
            try:
                return self.account(ledger)
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


# --- the faults ---------------------------------------------------------------------------
# Each runs while the publisher is going and returns when the fault is over: the
# monotonic time of its end and a few words on what it did.  ``rng`` varies the timing
# and the kind in the soak; the suite passes a fixed seed.

Done = tuple[float, str]


def fault_none(chain: Chain, pub: Publisher, ledger: Ledger, rng: random.Random) -> Done:
    """No fault: the baseline the others are compared with."""
    pub.wait_progress(0.5)
    return time.monotonic(), ""


def fault_sigkill(chain: Chain, pub: Publisher, ledger: Ledger, rng: random.Random, kills: int = 3) -> Done:
    """SIGKILL `nhjc run` several times while the load runs, restarting it each time."""
    for n in range(kills):
        pub.wait_progress((n + 1) / (kills + 1))
        time.sleep(rng.uniform(0, 0.3))
        chain.kill_service()
        chain.start_service()
    return time.monotonic(), f"{kills} kills"


def fault_broker_restart(chain: Chain, pub: Publisher, ledger: Ledger, rng: random.Random) -> Done:
    """Stop the broker (gracefully: it saves its sessions) mid-load and start it again
    after a pause; the gateway stops publishing meanwhile and reconnects after."""
    pub.wait_progress(rng.uniform(0.3, 0.6))
    pub.pause()
    chain.broker.stop()
    pause = rng.uniform(1, 3)
    time.sleep(pause)
    chain.broker.start()
    pub.resume()
    return time.monotonic(), f"down {pause:.1f} s"


def fault_platform_down(chain: Chain, pub: Publisher, ledger: Ledger, rng: random.Random) -> Done:
    """One platform refuses for the whole simulated hour (connections dropped, or HTTP
    503); the other must be served all along.  It comes back once the other has it all."""
    down = rng.choice(PLATFORMS)
    how = rng.choice(["drop", "503"])
    platform_control(chain.platforms[down], **({"down": True} if how == "drop" else {"fail_status": 503}))
    try:
        pub.wait()
        other = next(p for p in PLATFORMS if p != down)
        wait_for(lambda: chain.account(ledger).targets[other].missing == 0, 90, f"every period at {other}")
        assert chain.account(ledger).targets[down].received == 0, f"{down} received records while refusing"
    finally:
        platform_control(chain.platforms[down], down=False, fail_status=None)
    return time.monotonic(), f"{down} {how}"


def fault_pg_restart(chain: Chain, pub: Publisher, ledger: Ledger, rng: random.Random) -> Done:
    """Restart PostgreSQL mid-load: a clean stop ("fast") or a crash ("immediate",
    recovery from the WAL at start)."""
    assert chain.database is not None, "pg_restart needs a private PostgreSQL"
    pub.wait_progress(rng.uniform(0.3, 0.6))
    mode = rng.choice(["fast", "immediate"])
    chain.database.restart(mode)
    return time.monotonic(), mode


def fault_terminate(chain: Chain, pub: Publisher, ledger: Ledger, rng: random.Random, times: int = 4) -> Done:
    """pg_terminate_backend of the service's connections, several times mid-load."""
    name = chain.dsn.rsplit("/", 1)[1]
    killed = 0
    for n in range(times):
        pub.wait_progress((n + 1) / (times + 1))
        time.sleep(rng.uniform(0, 0.3))
        killed += run(terminate_backends(name, admin_dsn=chain.admin_dsn))
    return time.monotonic(), f"{times}x, {killed} backends"


def fault_proxy(chain: Chain, pub: Publisher, ledger: Ledger, rng: random.Random) -> Done:
    """The TCP path to the database stalls (bytes held, connections open), then every
    connection is dropped, then it works again."""
    assert chain.proxy is not None, "proxy faults need the service behind a TcpProxy"
    pub.wait_progress(rng.uniform(0.3, 0.5))
    chain.proxy.stall()
    stall = rng.uniform(3, 6)
    time.sleep(stall)
    dropped = chain.proxy.drop()
    chain.proxy.resume()
    return time.monotonic(), f"stall {stall:.1f} s, {dropped} dropped"


FAULTS: dict[str, Callable[[Chain, Publisher, Ledger, random.Random], Done]] = {
    "none": fault_none,
    "sigkill": fault_sigkill,
    "broker_restart": fault_broker_restart,
    "platform_down": fault_platform_down,
    "pg_restart": fault_pg_restart,
    "terminate_backends": fault_terminate,
    "proxy_stall_drop": fault_proxy,
}


@dataclass(frozen=True)
class RoundResult:
    fault: str
    detail: str  # what the fault did, in a few words
    ledger: Ledger
    account: Account
    recovery_s: float | None  # None: not caught up within the time allowed (Account.caught_up)
    service_restarts: int      # by the fault (SIGKILL)
    service_exited: bool       # on its own: a crash


Fault = Callable[[Chain, Publisher, Ledger, random.Random], Done]


def run_round(chain: Chain, fault: str | Fault, round_no: int, *, rng: random.Random | None = None,
              enterprises: int = 4, rate: float = 150.0, timeout: float = 120) -> RoundResult:
    """One round of load with ``fault`` (a name in FAULTS, or a function of the same
    form) applied; the caller asserts or prints."""
    rng = rng or random.Random(round_no)
    load = Load(round_no, enterprises=enterprises)
    ledger = load.ledger()
    restarts = chain.restarts
    items = Gateway(chain.broker.url, "-")
    try:
        for ent in load.codes:  # registered before their readings arrive
            items.publish_raw(load.topic(ent, "items"), json.dumps({"v": 1, "items": load.items()}), retain=True)
        items.retained.clear()  # they stay: a restarted service reads them again
    finally:
        items.close()
    wait_for(lambda: count(chain.dsn, "SELECT count(*) FROM items WHERE enterprise = ANY(%s)", list(ledger.enterprises))
             == len(ITEMS) * enterprises, 60, "the round's items registered")
    pub = Publisher(chain.broker.url, load.messages(), rate).start()
    act = FAULTS[fault] if isinstance(fault, str) else fault
    fault_end, detail = act(chain, pub, ledger, rng)
    published_at = pub.wait()
    since = max(fault_end, published_at)
    deadline = since + timeout
    result = chain.account_when_reachable(ledger, deadline)
    while not result.caught_up and time.monotonic() < deadline:
        if not chain.service_alive():
            break  # a stopped service never catches up: report it as it stands
        time.sleep(0.25)
        result = chain.account_when_reachable(ledger, deadline)
    recovery = time.monotonic() - since if result.caught_up else None
    name = fault if isinstance(fault, str) else fault.__name__
    return RoundResult(name, detail, ledger, result, recovery, chain.restarts - restarts, not chain.service_alive())


@contextmanager
def chain_on(broker: PrivateBroker, dsn: str, workdir: Path, **kw: Any) -> Iterator[Chain]:
    chain = Chain(broker, dsn, workdir, **kw).start()
    try:
        yield chain
    finally:
        chain.stop()
