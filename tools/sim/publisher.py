"""Publishing over MQTT with paho: QoS 1, one connection per gateway (up to a limit).

A gateway is one MQTT client with its own last will (``offline``, retained, on its status
topic), so each connection carries the will of the first gateway it serves.  With more
gateways than connections (load tests), gateways share connections round-robin and only the
first gateway of each has a will.

Publishing blocks while a connection has ``window`` messages unacknowledged, so a slow
broker slows the simulator down instead of filling its memory.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

__all__ = ["MqttPublisher", "NullPublisher", "PublishError", "Publisher"]

log = logging.getLogger("nhjc.simulate")


class PublishError(RuntimeError):
    """The broker could not be reached or refused us; the message says which and why."""


class Publisher(Protocol):
    def connect(self, wills: Sequence[tuple[str, bytes]]) -> None: ...
    def publish(self, conn: int, topic: str, payload: bytes, retain: bool) -> None: ...
    def flush(self, timeout: float) -> bool: ...
    def close(self) -> None: ...
    @property
    def connections(self) -> int: ...


class NullPublisher:
    """Publishes nowhere: for --dry-run (generation speed, counters) and offline use."""

    def __init__(self) -> None:
        self._n = 1

    @property
    def connections(self) -> int:
        return self._n

    def connect(self, wills: Sequence[tuple[str, bytes]]) -> None:
        self._n = max(1, len(wills))

    def publish(self, conn: int, topic: str, payload: bytes, retain: bool) -> None:
        pass

    def flush(self, timeout: float) -> bool:
        return True

    def close(self) -> None:
        pass


class _Conn:
    def __init__(self, client: mqtt.Client, window: int) -> None:
        self.client = client
        self.window = window
        self.outstanding = 0
        self.cond = threading.Condition()
        self.connected = threading.Event()
        self.error: str | None = None


class MqttPublisher:
    def __init__(
        self,
        url: str,
        *,
        connections: int = 64,
        username: str | None = None,
        password: str | None = None,
        ca_file: Path | str | None = None,
        cert_file: Path | str | None = None,
        key_file: Path | str | None = None,
        client_id: str = "nhjc-sim",
        keepalive: int = 30,
        window: int = 1000,
        connect_timeout: float = 10.0,
        abort: threading.Event | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise PublishError(f"broker URL must look like mqtt://host:port, not {url!r}")
        self.url = url
        self._host = parts.hostname
        self._port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self._tls = parts.scheme == "mqtts"
        self._max = max(1, connections)
        self._auth = (username, password)
        self._files = (ca_file, cert_file, key_file)
        # Unique per run: two simulators (or a restarted one) must not kick each other off.
        self._client_id = f"{client_id}-{uuid.uuid4().hex[:8]}"
        self._keepalive = keepalive
        self._window = window
        self._timeout = connect_timeout
        self._abort = abort or threading.Event()
        self._conns: list[_Conn] = []

    @property
    def connections(self) -> int:
        return len(self._conns)

    def connect(self, wills: Sequence[tuple[str, bytes]]) -> None:
        """One connection per will (gateway), at most ``connections``; waits for each."""
        for n, (topic, payload) in enumerate(wills[: self._max]):
            try:
                conn = self._open(n, topic, payload)
            except PublishError:
                self.close()
                raise
            self._conns.append(conn)
            deadline = time.monotonic() + self._timeout
            while not conn.connected.wait(0.05):
                if conn.error or time.monotonic() > deadline or self._abort.is_set():
                    self.close()
                    why = conn.error or f"no answer within {self._timeout:g} s"
                    raise PublishError(f"cannot connect to the broker at {self.url}: {why}")
        log.info("connected %d MQTT clients to %s", len(self._conns), self.url)

    def _open(self, n: int, will_topic: str, will_payload: bytes) -> _Conn:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{self._client_id}-{n}",
                             clean_session=True, protocol=mqtt.MQTTv311)
        conn = _Conn(client, self._window)
        client.will_set(will_topic, will_payload, qos=1, retain=True)
        if self._auth[0] is not None:
            client.username_pw_set(*self._auth)
        if self._tls:
            ca, cert, key = (str(f) if f else None for f in self._files)
            client.tls_set(ca_certs=ca, certfile=cert, keyfile=key, cert_reqs=ssl.CERT_REQUIRED)
        # paho queues beyond its in-flight window; ours (below) bounds the queue instead.
        client.max_inflight_messages_set(min(self._window, 1000))
        client.reconnect_delay_set(0.5, 10)  # type: ignore[arg-type]  # paho takes fractions of seconds too

        def on_connect(c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
            if rc.is_failure:
                conn.error = f"connection refused: {rc}"
            else:
                conn.connected.set()

        def on_disconnect(c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
            conn.connected.clear()
            if rc.is_failure:
                log.warning("MQTT client %s lost its connection (%s); paho reconnects", n, rc)

        def on_publish(c: mqtt.Client, _u: Any, _mid: int, _rc: Any, _p: Any) -> None:
            with conn.cond:
                conn.outstanding -= 1
                conn.cond.notify_all()

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish
        try:
            client.connect(self._host, self._port, keepalive=self._keepalive)
        except (OSError, ssl.SSLError) as exc:
            raise PublishError(f"cannot connect to the broker at {self.url}: {exc}") from exc
        client.loop_start()
        return conn

    def publish(self, conn: int, topic: str, payload: bytes, retain: bool) -> None:
        """QoS 1; blocks while the connection's window is full (returns early on abort)."""
        c = self._conns[conn % len(self._conns)]
        with c.cond:
            while c.outstanding >= c.window and not self._abort.is_set():
                c.cond.wait(0.2)
            c.outstanding += 1
        info = c.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            # NO_CONN: queued, goes out after the reconnect.  Anything else is lost.
            with c.cond:
                c.outstanding -= 1
            raise PublishError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")

    def flush(self, timeout: float) -> bool:
        """Wait until the broker acknowledged everything; False on timeout."""
        deadline = time.monotonic() + timeout
        for c in self._conns:
            with c.cond:
                while c.outstanding > 0:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    c.cond.wait(min(left, 0.2))
        return True

    def close(self) -> None:
        for c in self._conns:
            try:
                c.client.disconnect()
            finally:
                c.client.loop_stop()
        self._conns.clear()
