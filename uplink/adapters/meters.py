"""Measuring instruments at the platforms: what one call carries, and what an adapter
that takes instruments offers.

Three kinds of rows leave the instrument outbox (:mod:`uplink.meter_outbox`):
``gauge`` (the instrument record), ``verify`` (one verification period) and
``replace`` (one recorded replacement).  The outbox builds each one's object from the
instrument tables; the adapter decides the call, its operation and its envelope.

An adapter takes instruments when it has ``meter_kinds`` (the kinds its platform has a
call for) and :meth:`MeterSender.send_meter`.  Adapters without them (Shandong, an
adapter handed in by a test) take none: nothing is queued for their target.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, Protocol, runtime_checkable

from uplink.adapters import Enterprise, Registration

__all__ = ["FLAVOUR_METER_KINDS", "METER_KINDS", "MeterCall", "MeterKind", "MeterReply", "MeterSender", "operation"]

MeterKind = Literal["gauge", "verify", "replace"]
METER_KINDS: tuple[MeterKind, ...] = ("gauge", "verify", "replace")

# What each flavour's platform has a call for.  gbt37947: the instrument object to
# centerMeteringDataUrl, which carries its verification dates itself; shandong: none.
FLAVOUR_METER_KINDS: Mapping[str, frozenset[MeterKind]] = MappingProxyType({
    "yunnan": frozenset(METER_KINDS),
    "gbt37947": frozenset({"gauge"}),
    "shandong": frozenset(),
})


def operation(kind: str, *, retired: bool, data_index: str | None) -> str | None:
    """Yunnan's gaugeConfigure operation for a gauge row: ``delete`` for an instrument
    retired with no replacement (None when the platform never had it: nothing to
    delete), ``add`` when the platform gave no dataIndex yet, else ``update``.  None
    for the other kinds, which have no operation."""
    if kind != "gauge":
        return None
    if retired:
        return "delete" if data_index is not None else None
    return "add" if data_index is None else "update"


@dataclass(frozen=True, slots=True)
class MeterCall:
    """One instrument row to send.  ``data_index``: the platform's index of the
    instrument (``ser_no``) when it gave one; ``old_data_index``: of the replaced
    instrument (replacements)."""

    kind: MeterKind
    enterprise: str
    ser_no: str
    ref: str
    payload: Mapping[str, Any]
    retired: bool = False
    data_index: str | None = None
    old_data_index: str | None = None


@dataclass(frozen=True, slots=True)
class MeterReply:
    """What the platform answered: ``sent`` False when there was nothing to send (a
    delete of what the platform never had, a call the platform does not know);
    ``data_index`` the index it gave (add), ``deleted`` True when it forgot it."""

    sent: bool = True
    data_index: str | None = None
    deleted: bool = False


@runtime_checkable
class MeterSender(Protocol):
    meter_kinds: frozenset[MeterKind]

    async def send_meter(self, enterprise: Enterprise, registration: Registration,
                         call: MeterCall) -> MeterReply: ...
