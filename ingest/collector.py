"""The MQTT collector: paho-mqtt driven from the asyncio event loop.

- MQTT 5, fixed client id, clean start off and a session expiry: the broker keeps our
  subscriptions and queues messages while we are away.
- QoS 1 with manual acknowledgement: a message is acknowledged only when the ingest stage
  says its rows are committed (``ack``).
- The receive window is ours to keep: at most ``receive_maximum`` messages are inside
  the process (received, not yet handed back to ``ack``), whatever the broker sends.
  We announce it as the MQTT 5 Receive Maximum, but a broker need not honour it
  (Mosquitto with ``max_inflight_messages 0`` does not), so when the window is full
  we stop reading the socket and the rest waits in the broker's queue.  paho parses
  packets only when we call ``loop_read``, which reads one packet here (paho 2.2 reads
  more only while it holds QoS 2 or outgoing messages; we subscribe at QoS 1 and
  publish nothing), so the window is never exceeded, not even by one message.
- While reading is paused the broker's PINGRESP cannot be read either: a pause longer
  than the keepalive ends the connection (paho's keepalive time-out).  We reconnect
  once the window has room again; the broker redelivers what the old connection left
  unacknowledged and the database keys absorb the duplicates.
- Reconnects with the jittered exponential backoff of ``runtime.backoff``.  Handles of a previous connection are
  never acknowledged on a new one (packet ids are reused): they still leave the window
  when handed to ``ack``, and the broker redelivers their messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import select
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.matcher import MQTTMatcher
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from config.settings import MqttSettings, secret_value
from ingest.readahead import NoFilters, ReadAhead
from ingest.topics import subscriptions
from runtime.backoff import Backoff

__all__ = ["Collector", "Handle", "Message"]

log = logging.getLogger("nhjc.collector")

_BURST = 200  # packets read in one go while the socket has more (the event loop's fairness)


@dataclass(frozen=True, slots=True)
class Handle:
    generation: int  # which connection delivered it
    mid: int
    qos: int


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    received_at_us: int
    handle: Handle


class Collector:
    """One connection to the broker, kept up until ``run``'s ``done`` is set.
    ``on_state(connected)`` is called on every connect and disconnect.

    ``gate``: awaited before every connect (with a shared group: until this instance
    holds its session's lock, so that no peer is draining the session meanwhile).
    ``adopt``: the session is a gone peer's, taken to be drained: on connect it is
    unsubscribed from everything (the broker stops queueing for it, and still delivers
    what it holds) instead of subscribed; ``subscribed`` then says the broker confirmed."""

    def __init__(self, settings: MqttSettings, *, on_state: Callable[[bool], None] | None = None,
                 gate: Callable[[], Awaitable[None]] | None = None, adopt: bool = False) -> None:
        parts = urlsplit(settings.url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self._keepalive = settings.keepalive_s
        self._receive_maximum = settings.receive_maximum
        self._session_expiry = settings.session_expiry_s
        self._backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s)
        self._topics = subscriptions(settings.shared_group)
        self._stale = [t for t in subscriptions("") if t not in self._topics]
        self._on_state = on_state or (lambda connected: None)
        self._gate = gate
        self._adopt = adopt
        self.discard_session = False  # the next disconnect ends the session at the broker
        self.received = 0  # messages received since start
        self.last_message_us = 0  # when the last one came (wall clock, µs)
        self.queue: asyncio.Queue[Message] = asyncio.Queue()
        self.connected = False
        # Subscribed on this connection: the broker acknowledged every subscription, so
        # what is published from now on reaches us (a new session holds nothing before).
        self.subscribed = False
        self.peak_unacked = 0  # the most messages held at once since start
        self._generation = 0
        # The window: messages received and not yet handed back to ``ack``, of this
        # connection and of earlier ones alike (they are in memory all the same).
        self._held: set[tuple[int, int]] = set()  # (generation, mid) of QoS 1/2 messages
        self._held_qos0 = 0
        self._room = asyncio.Event()
        self._room.set()
        self._stopped = False  # shutdown: never read again
        self._reading = False  # our reader is registered on the socket
        self._resume_soon = False
        self._leaving = False
        self._sock: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected_evt = asyncio.Event()
        self._disconnected_evt = asyncio.Event()
        self._misc: asyncio.Task[None] | None = None

        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
            reconnect_on_failure=False,  # we reconnect ourselves, with backoff
        )
        if settings.username is not None:
            c.username_pw_set(settings.username, secret_value(settings.password))
        ca_file, cert_file, key_file = settings.ca_file, settings.cert_file, settings.key_file
        if parts.scheme == "mqtts" or ca_file or cert_file:
            c.tls_set(
                ca_certs=str(ca_file) if ca_file else None,
                certfile=str(cert_file) if cert_file else None,
                keyfile=str(key_file) if key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.on_unsubscribe = self._on_unsubscribe
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_register_write
        c.on_socket_unregister_write = self._on_unregister_write
        if isinstance(getattr(c, "_on_message_filtered", None), MQTTMatcher):
            c._on_message_filtered = NoFilters()  # type: ignore[no-untyped-call]
        self._client = c

    # --- socket plumbing: paho reads and writes when asyncio says the socket is ready ---
    def _threadsafe(self, fn: Any, *args: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # Called by connect, before it sends anything: paho reads through ReadAhead
        # from now on.
        if getattr(client, "_sock", None) is sock:
            sock = client._sock = ReadAhead(sock)
        self._threadsafe(self._add_reader, sock)

    def _add_reader(self, sock: Any) -> None:
        assert self._loop is not None
        if sock.fileno() == -1:  # closed while this call waited its turn
            return
        self._sock = sock
        self._reading = False
        self._sync_reader()
        if self._misc is None or self._misc.done():
            self._misc = self._loop.create_task(self._misc_loop(), name="mqtt-misc")

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)
        self._sock = None
        self._reading = False

    # --- the receive window ---
    @property
    def unacked(self) -> int:
        """Messages inside the process: received and not yet handed back to ``ack``."""
        return len(self._held) + self._held_qos0

    @property
    def window_paused(self) -> bool:
        """True while we leave the socket unread because the window is full."""
        return self.unacked >= self._receive_maximum

    def _want_read(self) -> bool:
        return self._sock is not None and not self._stopped and self.unacked < self._receive_maximum

    def _sync_reader(self) -> None:
        assert self._loop is not None
        want = self._want_read()
        if want and not self._reading:
            self._loop.add_reader(self._sock, self._read)
        elif self._reading and not want and self._sock is not None:
            self._loop.remove_reader(self._sock)
        self._reading = want

    def _pending(self) -> int:
        # ReadAhead (and an ssl socket) may hold bytes of further packets: the selector
        # sees only the kernel's buffer and would not wake us for them.
        pending = getattr(self._sock, "pending", None)
        return pending() if pending is not None else 0

    def _readable(self) -> bool:
        # More bytes in the kernel's buffer: the next packet (or part of it) has come.
        try:
            return bool(select.select([self._sock], [], [], 0)[0])
        except (OSError, ValueError):  # closed meanwhile
            return False

    def _read(self) -> None:
        # Called only while the window has room; each loop_read parses one packet.  While
        # more has come, up to _BURST packets are read in one go: the batcher then finds
        # many messages waiting at once, instead of waking for each one.
        if not self._want_read():  # a call_soon of ours, after the window filled
            return
        self._client.loop_read()
        for _ in range(_BURST - 1):
            if not (self._want_read() and (self._pending() or self._readable())):
                break
            self._client.loop_read()
        else:
            if self._want_read() and self._pending() and not self._resume_soon and self._loop is not None:
                # Bytes already taken from the kernel: no selector wakes us for them.
                self._resume_soon = True
                self._loop.call_soon(self._resume)
        self._sync_reader()

    def _resume(self) -> None:
        self._resume_soon = False
        if self._sock is None:
            return
        self._sync_reader()
        if self._reading and self._pending():
            self._read()

    def _window_changed(self) -> None:
        held = self.unacked
        self.peak_unacked = max(self.peak_unacked, held)
        if held < self._receive_maximum:
            self._room.set()
        else:
            self._room.clear()

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._threadsafe(self._set_writer, sock, True)

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._threadsafe(self._set_writer, sock, False)

    def _set_writer(self, sock: Any, on: bool) -> None:
        assert self._loop is not None
        if sock.fileno() == -1:  # closed while this call waited its turn
            return
        if on:
            self._loop.add_writer(sock, self._client.loop_write)
        else:
            self._loop.remove_writer(sock)

    async def _misc_loop(self) -> None:
        # Keepalive pings and time-outs.
        while self._client.loop_misc() == mqtt.MQTT_ERR_SUCCESS:
            await asyncio.sleep(1)

    # --- MQTT callbacks (run in the event loop thread) ---
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.warning("broker refused the connection: %s", reason)
            self._disconnected_evt.set()
            return
        self._generation += 1
        self.connected = True
        self._on_state(True)
        log.info("connected to %s:%s (session present: %s)", self._host, self._port, flags.session_present)
        if self._adopt:
            client.unsubscribe(sorted({*self._topics, *self._stale, *subscriptions("")}))
            self._connected_evt.set()
            return
        if flags.session_present and self._stale:
            # A session kept from before the shared group was set still holds the plain
            # readings subscription: it would bring every reading besides our turn.
            client.unsubscribe(self._stale)
        client.subscribe([(t, SubscribeOptions(qos=1)) for t in self._topics])
        self._connected_evt.set()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[Any], props: Any) -> None:
        refused = [f"{t}: {r}" for t, r in zip(self._topics, reasons, strict=False) if r.is_failure]
        if refused:
            log.warning("broker refused the subscription (%s); not ready", "; ".join(refused))
            return
        self.subscribed = True

    def _on_unsubscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[Any], props: Any) -> None:
        if self._adopt:
            self.subscribed = True  # adopting: the broker queues nothing more for the session

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if self.connected and not self._leaving:
            log.warning("disconnected from broker: %s", reason)
        self.connected = False
        self.subscribed = False
        self._on_state(False)
        self._disconnected_evt.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        received = self.last_message_us = time.time_ns() // 1000
        self.received += 1
        handle = Handle(self._generation, msg.mid, msg.qos)
        if msg.qos > 0:
            self._held.add((handle.generation, handle.mid))
        else:
            self._held_qos0 += 1
        self._window_changed()
        payload = msg.payload if type(msg.payload) is bytes else bytes(msg.payload)
        self.queue.put_nowait(Message(msg.topic, payload, received, handle))

    # --- public ---
    def ack(self, handles: Iterable[Handle]) -> int:
        """Acknowledge messages whose rows are committed; returns how many were sent.

        Every message received must come back here (or to ``forget``) exactly once, when
        it is done with: that is what frees its place in the window.  Handles of an
        earlier connection free their place but are not sent (the broker redelivers
        those messages)."""
        return self._hand_back(handles, send=True)

    def forget(self, handles: Iterable[Handle]) -> None:
        """Free the place of messages that are left unacknowledged on purpose (nothing
        could be stored for them): the broker delivers them again on the next
        connection, and the window does not shrink for good meanwhile."""
        self._hand_back(handles, send=False)

    def _hand_back(self, handles: Iterable[Handle], *, send: bool) -> int:
        sent = 0
        for h in handles:
            if h.qos == 0:
                self._held_qos0 = max(0, self._held_qos0 - 1)
                continue
            key = (h.generation, h.mid)
            if key not in self._held:
                continue
            self._held.discard(key)
            if send and h.generation == self._generation and self.connected:
                self._client.ack(h.mid, h.qos)
                sent += 1
        self._window_changed()
        if self._want_read() and not self._reading and not self._resume_soon and self._loop is not None:
            self._resume_soon = True
            self._loop.call_soon(self._resume)
        return sent

    def pause(self) -> None:
        """Stop reading from the broker (shutdown), for good: acknowledgements can still
        be sent, and freeing the window does not resume reading."""
        self._stopped = True
        if self._loop is not None and self._sock is not None:
            self._sync_reader()

    def drop(self) -> None:
        """Disconnect now, keeping the session (this instance lost its session's lock):
        ``run`` connects again once the gate lets it."""
        if self.connected:
            self._client.disconnect()

    async def run(self, done: asyncio.Event) -> None:
        """Stay connected until ``done`` is set, then disconnect (keeping the session)."""
        self._loop = asyncio.get_running_loop()
        self._backoff.reset()
        while not done.is_set():
            if not self._room.is_set():
                # A connection lost while the window was full (a pause longer than the
                # keepalive): connect again only once there is room to read the CONNACK.
                log.info("receive window full (%d messages held): reconnecting once some are committed",
                         self.unacked)
                await self._wait_room(done)
                continue
            if self._gate is not None:
                gate = asyncio.ensure_future(self._gate())
                finished = asyncio.ensure_future(done.wait())
                await asyncio.wait({gate, finished}, return_when=asyncio.FIRST_COMPLETED)
                gate.cancel()
                finished.cancel()
                if done.is_set():
                    break
            self._connected_evt.clear()
            self._disconnected_evt.clear()
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self._session_expiry
            props.ReceiveMaximum = self._receive_maximum
            connect = functools.partial(
                self._client.connect, self._host, self._port, self._keepalive,
                clean_start=False, properties=props,
            )
            try:
                # The TCP (and TLS) handshake blocks: keep it off the event loop.
                await self._loop.run_in_executor(None, connect)
            except (OSError, ssl.SSLError) as exc:
                log.warning("cannot reach broker %s:%s: %s", self._host, self._port, exc)
            else:
                lost = asyncio.ensure_future(self._disconnected_evt.wait())
                finished = asyncio.ensure_future(done.wait())
                await asyncio.wait({lost, finished}, return_when=asyncio.FIRST_COMPLETED)
                lost.cancel()
                finished.cancel()
                if self.connected:
                    self._backoff.reset()  # a working connection starts the next streak afresh
                if done.is_set():
                    break
            # Jittered: reconnecting instances do not storm a broker that restarted.
            await self._interruptible_sleep(self._backoff.next_delay(), done)
        await self._disconnect()

    async def _wait_room(self, done: asyncio.Event) -> None:
        room = asyncio.ensure_future(self._room.wait())
        finished = asyncio.ensure_future(done.wait())
        await asyncio.wait({room, finished}, return_when=asyncio.FIRST_COMPLETED)
        room.cancel()
        finished.cancel()

    async def _interruptible_sleep(self, seconds: float, done: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), seconds)

    async def _disconnect(self) -> None:
        self._leaving = True  # our own disconnect: not worth a warning
        if self.connected:
            self._disconnected_evt.clear()
            props = None
            if self.discard_session:
                props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = 0
            self._client.disconnect(properties=props)
            try:
                await asyncio.wait_for(self._disconnected_evt.wait(), 5)
            except TimeoutError:
                log.warning("broker did not confirm the disconnect")
        if self._misc is not None:
            self._misc.cancel()
        self.connected = self.subscribed = False
