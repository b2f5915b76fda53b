"""The operator's HTTP endpoint: /metrics (Prometheus text), /healthz, /readyz."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["HttpEndpoint", "ListenError"]


class ListenError(Exception):
    """The endpoint cannot listen where the settings say; the message is one line."""


class HttpEndpoint:
    def __init__(self, *, host: str, port: int, registry: CollectorRegistry, ready: Callable[[], dict[str, bool]],
                 reasons: Callable[[], dict[str, str]] | None = None,
                 details: Callable[[], dict[str, object]] | None = None) -> None:
        self._host, self._port = host, port
        self._registry = registry
        self._ready = ready
        self._runner: web.AppRunner | None = None
        self._reasons = reasons
        self._details = details  # more to show, never a readiness part (e.g. the jobs owned)
        self.port: int | None = None

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _readyz(self, request: web.Request) -> web.Response:
        # {"ready": false, "broker": true, "database": false, "down": ["database"],
        #  "reasons": {"database": "probe: TimeoutError: no answer to SELECT 1 within 2s"},
        #  "owns": ["completeness", "uplink provincial"]}
        parts = self._ready()
        ok = all(parts.values())
        body: dict[str, object] = {"ready": ok, **parts}
        if self._details is not None:
            body |= self._details()
        if not ok:
            down = [name for name, up in parts.items() if not up]
            body["down"] = down
            if self._reasons is not None:
                body["reasons"] = {k: v for k, v in self._reasons().items() if k in down}
        return web.json_response(body, status=200 if ok else 503)

    async def listen(self) -> None:
        """Bind the port (``run`` does it too when not done yet): a port in use is then
        found before anything else starts."""
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            if exc.errno == errno.EADDRINUSE:
                raise ListenError(f"metrics.port {self._port} on {self._host} is in use") from None
            why = exc.strerror or str(exc)
            raise ListenError(f"metrics.host {self._host}, metrics.port {self._port}: cannot listen: {why}") from None
        self._runner = runner
        self.port = runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def run(self, stop: asyncio.Event) -> None:
        await self.listen()
        try:
            await stop.wait()
        finally:
            await self.close()
