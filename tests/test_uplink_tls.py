"""HTTPS with mutual TLS against ``mock-platform`` run as its own process: a target with
the CA and a client certificate delivers; one without the certificate, or without the
CA, does not, and keeps its records for later."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from tests.services import ROOT
from tests.test_uplink_delivery import DUE, NOW, count, seed, uplink_for, wire_key
from tests.test_uplink_support import E1, E2, get_json, outbox, running, wait_until
from tests.tls import make_ca_and_server
from tools.clock import FakeClock
from tools.platform.targets import target

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
def tls_platform(tmp_path: Path) -> Iterator[tuple[str, dict[str, Path]]]:
    certs = make_ca_and_server(tmp_path / "pki")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.platform.mock", "--port", "0", "--name", "provincial",
         "--tls-cert", str(certs["server"]), "--tls-key", str(certs["server_key"]),
         "--tls-client-ca", str(certs["ca"])],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert " listening on https://127.0.0.1:" in line, line
        yield line.split()[-1], certs
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        proc.stdout.close()  # type: ignore[union-attr]  # a pipe left open warns when collected


async def test_mutual_tls(db: str, tls_platform: tuple[str, dict[str, Path]]) -> None:
    url, certs = tls_platform
    await seed(db)
    clock, registry = FakeClock(NOW), CollectorRegistry()
    targets = {
        "good": target(url, ca_file=certs["ca"], cert_file=certs["client"], key_file=certs["client_key"]),
        "nocert": target(url, ca_file=certs["ca"]),
        "noca": target(url, cert_file=certs["client"], key_file=certs["client_key"]),
    }
    ours = ssl.create_default_context(cafile=str(certs["ca"]))
    ours.load_cert_chain(str(certs["client"]), str(certs["client_key"]))
    expected = {wire_key(e, c, st, t) for e in (E1, E2) for c, st, t, _ in DUE}

    async def delivered() -> bool:
        rows = await get_json(url, "/_records", ssl=ours)
        return {(r["enterpriseCode"], r["dataCode"], r["statType"], r["statDate"]) for r in rows} == expected

    async def refused() -> bool:
        return all(count(registry, "nhjc_uplink_retries_total", target=t, reason="connect") > 0
                   for t in ("nocert", "noca"))

    async with uplink_for(db, targets, clock, registry) as up, running(up):
        await wait_until(delivered, "delivery over mutual TLS")
        await wait_until(refused, "the two misconfigured targets refused")
    assert all(r["state"] == "acked" for r in await outbox(db, "good"))
    for name in ("nocert", "noca"):
        rows = await outbox(db, name)
        assert rows and all(r["state"] == "pending" for r in rows)
    stats = await get_json(url, "/_stats", ssl=ours)
    assert stats["records"] == len(expected) and stats["devices"] == 2
