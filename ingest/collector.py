"""The MQTT collector: paho-mqtt driven from the asyncio event loop.

- MQTT 5, fixed client id, clean start off and a session expiry: the broker keeps our
  subscriptions and queues messages while we are away.
- QoS 1 with manual acknowledgement: a message is acknowledged only when the service
  says its rows are committed (``ack``).  The Receive Maximum we announce bounds how
  many unacknowledged messages the broker sends us, so a slow database stops intake
  at the broker instead of growing our memory.
- Reconnects with jittered exponential backoff.  Handles of a previous connection are
  never acknowledged on a new one (packet ids are reused): the broker redelivers those
  messages and the database keys absorb the duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from ingest.topics import subscriptions

__all__ = ["Collector", "Handle", "Message"]

log = logging.getLogger("nhjc.collector")


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
    def __init__(
        self,
        *,
        url: str,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        keepalive_s: int = 30,
        receive_maximum: int = 2000,
        session_expiry_s: int = 7 * 86400,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        share_group: str = "",
        on_state: Any = None,
    ) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self._keepalive = keepalive_s
        self._receive_maximum = receive_maximum
        self._session_expiry = session_expiry_s
        self._backoff = (reconnect_min_s, reconnect_max_s)
        self._topics = subscriptions(share_group)
        self._on_state = on_state or (lambda connected: None)
        self.queue: asyncio.Queue[Message] = asyncio.Queue()
        self.unacked = 0
        self.connected = False
        self._generation = 0
        self._paused = False
        self._sock: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected_evt = asyncio.Event()
        self._disconnected_evt = asyncio.Event()
        self._misc: asyncio.Task[None] | None = None

        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
            reconnect_on_failure=False,  # we reconnect ourselves, with backoff
        )
        if username is not None:
            c.username_pw_set(username, password)
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
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_register_write
        c.on_socket_unregister_write = self._on_unregister_write
        self._client = c

    # --- socket plumbing: paho reads and writes when asyncio says the socket is ready ---
    def _threadsafe(self, fn: Any, *args: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._threadsafe(self._add_reader, sock)

    def _add_reader(self, sock: Any) -> None:
        assert self._loop is not None
        self._sock = sock
        if not self._paused:
            self._loop.add_reader(sock, self._client.loop_read)
        if self._misc is None or self._misc.done():
            self._misc = self._loop.create_task(self._misc_loop(), name="mqtt-misc")

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)
        self._sock = None

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
        self.unacked = 0
        self.connected = True
        self._on_state(True)
        log.info("connected to %s:%s (session present: %s)", self._host, self._port, flags.session_present)
        client.subscribe([(t, SubscribeOptions(qos=1)) for t in self._topics])
        self._connected_evt.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if self.connected:
            log.warning("disconnected from broker: %s", reason)
        self.connected = False
        self._on_state(False)
        self._disconnected_evt.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        received = time.time_ns() // 1000
        handle = Handle(self._generation, msg.mid, msg.qos)
        if msg.qos > 0:
            self.unacked += 1
        self.queue.put_nowait(Message(msg.topic, msg.payload, received, handle))

    # --- public ---
    def ack(self, handles: Iterable[Handle]) -> int:
        """Acknowledge messages whose rows are committed; returns how many were sent."""
        sent = 0
        for h in handles:
            if h.qos == 0:
                continue
            if h.generation == self._generation and self.connected:
                self._client.ack(h.mid, h.qos)
                self.unacked -= 1
                sent += 1
        return sent

    def pause(self) -> None:
        """Stop reading from the broker (shutdown): acknowledgements can still be sent."""
        self._paused = True
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock)

    async def run(self, done: asyncio.Event) -> None:
        """Stay connected until ``done`` is set, then disconnect (keeping the session)."""
        self._loop = asyncio.get_running_loop()
        delay = self._backoff[0]
        while not done.is_set():
            self._connected_evt.clear()
            self._disconnected_evt.clear()
            props = Properties(PacketTypes.CONNECT)
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
                    delay = self._backoff[0]  # a working connection resets the backoff
                if done.is_set():
                    break
            # Full jitter: spread reconnecting instances so a broker restart is not stormed.
            await self._interruptible_sleep(random.uniform(0, delay), done)
            delay = min(delay * 2, self._backoff[1])
        await self._disconnect()

    async def _interruptible_sleep(self, seconds: float, done: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), seconds)

    async def _disconnect(self) -> None:
        if self.connected:
            self._disconnected_evt.clear()
            self._client.disconnect()
            try:
                await asyncio.wait_for(self._disconnected_evt.wait(), 5)
            except TimeoutError:
                log.warning("broker did not confirm the disconnect")
        if self._misc is not None:
            self._misc.cancel()
        self.connected = False
