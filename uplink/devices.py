"""Registration and item configuration of each enterprise at one target.

An enterprise registers once per process (the platform's answer is kept in
``uplink_device``) and sends its item configuration before its first data and again
whenever the set of items changes.  Both are forgotten when a data request's answer
suggests the platform forgot the device, so the next round does them again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time as _time
from collections.abc import Sequence

from config.settings import TargetSettings
from uplink.adapters import Adapter, Registration
from uplink.errors import RejectedError, RetryableError
from uplink.metrics import UplinkMetrics
from uplink.outbox import ItemRow, Outbox
from uplink.records import TOTAL_CODE, ItemConfig, Record, energy_of, scope_of
from uplink.schedule import Clock

__all__ = ["Devices"]

_TOTAL_NAME = "综合能耗"


def call_outcome(exc: Exception | None) -> str:
    """The ``outcome`` label of a platform call that ended with ``exc`` (None: success)."""
    if isinstance(exc, RetryableError):
        return "down" if exc.transport else "retry"
    return "rejected" if exc is not None else "ok"


class Devices:
    """What one target knows of each enterprise's device, in this process."""

    def __init__(self, settings: TargetSettings, *, adapter: Adapter, outbox: Outbox,
                 metrics: UplinkMetrics, clock: Clock) -> None:
        self._name = outbox.target
        self._settings = settings
        self._adapter = adapter
        self._outbox = outbox
        self._metrics = metrics
        self._clock = clock
        self._registrations: dict[str, Registration] = {}
        self._configured: dict[str, tuple[str, frozenset[str]]] = {}  # hash, data codes

    async def ready(self, enterprise: str, records: Sequence[Record], items: Sequence[ItemRow],
                    sem: asyncio.Semaphore) -> Registration:
        """Registered, and configured for these records' data codes.  A failure raises
        :class:`RetryableError` (the records wait) after saving it as the device's
        ``last_error``; a refusal is turned into one too, with the reason ``register``
        or ``config``: it is not the records' fault."""
        stage = "register"
        try:
            registration = await self._registration(enterprise, sem)
            stage = "config"
            await self._configure(enterprise, registration, records, items, sem)
        except RetryableError as exc:
            await self._failed(enterprise, f"{stage}: {exc}")
            raise
        except RejectedError as exc:
            await self._failed(enterprise, f"{stage}: {exc}")
            raise RetryableError(stage, str(exc)) from exc
        return registration

    def forget(self, enterprise: str) -> None:
        """Register and configure again before the enterprise's next data."""
        self._registrations.pop(enterprise, None)
        self._configured.pop(enterprise, None)

    async def _registration(self, enterprise: str, sem: asyncio.Semaphore) -> Registration:
        registration = self._registrations.get(enterprise)
        if registration is not None:
            return registration
        region = self._settings.region or enterprise[2:8]
        async with sem:
            t0 = _time.monotonic()
            try:
                registration = await self._adapter.register(enterprise, region)
            except (RetryableError, RejectedError) as exc:
                self._metrics.request(self._name, "register", call_outcome(exc), _time.monotonic() - t0)
                raise
            self._metrics.request(self._name, "register", "ok", _time.monotonic() - t0)
        self._registrations[enterprise] = registration
        await self._outbox.save_registration(enterprise, registration, self._clock())
        return registration

    async def _configure(self, enterprise: str, registration: Registration, records: Sequence[Record],
                         items: Sequence[ItemRow], sem: asyncio.Semaphore) -> None:
        cached = self._configured.get(enterprise)
        wanted = {r.data_code for r in records} | (set(cached[1]) if cached else set())
        configs = self._item_configs(items, wanted)
        digest = hashlib.sha256(json.dumps([c.to_wire() for c in configs], sort_keys=True,
                                           ensure_ascii=False).encode()).hexdigest()
        if cached is not None and cached[0] == digest:
            return
        async with sem:
            t0 = _time.monotonic()
            try:
                await self._adapter.configure(enterprise, registration, configs)
            except (RetryableError, RejectedError) as exc:
                self._metrics.request(self._name, "config", call_outcome(exc), _time.monotonic() - t0)
                raise
            self._metrics.request(self._name, "config", "ok", _time.monotonic() - t0)
        self._configured[enterprise] = (digest, frozenset(c.data_code for c in configs))
        await self._outbox.save_config(enterprise, digest, len(configs), self._clock())

    def _item_configs(self, items: Sequence[ItemRow], wanted: set[str]) -> list[ItemConfig]:
        """The enterprise's items, its total, and any code being sent that the items
        registry does not know (the platform wants every data code configured)."""
        total = self._settings.total_code
        configs = {total: ItemConfig(total, _TOTAL_NAME, "0000", 1, 4, "cumulative")}
        for it in items:
            code = total if it.code == TOTAL_CODE else it.code
            if code != total:
                configs[code] = ItemConfig(code, it.name or code, it.energy, it.scope, it.input_type,
                                           it.kind, it.min, it.max)
        for code in sorted(wanted - configs.keys()):
            configs[code] = ItemConfig(code, code, energy_of(code), scope_of(code), 4)
        return [configs[c] for c in sorted(configs)]

    async def _failed(self, enterprise: str, error: str) -> None:
        self._metrics.device_error(self._name, enterprise, error)
        await self._outbox.save_device_error(enterprise, error[:500], self._clock())
