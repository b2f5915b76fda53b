"""Uplink targets pointed at a mock platform, tuned to finish quickly: fast backoff,
small batches; a Yunnan target's PIN and secret those the mock platform is started
with; and local times in the pilot province's zone."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from config.settings import TargetSettings
from tools.platform.mock import DEFAULT_PIN, DEFAULT_SECRET

__all__ = ["PIN", "SECRET", "TZ", "TZ_NAME", "local", "target"]

TZ_NAME = "Asia/Shanghai"
TZ = ZoneInfo(TZ_NAME)
SECRET = DEFAULT_SECRET
PIN = DEFAULT_PIN


def local(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    """A wall-clock time in the pilot province."""
    return datetime(year, month, day, hour, minute, second, tzinfo=TZ)


def target(url: str, **kw: Any) -> TargetSettings:
    """A target at ``url`` tuned for tests: fast backoff, small batches (``kw`` overrides)."""
    base: dict[str, Any] = {"url": url, "backoff_min_s": 1.0, "backoff_max_s": 4.0, "timeout_s": 5.0,
                            "batch_size": 50, "concurrency": 2}
    if kw.get("flavour") == "yunnan":
        base.update(pin=PIN, secret=SECRET)
    base.update(kw)
    return TargetSettings(**base)
