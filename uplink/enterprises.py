"""Who each enterprise is, for one target: the ``enterprises`` table read by SQL (the
uplink does not import the package that loads it) and made into
:class:`~uplink.adapters.Enterprise` values.

An enterprise missing from the registry still delivers: it registers with the target's
``region`` setting or the region its credit code spells, and that fallback is logged
once per target and enterprise, so an operator learns the registry lacks it without a
line every round.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import asyncpg

from config.settings import TargetSettings
from uplink.adapters import Enterprise, enterprise_from_registry
from uplink.metrics import UplinkMetrics

__all__ = ["EnterpriseDirectory"]

# The JSON columns as text: the pool has no JSON codec, and json.loads is the one
# reading that does not depend on one.
_LOOKUP = """
SELECT enterprise, name, region, profile::text AS profile, targets::text AS targets,
       secrets::text AS secrets
FROM enterprises WHERE enterprise = ANY($1::text[])
"""


class EnterpriseDirectory:
    """One target's view of the enterprise registry."""

    def __init__(self, pool: asyncpg.Pool, target: str, settings: TargetSettings, *,
                 metrics: UplinkMetrics) -> None:
        self._pool = pool
        self._target = target
        self._settings = settings
        self._metrics = metrics
        self._fallback_said: set[str] = set()

    async def lookup(self, codes: Sequence[str]) -> dict[str, Enterprise]:
        """An :class:`Enterprise` for every code, from the registry when it has the code."""
        rows = {r["enterprise"]: r for r in await self._pool.fetch(_LOOKUP, list(codes))}
        found: dict[str, Enterprise] = {}
        for code in codes:
            row = rows.get(code)
            if row is None:
                found[code] = enterprise_from_registry(code, self._settings, self._target)
                if code not in self._fallback_said:
                    self._fallback_said.add(code)
                    self._metrics.not_in_registry(self._target, code, found[code].region)
                continue
            self._fallback_said.discard(code)  # said again if it leaves the registry later
            found[code] = enterprise_from_registry(
                code, self._settings, self._target, name=row["name"], region=row["region"],
                profile=json.loads(row["profile"]), targets=json.loads(row["targets"]),
                secrets=json.loads(row["secrets"]))
        return found
