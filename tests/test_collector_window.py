"""The collector keeps its own receive window, against a real PrivateBroker that does not.

The broker here runs the shipped settings with ``max_inflight_messages 0`` added after
them (PrivateBroker takes the last value of an option given twice).  Such a broker sends a
session's backlog far past the Receive Maximum the client announces; the collector
must still never hold more than ``receive_maximum`` messages, and lose nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from config.settings import MqttSettings
from ingest.collector import Collector, Message
from tests.tls import make_ca_and_server
from tools.gateway import enterprise_code, item
from tools.guest import PrivateBroker, free_port
from tools.process import ServiceProcess, count, query, wait_for

WINDOW = 20
ENT = enterprise_code(80)
TOPIC = f"nhjc/v1/{ENT}/gw-1/readings"


@pytest.fixture(scope="module")
def greedy(tmp_path_factory: pytest.TempPathFactory):
    """A broker that ignores the client's Receive Maximum."""
    b = PrivateBroker(tmp_path_factory.mktemp("greedy"), extra="max_inflight_messages 0").start()
    yield b
    b.stop()


def publish(port: int, topic: str, payloads: list[bytes], qos: int = 1) -> None:
    """Publish with a wide in-flight window; returns once the broker has all (QoS 1) or
    all are written (QoS 0)."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}",
                    protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        for info in [c.publish(topic, p, qos=qos) for p in payloads]:
            info.wait_for_publish(30)
            assert info.is_published()
    finally:
        c.disconnect()
        c.loop_stop()


def hold_insert_lock(dsn: str) -> psycopg.Connection:
    """A transaction holding SHARE on readings: inserts block, reads go on."""
    conn = psycopg.connect(dsn)
    conn.execute("LOCK TABLE readings IN SHARE MODE")
    return conn


def payloads(n: int, tag: str) -> list[bytes]:
    return [json.dumps({"v": 1, "tag": tag, "n": i}).encode() for i in range(n)]


class _WatchedQueue(asyncio.Queue):
    def __init__(self, on_put: Callable[[], None]) -> None:
        super().__init__()
        self._on_put = on_put

    def put_nowait(self, item: Message) -> None:
        super().put_nowait(item)
        self._on_put()


class Drive:
    """A Collector in this event loop, with the test as its (slow) acknowledger.  The
    peak is counted here, independently of the collector: taken + queued - handed back,
    observed at every message the collector queues."""

    def __init__(self, url: str, client_id: str, window: int = WINDOW, **kw) -> None:
        settings = MqttSettings(url=url, client_id=client_id, receive_maximum=window, session_expiry_s=600,
                                reconnect_min_s=0.1, reconnect_max_s=0.5)
        # model_copy: a keepalive shorter than the settings allow makes the tests quick.
        self.c = Collector(settings.model_copy(update=kw))
        self.c.queue = _WatchedQueue(self._observe)
        self.done = asyncio.Event()
        self.taken: list[Message] = []
        self.handed_back = 0
        self.peak = 0
        self.task: asyncio.Task[None] | None = None

    def _observe(self) -> None:
        self.peak = max(self.peak, len(self.taken) + self.c.queue.qsize() - self.handed_back)

    async def start(self) -> Drive:
        self.task = asyncio.create_task(self.c.run(self.done))
        await until(lambda: self.c.connected, 10, "connected")
        return self

    def take(self) -> list[Message]:
        new = []
        while not self.c.queue.empty():
            new.append(self.c.queue.get_nowait())
        self.taken += new
        return new

    def ack(self, msgs: list[Message]) -> int:
        self.handed_back += len(msgs)
        return self.c.ack([m.handle for m in msgs])

    async def ack_slowly(self, upto: int, per_step: int = 7, timeout: float = 60) -> None:
        """Take and acknowledge a few at a time until ``upto`` have been handed back."""
        deadline = time.monotonic() + timeout
        while self.handed_back < upto:
            assert time.monotonic() < deadline, f"only {len(self.taken)} of {upto} delivered"
            self.take()
            self.ack(self.taken[self.handed_back:min(self.handed_back + per_step, upto)])
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        self.done.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 10)


async def until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.02)


async def make_session(url: str, port: int, client_id: str, **kw) -> None:
    """Subscribe once (a persistent session), prove it live, and go away."""
    d = await Drive(url, client_id, **kw).start()
    await asyncio.to_thread(publish, port, TOPIC, [b"hello"])
    await until(lambda: d.c.queue.qsize() == 1, 10, "the session to be live")
    assert d.ack(d.take()) == 1
    await d.stop()


async def backlog(broker: PrivateBroker, n: int, tag: str, url: str | None = None, **kw) -> tuple[str, list[bytes]]:
    """A persistent session with ``n`` messages waiting for it; returns its client id."""
    client_id = f"window-{tag}-{uuid.uuid4().hex[:6]}"
    await make_session(url or broker.url, broker.port, client_id, **kw)
    sent = payloads(n, tag)
    await asyncio.to_thread(publish, broker.port, TOPIC, sent)
    return client_id, sent


def test_the_broker_ignores_the_receive_maximum_we_announce(greedy: PrivateBroker) -> None:
    """The premise: a client that reads all it is sent (as the collector did) holds far
    more than its Receive Maximum once it starts acknowledging."""
    got: list[int] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"raw-{uuid.uuid4().hex[:6]}",
                    protocol=mqtt.MQTTv5, manual_ack=True)
    c.on_message = lambda client, userdata, msg: got.append(msg.mid)
    subscribed = threading.Event()
    c.on_subscribe = lambda *args: subscribed.set()
    props = Properties(PacketTypes.CONNECT)
    props.ReceiveMaximum = WINDOW
    props.SessionExpiryInterval = 300
    c.connect("127.0.0.1", greedy.port, clean_start=False, properties=props)
    c.subscribe(TOPIC, qos=1)
    c.loop_start()
    try:
        assert subscribed.wait(10)
        publish(greedy.port, TOPIC, payloads(2000, "raw"))
        acked, peak = 0, 0
        deadline = time.monotonic() + 30
        while acked < 2000 and time.monotonic() < deadline:
            peak = max(peak, len(got) - acked)
            for mid in got[acked:acked + 7]:
                c.ack(mid, 1)
                acked += 1
            time.sleep(0.005)
        assert acked == 2000
        assert peak > 5 * WINDOW, peak
    finally:
        c.disconnect()
        c.loop_stop()


async def test_full_window_stops_reading_and_acks_resume_until_all_delivered(greedy: PrivateBroker) -> None:
    client_id, sent = await backlog(greedy, 2000, "drain")
    d = await Drive(greedy.url, client_id).start()
    try:
        # Nobody acknowledges: exactly the window is read, no message more.
        await until(lambda: d.c.queue.qsize() >= WINDOW, 10, "the window to fill")
        await asyncio.sleep(1.0)
        assert d.c.queue.qsize() == WINDOW
        assert d.c.unacked == WINDOW and d.c.window_paused
        # Slow acknowledgement: reading resumes as room frees, and never overshoots.
        await d.ack_slowly(len(sent))
        assert d.peak == WINDOW
        assert d.c.peak_unacked == WINDOW
        assert d.c.unacked == 0 and not d.c.window_paused
        got = [m.payload for m in d.taken]
        assert len(got) == len(sent)
        assert Counter(got) == Counter(sent)
    finally:
        await d.stop()


async def test_a_forgotten_message_frees_its_place_and_comes_again_on_the_next_connection(
        greedy: PrivateBroker) -> None:
    # What nothing could be stored for is left unacknowledged on purpose: reading goes
    # on (the window does not shrink for good) and the broker delivers it once more.
    client_id, sent = await backlog(greedy, WINDOW + 5, "forget")
    d = await Drive(greedy.url, client_id).start()
    try:
        await until(lambda: d.c.queue.qsize() >= WINDOW, 10, "the window to fill")
        first = d.take()[0]
        d.handed_back += 1
        d.c.forget([first.handle])
        # Its place is free at once (the broker, counting it in flight, sends more as the
        # others are acknowledged).
        assert d.c.unacked == WINDOW - 1 and not d.c.window_paused
        await d.ack_slowly(len(sent))
        assert sorted(m.payload for m in d.taken) == sorted(sent)
        assert d.c.unacked == 0 and d.c.peak_unacked == WINDOW
    finally:
        await d.stop()
    again = await Drive(greedy.url, client_id).start()
    try:
        await until(lambda: again.c.queue.qsize() >= 1, 10, "the forgotten message redelivered")
        await asyncio.sleep(0.5)
        assert [m.payload for m in again.take()] == [first.payload]
        again.ack(again.taken)
    finally:
        await again.stop()


async def test_qos0_messages_count_in_the_window_until_handed_back(greedy: PrivateBroker) -> None:
    d = await Drive(greedy.url, f"window-qos0-{uuid.uuid4().hex[:6]}").start()
    try:
        await asyncio.to_thread(publish, greedy.port, TOPIC, [b"hello"])
        await until(lambda: d.c.queue.qsize() == 1, 10, "the subscription")
        d.ack(d.take())
        sent = payloads(300, "qos0")
        await asyncio.to_thread(publish, greedy.port, TOPIC, sent, 0)
        await until(lambda: d.c.queue.qsize() >= WINDOW, 10, "the window to fill")
        await asyncio.sleep(0.5)
        assert d.c.queue.qsize() == WINDOW and d.c.window_paused
        await d.ack_slowly(1 + len(sent))
        assert d.peak == WINDOW
        assert [m.payload for m in d.taken[1:]] == sent  # QoS 0: nothing to redeliver, nothing lost
        assert all(m.handle.qos == 0 for m in d.taken[1:])
    finally:
        await d.stop()


async def test_shutdown_pause_is_not_undone_by_freeing_the_window(greedy: PrivateBroker) -> None:
    client_id, sent = await backlog(greedy, 100, "pause")
    d = await Drive(greedy.url, client_id).start()
    try:
        await until(lambda: d.c.queue.qsize() >= WINDOW, 10, "the window to fill")
        d.c.pause()
        first = d.take()
        assert d.ack(first) == WINDOW  # acknowledgements still go out
        await asyncio.sleep(1.0)
        assert d.c.queue.empty()  # ... but nothing more is read
        assert d.c.unacked == 0
    finally:
        await d.stop()
    # The rest waited at the broker: a new run gets exactly it.
    d2 = await Drive(greedy.url, client_id).start()
    try:
        await d2.ack_slowly(len(sent) - WINDOW, per_step=50)
        await asyncio.sleep(0.5)
        assert d2.c.queue.empty()
        assert Counter(m.payload for m in first + d2.taken) == Counter(sent)
    finally:
        await d2.stop()


async def test_pause_longer_than_keepalive_reconnects_and_loses_nothing(greedy: PrivateBroker) -> None:
    window = 10
    client_id, sent = await backlog(greedy, 60, "keepalive")
    d = await Drive(greedy.url, client_id, window=window, keepalive_s=2).start()
    try:
        await until(lambda: d.c.queue.qsize() >= window, 10, "the window to fill")
        # Unread, the PINGRESP never arrives: paho times the connection out.
        await until(lambda: not d.c.connected, 10, "the keepalive time-out")
        await asyncio.sleep(2.0)
        assert not d.c.connected  # no reconnect while the window is full
        assert d.c.unacked == window and d.c.queue.qsize() == window
        old = d.take()
        assert d.ack(old) == 0  # the old connection's handles are never sent on a new one
        await until(lambda: d.c.connected, 10, "the reconnect")
        # The broker redelivers what was left unacknowledged, then the rest.
        await d.ack_slowly(len(sent) + window)
        await asyncio.sleep(0.5)
        assert d.take() == []
        assert d.peak == window
        got = Counter(m.payload for m in d.taken)
        assert got - Counter(sent) == Counter(m.payload for m in old)  # duplicates: exactly those
        assert set(got) == set(sent)
        assert all(m.handle.generation == old[0].handle.generation + 1 for m in d.taken[window:])
    finally:
        await d.stop()


class TlsProxy:
    """TLS in front of the broker that forwards the broker's bytes in large writes, so
    one TLS record carries many MQTT packets (as a TLS-terminating proxy or another
    broker may): the client's ssl socket then holds decrypted bytes of packets not yet
    parsed, which the selector never signals."""

    def __init__(self, broker_port: int, certs: dict[str, Path]) -> None:
        self.port = free_port()
        self._broker_port = broker_port
        self._ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ctx.load_cert_chain(certs["server"], certs["server_key"])
        self._writers: list[asyncio.StreamWriter] = []
        self._handlers: list[asyncio.Task] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> TlsProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, ssl=self._ctx)
        return self

    async def _pump(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, gather_s: float) -> None:
        with contextlib.suppress(ConnectionError, OSError, ssl.SSLError):
            while data := await r.read(65536):
                if gather_s:
                    await asyncio.sleep(gather_s)  # let more arrive, then send it in one write
                    with contextlib.suppress(TimeoutError):
                        data += await asyncio.wait_for(r.read(65536), 0.001)
                w.write(data)
                await w.drain()
        w.close()

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self._handlers.append(asyncio.current_task())
        br, bw = await asyncio.open_connection("127.0.0.1", self._broker_port)
        self._writers += [cw, bw]
        await asyncio.gather(self._pump(cr, bw, 0), self._pump(br, cw, 0.02))

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._writers:
            w.close()
        await asyncio.wait_for(asyncio.gather(*self._handlers, return_exceptions=True), 10)
        await self._server.wait_closed()


async def test_over_tls_buffered_bytes_are_read_after_a_pause(greedy: PrivateBroker, tmp_path: Path) -> None:
    certs = make_ca_and_server(tmp_path / "certs")
    proxy = await TlsProxy(greedy.port, certs).start()
    try:
        url = f"mqtts://127.0.0.1:{proxy.port}"
        client_id, sent = await backlog(greedy, 600, "tls", url=url, ca_file=certs["ca"])
        d = await Drive(url, client_id, ca_file=certs["ca"]).start()
        try:
            # Once acknowledgements flow, the broker sends far ahead of the window.
            await d.ack_slowly(200, timeout=20)
            await until(lambda: d.c.window_paused, 10, "the window to fill again")
            await asyncio.sleep(0.5)
            assert len(d.taken) + d.c.queue.qsize() - d.handed_back == WINDOW
            # The case this test is for: more packets wait, decrypted, inside the ssl socket.
            assert d.c._client.socket().pending() > 0
            await d.ack_slowly(len(sent), timeout=20)
            assert d.peak == WINDOW
            assert Counter(m.payload for m in d.taken) == Counter(sent)
        finally:
            await d.stop()
    finally:
        await proxy.close()


def test_nhjc_run_holds_no_more_than_its_window_while_the_database_is_blocked(
        greedy: PrivateBroker, db: str, tmp_path: Path) -> None:
    window = 50
    ent = enterprise_code(81)
    codes = [f"01-00-0000-02331{k}-01" for k in range(5)]
    topic = f"nhjc/v1/{ent}/gw-1"
    client_id = f"nhjc-window-{uuid.uuid4().hex[:6]}"
    svc = ServiceProcess(greedy.url, db, client_id=client_id, log=tmp_path / "svc.log",
                         env={"NHJC_MQTT__RECEIVE_MAXIMUM": str(window)}).start()
    # Not retained: the collectors of this module's other tests subscribe to items too.
    publish(greedy.port, f"{topic}/items", [json.dumps({"v": 1, "items": [item(c) for c in codes]}).encode()])
    wait_for(lambda: count(db, "SELECT count(*) FROM items WHERE enterprise = %s", ent) == 5, 20, "items")
    lock = hold_insert_lock(db)
    frames = [[{"code": c, "ts": 1764303300 + (f * 2 + i) * 60, "value": f * 2 + i + k / 10}
               for k, c in enumerate(codes) for i in range(2)] for f in range(600)]
    try:
        publish(greedy.port, f"{topic}/readings", [json.dumps({"v": 1, "readings": f}).encode() for f in frames])
        wait_for(lambda: svc.metric("nhjc_unacked_messages") >= window, 20, "the window to fill")
        for _ in range(20):
            assert svc.metric("nhjc_unacked_messages") <= window
            time.sleep(0.1)
        assert svc.metric("nhjc_unacked_messages") == window
        assert svc.metric("nhjc_ingest_window_paused") == 1
        assert svc.metric("nhjc_readings_accepted_total") == 0
        lock.rollback()
        expected = {(r["code"], r["ts"]): r["value"] for f in frames for r in f}

        def drained() -> bool:
            assert svc.metric("nhjc_unacked_messages") <= window
            return count(db, "SELECT count(*) FROM readings") >= len(expected)

        wait_for(drained, 90, "the backlog to drain")
        rows = query(db, "SELECT code, extract(epoch FROM ts)::bigint, value FROM readings")
        assert {(c, t): v for c, t, v in rows} == expected and len(rows) == len(expected)
        assert svc.metric("nhjc_unacked_messages_peak") == window
        wait_for(lambda: svc.metric("nhjc_ingest_window_paused") == 0, 10, "the window to empty")
    finally:
        lock.close()
        assert svc.stop() == 0


async def test_subscribed_means_a_message_published_now_reaches_a_new_session(greedy: PrivateBroker) -> None:
    """Readiness waits for the SUBACK: a new session holds nothing for us before it, so a
    message published between CONNACK and SUBACK would be lost to a gateway told we were
    ready.  Published the moment ``subscribed`` is true, a message (not retained) arrives;
    the flag drops with the connection."""
    d = Drive(greedy.url, f"window-sub-{uuid.uuid4().hex[:6]}")
    d.task = asyncio.create_task(d.c.run(d.done))
    try:
        await until(lambda: d.c.subscribed, 10, "the SUBACK")
        assert d.c.connected
        await asyncio.to_thread(publish, greedy.port, TOPIC, [b"first"])
        await until(lambda: d.c.queue.qsize() == 1, 10, "the first message")
        assert d.ack(d.take()) == 1
    finally:
        await d.stop()
    assert not d.c.subscribed and not d.c.connected
