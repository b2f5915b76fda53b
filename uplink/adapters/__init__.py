"""Protocol adapters: each knows how one platform flavour wants to be spoken to, nothing
else.  The runner owns the outbox, schedule, retries, registrations and metrics.

The contract the runner relies on
---------------------------------

``records_per_call: int | None``
    The most records one :meth:`Adapter.write` takes (``None``: the target's
    ``batch_size``).
``async register(enterprise) -> Registration``
    Whatever the flavour needs before anything else: the register call (device id,
    URLs, upload time, Shandong's field key) or Yunnan's token request.  The runner
    calls it once per enterprise and process, keeps the result, and calls it again
    only after a :class:`~uplink.errors.RefreshError`.
``async configure(enterprise, registration, items)``
    The item configuration, sent after registering and again when it changes or the
    dictionary version changes (returns at once for flavours that have none).
``async write(enterprise, registration, records, uploaded_at)``
    Deliver at most ``records_per_call`` records.  Returning means the platform
    acknowledged every one of them.
``async dictionary_version(enterprise, registration) -> str | None``
    The platform's dictionary version (``loadDicVersionURL``), checked daily: when it
    differs from the last one, the runner sends the configuration again.  ``None``
    when the flavour or the registration has no such URL.

Every call either returns or raises one of :mod:`uplink.errors`:

* :class:`~uplink.errors.RetryableError`: try later with backoff (``pauses_target``
  says whether the whole target should pause);
* :class:`~uplink.errors.RefreshError`: forget the registration, register (and
  configure) again, retry the same request once; a second RefreshError on that retry
  becomes ``exc.exhausted()``, a rejection;
* :class:`~uplink.errors.RejectedError`: the records are refused; keep them, count
  them by ``reason``, never resend them as they are.  From ``register`` or
  ``configure`` it means the enterprise's records wait (it is not their fault).

Adapters keep no state the runner needs to know about (Yunnan renews its token
inside ``write`` before it expires); they never loop and never sleep.

Adding a province's flavour is one module here plus one entry in :data:`FLAVOURS`.
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time
from types import MappingProxyType
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import aiohttp
from pydantic import SecretStr

from config.settings import TargetSettings
from uplink.records import ItemConfig, Record

__all__ = [
    "FLAVOURS", "Adapter", "Enterprise", "Registration", "enterprise_from_registry", "make_adapter",
]


@dataclass(frozen=True, slots=True)
class Enterprise:
    """Who an enterprise is, as one target sees it: from the enterprise registry, with
    the target's settings filling what the registry does not say."""

    code: str                       # unified social credit code
    name: str
    region: str                     # county-level administrative code sent at registration
    profile: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    pin: SecretStr | None = field(default=None, repr=False)     # Yunnan
    secret: SecretStr | None = field(default=None, repr=False)  # Yunnan

    def __hash__(self) -> int:
        return hash(self.code)


def enterprise_from_registry(code: str, settings: TargetSettings, target: str, *,
                             name: str | None = None, region: str | None = None,
                             profile: Mapping[str, Any] | None = None,
                             targets: Mapping[str, Any] | None = None,
                             secrets: Mapping[str, Any] | None = None) -> Enterprise:
    """The :class:`Enterprise` for ``target`` from a row of the ``enterprises`` table
    (its columns as keywords; all ``None`` when the registry has no such enterprise).

    Region: the registry's override for this target, else the registry's region, else
    the target's ``region`` setting, else characters 3-8 of the credit code (the caller
    logs that fallback once).  PIN and secret: the registry's for this target, else the
    target's settings."""
    own = (targets or {}).get(target) or {}
    creds = (secrets or {}).get(target) or {}
    pin, secret = creds.get("pin"), creds.get("secret")
    return Enterprise(
        code=code,
        name=name or code,
        region=own.get("region") or region or settings.region or code[2:8],
        profile=MappingProxyType(dict(profile or {})),
        pin=SecretStr(pin) if isinstance(pin, str) else settings.pin,
        secret=SecretStr(secret) if isinstance(secret, str) else settings.secret,
    )


@dataclass(frozen=True, slots=True)
class Registration:
    """What a platform told us about one enterprise's device.  Every URL of the reply is
    kept (``None`` when the reply has none); the secrets are left out of ``repr``."""

    device_id: str | None = None
    info_url: str | None = None            # centerInfoURL: item configuration
    data_url: str | None = None            # centerDataURL: data
    upload_time: time | None = None        # uploadTime: the daily upload time
    dic_version_url: str | None = None     # loadDicVersionURL: dictionary version
    metering_url: str | None = None        # centerMeteringDataUrl: measuring instruments
    # Every other URL of the reply (download URLs...), by the reply's key.
    other_urls: tuple[tuple[str, str], ...] = ()
    secret_key: bytes | None = field(default=None, repr=False)  # Shandong: the field key
    token: str | None = field(default=None, repr=False)         # Yunnan: the bearer token
    token_expires_in: float | None = None  # Yunnan: akExpiresIn, seconds
    token_valid_at: datetime | None = None  # Yunnan: akValidAt, as the platform wrote it (local)
    token_renew_at: float | None = None    # Yunnan: renew after this monotonic time
    platform_url: str | None = None        # Yunnan: platformURL

    def url(self, key: str) -> str | None:
        """One of :attr:`other_urls` by the reply's key."""
        return dict(self.other_urls).get(key)


class Adapter(Protocol):
    records_per_call: int | None

    async def register(self, enterprise: Enterprise) -> Registration: ...

    async def configure(self, enterprise: Enterprise, registration: Registration,
                        items: Sequence[ItemConfig]) -> None: ...

    async def write(self, enterprise: Enterprise, registration: Registration,
                    records: Sequence[Record], uploaded_at: datetime) -> None: ...

    async def dictionary_version(self, enterprise: Enterprise, registration: Registration) -> str | None: ...


Factory = Callable[..., Adapter]


def make_adapter(settings: TargetSettings, session: aiohttp.ClientSession, *, tz: ZoneInfo,
                 clock: Callable[[], float] = _time.monotonic) -> Adapter:
    """The adapter for a target's flavour, speaking through ``session`` (whose
    connector carries the target's TLS context and whose timeout is the target's).
    ``clock`` is monotonic seconds (Yunnan's token renewal)."""
    try:
        factory = FLAVOURS[settings.flavour]
    except KeyError:
        raise ValueError(f"unknown uplink flavour {settings.flavour!r}") from None
    return factory(settings, session, tz=tz, clock=clock)


def _gbt37947(settings: TargetSettings, session: aiohttp.ClientSession, *, tz: ZoneInfo,
              clock: Callable[[], float]) -> Adapter:
    from uplink.adapters.gbt37947 import Gbt37947Adapter

    return Gbt37947Adapter(settings, session=session, tz=tz)


def _shandong(settings: TargetSettings, session: aiohttp.ClientSession, *, tz: ZoneInfo,
              clock: Callable[[], float]) -> Adapter:
    from uplink.adapters.shandong import ShandongAdapter

    return ShandongAdapter(settings, session=session, tz=tz)


def _yunnan(settings: TargetSettings, session: aiohttp.ClientSession, *, tz: ZoneInfo,
            clock: Callable[[], float]) -> Adapter:
    from uplink.adapters.yunnan import YunnanAdapter

    return YunnanAdapter(settings, session=session, tz=tz, clock=clock)


FLAVOURS: Mapping[str, Factory] = MappingProxyType(
    {"gbt37947": _gbt37947, "shandong": _shandong, "yunnan": _yunnan})
