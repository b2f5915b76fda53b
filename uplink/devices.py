"""Registration and item configuration of each enterprise at one target.

An enterprise registers once per process (the platform's answer is kept in
``uplink_device``) and sends its item configuration before its first data and again
whenever the set of items, the enterprise's registry entry or the platform's
dictionary version changes (checked once a day, when the registration gave a
configuration URL and a dictionary URL).  When the platform says a registration is
stale (:class:`~uplink.errors.RefreshError`), :meth:`Devices.refresh` registers anew.

A registration or configuration the platform refuses, or cannot give, makes the
enterprise's records wait: the enterprise is not asked again before its own backoff
(the target's ``backoff_min_s`` doubling to ``backoff_max_s``) has passed, however many
of its records come due meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time as _time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from config.settings import TargetSettings
from runtime.backoff import Backoff
from uplink.adapters import Adapter, Enterprise, Registration
from uplink.errors import RefreshError, RejectedError, RetryableError, UplinkError
from uplink.metrics import UplinkMetrics
from uplink.outbox import ItemRow, Outbox
from uplink.records import TOTAL_CODE, ItemConfig, Record, energy_of, scope_of
from uplink.schedule import Clock

__all__ = ["DICTIONARY_CHECK", "Devices", "call_outcome"]

_TOTAL_NAME = "综合能耗"
DICTIONARY_CHECK = timedelta(days=1)  # how often the dictionary version is asked for


def call_outcome(exc: Exception | None) -> str:
    """The ``outcome`` label of a platform call that ended with ``exc`` (None: success)."""
    if isinstance(exc, RetryableError):
        return "down" if exc.transport else "retry"
    if isinstance(exc, RefreshError):
        return "refresh"
    return "rejected" if exc is not None else "ok"


@dataclass
class _Refused:
    """An enterprise whose registration or configuration failed: asked again at ``until``."""

    backoff: Backoff
    until: datetime
    stage: str
    error: str


class Devices:
    """What one target knows of each enterprise's device, in this process."""

    def __init__(self, settings: TargetSettings, *, adapter: Adapter, outbox: Outbox,
                 metrics: UplinkMetrics, clock: Clock, rng: random.Random) -> None:
        self._name = outbox.target
        self._settings = settings
        self._adapter = adapter
        self._outbox = outbox
        self._metrics = metrics
        self._clock = clock
        self._rng = rng
        self._registrations: dict[str, Registration] = {}
        self._registered_as: dict[str, Enterprise] = {}
        self._configured: dict[str, tuple[str, frozenset[str]]] = {}  # hash, data codes
        self._dictionary: dict[str, str | None] = {}     # the last dictionary version seen
        self._next_dictionary: dict[str, datetime] = {}  # when to ask for it again
        self._refused: dict[str, _Refused] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def ready(self, enterprise: Enterprise, records: Sequence[Record], items: Sequence[ItemRow],
                    sem: asyncio.Semaphore, *, configure: bool = True) -> Registration:
        """Registered, and configured for these records' data codes (``configure``
        False: registered only, for instrument calls, which need no item
        configuration).  A failure raises
        :class:`RetryableError` (the records wait) after saving it as the device's
        ``last_error``; a refusal is turned into one too, with the reason ``register``
        or ``config``: it is not the records' fault."""
        code = enterprise.code
        refused = self._refused.get(code)
        now = self._clock()
        if refused is not None and now < refused.until:
            # Not asked again before its backoff: the records wait until then.
            raise RetryableError(refused.stage, refused.error,
                                 retry_after_s=(refused.until - now).total_seconds())
        async with self._locks.setdefault(code, asyncio.Lock()):
            stage = "register"
            try:
                if self._registered_as.get(code, enterprise) != enterprise:
                    self.forget(code)  # the registry entry changed: register and configure anew
                registration = await self._registration(enterprise, sem)
                if configure:
                    stage = "config"
                    await self._check_dictionary(enterprise, registration, sem)
                    await self._configure(enterprise, registration, records, items, sem)
            except RetryableError as exc:
                await self._failed(code, f"{stage}: {exc}")
                if not exc.pauses_target:
                    self._refuse(code, stage, str(exc))
                raise
            except (RejectedError, RefreshError) as exc:
                if isinstance(exc, RefreshError):
                    self.forget(code)
                await self._failed(code, f"{stage}: {exc}")
                self._refuse(code, stage, str(exc))
                raise RetryableError(stage, str(exc)) from exc
        self._refused.pop(code, None)
        return registration

    async def refresh(self, enterprise: Enterprise, stale: Registration, records: Sequence[Record],
                      items: Sequence[ItemRow], sem: asyncio.Semaphore, *, configure: bool = True) -> Registration:
        """The platform refused a request made with ``stale``: forget it (unless a
        request of the same enterprise already did) and get ready again."""
        async with self._locks.setdefault(enterprise.code, asyncio.Lock()):
            if self._registrations.get(enterprise.code) is stale:
                self.forget(enterprise.code)
        return await self.ready(enterprise, records, items, sem, configure=configure)

    def forget(self, enterprise: str) -> None:
        """Register and configure again before the enterprise's next data."""
        self._registrations.pop(enterprise, None)
        self._registered_as.pop(enterprise, None)
        self._configured.pop(enterprise, None)

    def _refuse(self, enterprise: str, stage: str, error: str) -> None:
        s = self._settings
        refused = self._refused.get(enterprise)
        backoff = refused.backoff if refused is not None else Backoff(s.backoff_min_s, s.backoff_max_s, self._rng)
        until = self._clock() + timedelta(seconds=backoff.next_delay())
        self._refused[enterprise] = _Refused(backoff, until, stage, error)

    async def _registration(self, enterprise: Enterprise, sem: asyncio.Semaphore) -> Registration:
        registration = self._registrations.get(enterprise.code)
        if registration is not None:
            return registration
        async with sem:
            t0 = _time.monotonic()
            try:
                registration = await self._adapter.register(enterprise)
            except UplinkError as exc:
                self._metrics.request(self._name, "register", call_outcome(exc), _time.monotonic() - t0)
                raise
            self._metrics.request(self._name, "register", "ok", _time.monotonic() - t0)
        self._registrations[enterprise.code] = registration
        self._registered_as[enterprise.code] = enterprise
        await self._outbox.save_registration(enterprise.code, registration, self._clock())
        return registration

    async def _check_dictionary(self, enterprise: Enterprise, registration: Registration,
                                sem: asyncio.Semaphore) -> None:
        """Once a day, the platform's dictionary version; when it changed, the
        configuration is sent again.  Only where there is a configuration to send."""
        if registration.info_url is None or registration.dic_version_url is None:
            return
        code, now = enterprise.code, self._clock()
        if now < self._next_dictionary.get(code, now):
            return
        async with sem:
            t0 = _time.monotonic()
            try:
                version = await self._adapter.dictionary_version(enterprise, registration)
            except UplinkError as exc:
                # Data goes on with the configuration sent; ask again after the backoff.
                self._metrics.request(self._name, "dictionary", call_outcome(exc), _time.monotonic() - t0)
                self._metrics.device_error(self._name, code, f"dictionary version: {exc}")
                self._next_dictionary[code] = now + timedelta(seconds=self._settings.backoff_max_s)
                return
            self._metrics.request(self._name, "dictionary", "ok", _time.monotonic() - t0)
        self._next_dictionary[code] = now + DICTIONARY_CHECK
        if code in self._dictionary and self._dictionary[code] != version:
            self._metrics.dictionary_changed(self._name, code, self._dictionary[code], version)
            self._configured.pop(code, None)
        self._dictionary[code] = version

    async def _configure(self, enterprise: Enterprise, registration: Registration, records: Sequence[Record],
                         items: Sequence[ItemRow], sem: asyncio.Semaphore) -> None:
        code = enterprise.code
        cached = self._configured.get(code)
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
            except UplinkError as exc:
                self._metrics.request(self._name, "config", call_outcome(exc), _time.monotonic() - t0)
                raise
            self._metrics.request(self._name, "config", "ok", _time.monotonic() - t0)
        self._configured[code] = (digest, frozenset(c.data_code for c in configs))
        await self._outbox.save_config(code, digest, len(configs), self._clock())

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
