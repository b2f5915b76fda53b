"""MQTT topics of the wire contract, version 1: ``nhjc/v1/{enterprise}/{gateway}/{readings|items|status}``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ingest.credit_code import is_valid

__all__ = ["KINDS", "Topic", "TopicError", "parse_topic", "subscriptions"]

KINDS = ("readings", "items", "status")
_TOPIC = re.compile(r"^nhjc/v1/([^/]+)/([A-Za-z0-9_-]{1,32})/(readings|items|status)$")


class TopicError(ValueError):
    """The topic is not one of ours; ``reason`` is the quarantine reason code."""

    def __init__(self, reason: str, detail: str, enterprise: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.enterprise = enterprise


@dataclass(frozen=True, slots=True)
class Topic:
    enterprise: str
    gateway: str
    kind: str


def parse_topic(topic: str) -> Topic:
    m = _TOPIC.match(topic)
    if m is None:
        raise TopicError("bad_topic", f"topic {topic[:200]!r} is not nhjc/v1/{{enterprise}}/{{gateway}}/{{kind}}")
    enterprise, gateway, kind = m.groups()
    if not is_valid(enterprise):
        raise TopicError(
            "bad_enterprise",
            f"enterprise {enterprise[:40]!r} is not a GB 32100 credit code (length, alphabet or check character)",
            enterprise[:40],
        )
    return Topic(enterprise, gateway, kind)


def subscriptions(shared_group: str = "") -> list[str]:
    """Topic filters to subscribe; readings are shared between instances, items are not
    (every instance keeps its registry cache current)."""
    readings = "nhjc/v1/+/+/readings"
    if shared_group:
        readings = f"$share/{shared_group}/{readings}"
    return [readings, "nhjc/v1/+/+/items"]
