"""Uplink: forwards ``consumption`` periods to the provincial and national platforms
(WIRE.md §3).  The service constructs :class:`~uplink.runner.Uplink`; docs/uplink.md
describes targets, flavours, schedule, outbox, retry rules, the mock platform and the
metrics."""

from uplink.runner import Uplink

__all__ = ["Uplink"]
