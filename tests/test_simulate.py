"""``nhjc simulate`` against a real PrivateBroker: what a subscriber receives is what the
simulator claims it sent, in the shape gateways publish, faults included.

Each test runs the simulator on its own seed (its own enterprises) on the session broker
and records everything under ``nhjc/v1/#`` with a plain paho subscriber.  Waiting for the
last message has a generous deadline; nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import paho.mqtt.client as mqtt
import pytest

from ingest.credit_code import is_valid
from ingest.frames import REASONS, decode_readings
from ingest.items import parse_items_file
from ingest.topics import TopicError, parse_topic
from nhjc.cli import main as cli_main
from tools.guest import PrivateBroker
from tools.sim import MALFORMED_REASONS, Simulator

START = "2026-11-27T08:00:00+08:00"
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?\+08:00$")
GATEWAY = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class Recorder:
    """Subscribes to ``topic`` at QoS 1 and keeps every message (topic, payload, retain)."""

    def __init__(self, url: str, topic: str = "nhjc/v1/#") -> None:
        parts = urlsplit(url)
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"rec-{uuid.uuid4().hex[:8]}")
        c.on_connect = lambda cl, _u, _f, _rc, _p: cl.subscribe(topic, qos=1)
        c.on_subscribe = lambda *_a: subscribed.set()
        c.on_message = lambda _c, _u, m: self._add(m.topic, m.payload, bool(m.retain))
        c.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
        c.loop_start()
        self.client = c
        assert subscribed.wait(10), "subscription not acknowledged"

    def _add(self, topic: str, payload: bytes, retain: bool) -> None:
        with self._lock:
            self.messages.append((topic, payload, retain))

    def of(self, enterprises: Iterable[str]) -> list[tuple[str, bytes, bool]]:
        """Live messages (not retained ones replayed at subscription) of these enterprises."""
        wanted = set(enterprises)
        with self._lock:
            return [m for m in self.messages if not m[2] and m[0].split("/")[2] in wanted]

    def wait(self, cond: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _codes(sim: Simulator) -> set[str]:
    """The simulator's enterprises and the invalid codes its foreign frames use."""
    assert sim.scenario is not None
    return {e.code for e in sim.enterprises} | {g.foreign for g in sim.scenario.gateways}


def _run(broker: PrivateBroker, **kw: object) -> tuple[Simulator, list[tuple[str, bytes, bool]]]:
    """Run a simulator to its end with a recorder; return what the recorder got of it."""
    rec = Recorder(broker.url)
    try:
        sim = Simulator(url=broker.url, start=START, speed=math.inf, **kw)  # type: ignore[arg-type]
        c = sim.run_blocking()
        expected = c.frames + c.items_messages + c.status_messages
        rec.wait(lambda: len(rec.of(_codes(sim))) >= expected, f"{expected} messages")
        got = rec.of(_codes(sim))
        assert len(got) == expected
        return sim, got
    finally:
        rec.close()


def _kind(topic: str) -> str:
    return topic.rsplit("/", 1)[1]


def test_items_retained_and_frames_in_wire_shape(broker: PrivateBroker) -> None:
    sim, got = _run(broker, enterprises=4, seed=101, duration=3600, backfill=2 * 3600)
    c = sim.counters
    items_of: dict[str, dict[str, dict[str, object]]] = {}
    for topic, payload, _ in got:
        if _kind(topic) == "items":
            _, _, ent, gw, _ = topic.split("/")
            doc = orjson.loads(payload)
            assert doc["v"] == 1 and doc["items"]
            for it in doc["items"]:
                assert {"code", "name", "energy", "unit", "kind", "multiplier", "min", "max",
                        "scope", "input_type"} <= it.keys()
                assert it["kind"] in ("cumulative", "interval", "instant")
                assert ("rollover" in it) == (it["kind"] == "cumulative")
            items_of[f"{ent}/{gw}"] = {it["code"]: it for it in doc["items"]}
    gateways = {f"{e.code}/{g.id}" for e in sim.enterprises for g in e.gateways}
    assert set(items_of) == gateways
    status = defaultdict(list)
    for topic, payload, _ in got:
        if _kind(topic) == "status":
            status[topic].append(payload)
    assert all(v == [b"online", b"offline"] for v in status.values()) and len(status) == len(gateways)

    styles: Counter[str] = Counter()
    seen: set[tuple[str, str, int]] = set()
    last_seq: dict[str, int] = {}
    backlog_frames = 0
    readings = 0
    for topic, payload, _ in got:
        if _kind(topic) != "readings":
            continue
        _, _, ent, gw, _ = topic.split("/")
        assert len(payload) <= 256 * 1024
        frame = orjson.loads(payload)
        assert set(frame) == {"v", "seq", "sent_at", "readings"} and frame["v"] == 1
        assert isinstance(frame["seq"], int) and frame["seq"] > last_seq.get(topic, -1)
        last_seq[topic] = frame["seq"]
        assert RFC3339.match(frame["sent_at"])
        assert 1 <= len(frame["readings"]) <= 5000
        stamps = set()
        for r in frame["readings"]:
            assert set(r) == {"code", "ts", "value"}
            assert r["code"] in items_of[f"{ent}/{gw}"]
            assert isinstance(r["value"], float) and math.isfinite(r["value"])
            if isinstance(r["ts"], str):
                assert RFC3339.match(r["ts"])
                t = int(datetime.fromisoformat(r["ts"]).timestamp())
                styles["rfc3339"] += 1
            else:
                assert isinstance(r["ts"], int)
                t = r["ts"]
                styles["unix"] += 1
            assert t % 60 == 0
            stamps.add(t)
            seen.add((ent, r["code"], t))
            readings += 1
        backlog_frames += len(stamps) > 1
    assert styles["rfc3339"] and styles["unix"], "gateways mix RFC 3339 and Unix timestamps"
    assert backlog_frames > 0, "the backfill goes out many ticks per frame"
    # Without faults every item has a reading at every tick: 2 h backfill + 1 h live.
    n_items = sum(len(e.items) for e in sim.enterprises)
    assert len(seen) == readings == n_items * 180 == c.readings == c.unique_readings
    assert c.backfill_readings == n_items * 120 and not c.quarantine

    # A subscriber arriving later gets each gateway's items config and status, retained.
    late = Recorder(broker.url)
    try:
        mine = {e.code for e in sim.enterprises}

        def retained() -> list[tuple[str, bytes, bool]]:
            with late._lock:
                return [m for m in late.messages if m[2] and m[0].split("/")[2] in mine]

        late.wait(lambda: len(retained()) >= 2 * len(gateways), "retained items and status")
        kept = {t: p for t, p, _ in retained()}
        for gw in gateways:
            assert orjson.loads(kept[f"nhjc/v1/{gw}/items"])["items"]
            assert kept[f"nhjc/v1/{gw}/status"] == b"offline"
    finally:
        late.close()


def _items(got: list[tuple[str, bytes, bool]]) -> dict[tuple[str, str], dict[str, object]]:
    out = {}
    for topic, payload, _ in got:
        if _kind(topic) == "items":
            ent = topic.split("/")[2]
            for it in orjson.loads(payload)["items"]:
                out[(ent, it["code"])] = it
    return out


def _ts(value: object) -> int:
    return int(datetime.fromisoformat(value).timestamp()) if isinstance(value, str) else int(value)  # type: ignore[arg-type]


def test_registers_never_go_down_except_at_rollovers_and_resets(broker: PrivateBroker) -> None:
    sim, got = _run(broker, enterprises=6, seed=102, duration=12 * 3600,
                    faults="resets=0.01,spikes=0.005")
    items = _items(got)
    series: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for topic, payload, _ in got:
        if _kind(topic) == "readings":
            ent = topic.split("/")[2]
            for r in orjson.loads(payload)["readings"]:
                if items[(ent, r["code"])]["kind"] == "cumulative":
                    series[(ent, r["code"])][_ts(r["ts"])] = r["value"]
    events = {(e.kind, e.enterprise, e.code, e.ts) for e in sim.events}
    rollovers = resets = 0
    for key, points in series.items():
        it = items[key]
        ts = sorted(points)
        for t0, t1 in itertools.pairwise(ts):
            p, r = points[t0], points[t1]
            if r >= p:
                continue
            wrapped = float(it["rollover"]) - p + r  # type: ignore[arg-type]
            plausible = wrapped * float(it["multiplier"]) <= float(it["max"]) * (t1 - t0) / 3600  # type: ignore[arg-type]
            if ("rollover", *key, t1) in events:
                assert plausible, f"{key} at {t1}: a rollover nhjc would not recognise"
                rollovers += 1
            else:
                assert ("reset", *key, t1) in events, f"{key} went down at {t1} without a reset"
                assert not plausible, f"{key} at {t1}: a reset that looks like a rollover"
                resets += 1
    assert rollovers >= 5 and resets >= 5
    assert sim.counters.generated["rollovers"] == rollovers
    assert sim.counters.generated["resets"] == resets


def _bad_readings(frame: dict[str, object], known: set[str]) -> Counter[str]:
    """Reasons of the bad readings in a well-formed frame, by the simulator's claims."""
    out: Counter[str] = Counter()
    for r in frame["readings"]:  # type: ignore[attr-defined]
        code, ts, value = r["code"], r["ts"], r["value"]
        if not isinstance(code, str) or not re.fullmatch(r"\d{16}", code.replace("-", "")):
            out["bad_code"] += 1
        elif code not in known:
            out["unknown_item"] += 1
        elif not isinstance(value, float):
            out["bad_value"] += 1
        elif not math.isfinite(value):
            out["not_finite"] += 1
        elif isinstance(ts, int) and ts > 1e11:
            out["bad_timestamp"] += 1  # milliseconds
        elif isinstance(ts, str):
            try:
                dt = datetime.fromisoformat(ts)
            except ValueError:
                out["bad_timestamp"] += 1  # 30 February
                continue
            if dt.tzinfo is None or dt.year < 2000:
                out["bad_timestamp"] += 1
    return out


def test_each_fault_produces_the_input_it_claims(broker: PrivateBroker) -> None:
    sim, got = _run(broker, enterprises=6, seed=103, duration=4 * 3600, backfill=3600,
                    faults="all=0.04")
    c = sim.counters
    items = _items(got)
    known: dict[str, set[str]] = defaultdict(set)
    for ent, code in items:
        known[ent].add(code)
    claims: Counter[str] = Counter()
    good: list[tuple[str, str, int]] = []
    payloads: Counter[tuple[str, bytes]] = Counter()
    for topic, payload, _ in got:
        if _kind(topic) != "readings":
            continue
        payloads[(topic, payload)] += 1
        _, _, ent, gw, _ = topic.split("/")
        if not is_valid(ent):
            claims["bad_enterprise"] += 1
            assert ent not in {e.code for e in sim.enterprises}
            continue
        if not GATEWAY.match(gw):
            claims["bad_topic"] += 1
            continue
        if len(payload) > 256 * 1024:
            claims["too_large"] += 1
            assert len(payload) < 300_000  # PrivateBroker's limit in config/mosquitto/nhjc.conf
            continue
        try:
            frame = json.loads(payload.decode("utf-8"))  # Python's json reads NaN, as ingest does
        except (ValueError, UnicodeDecodeError):
            claims["bad_json"] += 1
            continue
        if not isinstance(frame, dict):
            claims["bad_shape"] += 1
            continue
        if frame.get("v") != 1 or isinstance(frame.get("v"), bool):
            claims["bad_version"] += 1
            continue
        if not isinstance(frame.get("readings"), list) or not frame["readings"] or frame.get("seq", 0) < 0:
            claims["bad_shape"] += 1
            continue
        bad = _bad_readings(frame, known[ent])
        assert sum(bad.values()) <= 1, "one bad reading per frame"
        claims.update(bad)
        good.extend((ent, r["code"], _ts(r["ts"])) for r in frame["readings"]
                    if not _bad_readings({"readings": [r]}, known[ent]))
    assert set(claims) == set(MALFORMED_REASONS) | {"bad_enterprise"}
    assert claims == Counter(c.quarantine)
    assert len(good) == c.readings and len(set(good)) == c.unique_readings
    assert sum(n - 1 for n in payloads.values()) == c.tagged_frames["duplicate"]
    assert c.tagged_frames["late"] and c.generated["gaps"] and c.generated["gap_readings"]

    # The real ingest decoder agrees with every claim.
    reasons: Counter[str] = Counter()
    rows = 0
    for topic, payload, _ in got:
        if _kind(topic) != "readings":
            continue
        try:
            parsed = parse_topic(topic)
        except TopicError as exc:
            reasons[exc.reason] += 1
            continue
        batch = decode_readings(topic, parsed, payload, int(time.time() * 1e6),
                                known_codes=known[parsed.enterprise])
        rows += len(batch.rows)
        reasons.update(q.reason for q in batch.quarantine)
    assert reasons == Counter(c.quarantine)
    assert set(reasons) <= set(REASONS)
    assert rows == c.readings


def test_same_seed_same_messages(broker: PrivateBroker) -> None:
    kw = dict(enterprises=3, duration=2 * 3600, backfill=3600, faults="all=0.03")
    _, a = _run(broker, seed=104, **kw)
    _, b = _run(broker, seed=104, **kw)
    _, other = _run(broker, seed=105, **kw)
    assert sorted(a) == sorted(b)
    assert {p for _, p, _ in a}.isdisjoint({p for _, p, _ in other if p not in (b"online", b"offline")})


async def test_async_run_stops_on_its_event_and_counts_what_it_sent(broker: PrivateBroker) -> None:
    rec = Recorder(broker.url)
    try:
        # Real time (speed 1) with a one-second interval: a gateway as it runs in the field.
        sim = Simulator(url=broker.url, enterprises=2, seed=106, interval=1,
                        start=datetime.now().astimezone() - timedelta(seconds=5))
        stop = asyncio.Event()
        task = asyncio.create_task(sim.run(stop))
        mine = {e.code for e in sim.enterprises}
        while sum(1 for t, _, _ in rec.of(mine) if _kind(t) == "readings") < 6:
            assert not task.done(), task
            await asyncio.sleep(0.05)
        assert sim.counters.frames >= 6
        stop.set()
        c = await task
        assert c.frames >= 6 and c.readings > 0
        expected = c.frames + c.items_messages + c.status_messages
        await asyncio.to_thread(rec.wait, lambda: len(rec.of(mine)) >= expected, "all messages")
        got = rec.of(mine)
        assert len(got) == expected
        assert sum(len(orjson.loads(p)["readings"]) for t, p, _ in got if _kind(t) == "readings") == c.readings
        assert [p for t, p, _ in got if _kind(t) == "status"][-1] == b"offline"
    finally:
        rec.close()


def test_cli_writes_items_and_publishes(broker: PrivateBroker, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NHJC_MQTT__URL", broker.url)
    path = tmp_path / "items.json"
    assert cli_main(["simulate", "--enterprises", "3", "--seed", "107", "--write-items", str(path)]) == 0
    specs = parse_items_file(path.read_text(encoding="utf-8"))
    assert len({s.enterprise for s in specs}) == 3
    capsys.readouterr()
    rec = Recorder(broker.url)
    try:
        assert cli_main(["simulate", "--enterprises", "3", "--seed", "107", "--start", START,
                         "--duration", "30m", "--speed", "max", "--faults", "malformed=0.3",
                         "--json"]) == 0
        counters = json.loads(capsys.readouterr().out)
        mine = {s.enterprise for s in specs}
        rec.wait(lambda: sum(1 for t, _, _ in rec.of(mine) if _kind(t) == "readings") >= counters["frames"],
                 "the CLI's frames")
        assert counters["readings"] > 0 and counters["quarantined"] > 0
        published = {(s.enterprise, s.code) for s in specs}
        for topic, payload, _ in rec.of(mine):
            if _kind(topic) == "items":
                ent = topic.split("/")[2]
                assert {(ent, i["code"]) for i in orjson.loads(payload)["items"]} <= published
    finally:
        rec.close()
    with pytest.raises(SystemExit):  # argparse: a bad option value is a usage error
        cli_main(["simulate", "--faults", "nonsense"])
