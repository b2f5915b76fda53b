"""Uplink: forwards ``consumption`` periods to the provincial and national platforms.
The service constructs :class:`~uplink.stage.Uplink`; docs/uplink.md describes targets,
flavours, schedule, outbox, retry rules, the mock platform and the metrics."""

from uplink.stage import Uplink

__all__ = ["Uplink"]
