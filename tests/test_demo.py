"""`nhjc demo` as a user runs it: a subprocess with a real broker and database, stopped
with Ctrl-C (SIGINT) once readings flow."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

from tests.harness import count
from tests.services import ROOT, free_port

ACCEPTED = re.compile(r"readings accepted ([\d,]+)")


def test_demo_runs_everything_and_stops_cleanly_on_sigint(fresh_broker, db, tmp_path) -> None:
    env = {**os.environ, "NHJC_DATABASE__URL": db, "NHJC_MQTT__URL": fresh_broker.url,
           "NHJC_METRICS__PORT": str(free_port()),
           "NHJC_MQTT__CLIENT_ID": f"nhjc-demo-test-{uuid.uuid4().hex[:8]}"}
    with open(tmp_path / "stderr.log", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nhjc", "--log-level", "WARNING", "demo", "--enterprises", "3",
             "--speed", "120"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()

    def accepted() -> int:
        found = [int(m.group(1).replace(",", "")) for line in list(lines) for m in ACCEPTED.finditer(line)]
        return max(found, default=0)

    try:
        deadline = time.monotonic() + 60
        while accepted() == 0 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert accepted() > 0, "".join(lines) + (tmp_path / "stderr.log").read_text()
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    out = "".join(lines)
    assert rc == 0, out + (tmp_path / "stderr.log").read_text()
    for section in ("readings accepted", "quarantine", "periods", "uplink provincial", "national",
                    "completeness", "simulator", "platforms: provincial http://127.0.0.1:"):
        assert section in out, f"{section!r} missing from:\n{out}"
    assert out.rstrip().endswith("nhjc demo: stopped")
    assert count(db, "SELECT count(*) FROM readings") > 0
    assert count(db, "SELECT count(*) FROM items") > 0
