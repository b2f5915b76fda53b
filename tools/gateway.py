"""A gateway driven by hand: it publishes exactly the items and readings frames it is
given, at QoS 1, on a real broker (the simulator in :mod:`tools.sim` makes up its own).
Also the valid enterprise codes and item records such a gateway is given."""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ingest.credit_code import check_character

__all__ = ["Gateway", "enterprise_code", "item"]


def enterprise_code(n: int, region: str = "340100") -> str:
    """A valid credit code, distinct per n."""
    first17 = f"91{region}MA{n:07d}"[:17]
    return first17 + check_character(first17)


def item(code: str, kind: str = "cumulative", **extra: Any) -> dict[str, Any]:
    """An item record of the gateway's items message (energy code from the item code)."""
    return {"code": code, "name": f"item {code}", "energy": code[13:17],
            "unit": "kWh", "kind": kind, **extra}


class Gateway:
    """A gateway publishing at QoS 1 on a real broker."""

    def __init__(self, url: str, enterprise: str, gateway: str = "gw-1") -> None:
        parts = urlsplit(url)
        self.enterprise, self.gateway = enterprise, gateway
        self.retained: set[str] = set()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"gw-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        self.client.max_queued_messages_set(0)
        self.client.max_inflight_messages_set(100)
        self.client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
        self.client.loop_start()

    def topic(self, kind: str, enterprise: str | None = None) -> str:
        return f"nhjc/v1/{enterprise or self.enterprise}/{self.gateway}/{kind}"

    def publish_raw(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        if retain:
            self.retained.add(topic)
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def items(self, items: list[dict[str, Any]]) -> None:
        self.publish_raw(self.topic("items"), json.dumps({"v": 1, "items": items}), retain=True)

    def readings(self, readings: list[dict[str, Any]], seq: int | None = None) -> None:
        frame: dict[str, Any] = {"v": 1, "readings": readings}
        if seq is not None:
            frame["seq"] = seq
        self.publish_raw(self.topic("readings"), json.dumps(frame))

    def close(self) -> None:
        for topic in self.retained:  # leave the shared broker as we found it
            self.client.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)
        self.client.loop_stop()
        self.client.disconnect()
