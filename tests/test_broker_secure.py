"""The shipped secure broker configuration (config/mosquitto/secure.conf) on a real
Mosquitto, with accounts and the ACL written by `nhjc broker add-gateway` and
`nhjc broker add-service`: anonymous clients are refused, an enterprise's gateway cannot
write under another enterprise's prefix, the pipeline's account reads everything (shared
subscriptions too, and `nhjc run` itself over TLS), and TLS works; the pipeline's
account may take up a gone instance's session (the adoption of sessions)."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from nhjc.broker import pbkdf2_entry, set_password
from tests.harness import wait_count
from tests.services import ROOT
from tests.tls import make_ca_and_server
from tools.gateway import enterprise_code, item
from tools.guest import free_port, wait_port
from tools.process import ServiceProcess, count

SECURE = ROOT / "config" / "mosquitto" / "secure.conf"
A, B, C = enterprise_code(801), enterprise_code(802), enterprise_code(803)
PASSWORDS = {A: "a-secret pass", B: "b:secret#2", C: "c secret by hashlib", "nhjc-pipeline": "pipeline-pw"}
T0 = 1764303300


def nhjc_broker(*args: str, password: str, files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nhjc", "broker", *args, "--password-file", str(files / "passwd"),
         "--acl-file", str(files / "acl")],
        input=password + "\n", capture_output=True, text=True, cwd=ROOT, timeout=30, check=False)


def secure_config(text: str, d: Path, certs: dict[str, Path], tls_port: int, local_port: int) -> str:
    """secure.conf with its paths in the test's folder and its listeners on loopback ports."""
    swaps = {
        "/etc/mosquitto/nhjc/passwd": str(d / "passwd"),
        "/etc/mosquitto/nhjc/acl": str(d / "acl"),
        "/etc/mosquitto/certs/ca.pem": str(certs["ca"]),
        "/etc/mosquitto/certs/server.pem": str(certs["server"]),
        "/etc/mosquitto/certs/server.key": str(certs["server_key"]),
        "\nlistener 8883\n": f"\nlistener {tls_port} 127.0.0.1\n",
        "\nlistener 1883 127.0.0.1\n": f"\nlistener {local_port} 127.0.0.1\n",
    }
    for old, new in swaps.items():
        assert old in text, f"secure.conf no longer has {old!r}"
        text = text.replace(old, new)
    return text


@dataclass
class Secure:
    dir: Path
    certs: dict[str, Path]
    tls_port: int
    local_port: int
    proc: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("secure-broker")
    certs = make_ca_and_server(d / "certs")
    for who in (A, B):  # by the command, with mosquitto_passwd
        r = nhjc_broker("add-gateway", who, password=PASSWORDS[who], files=d)
        assert r.returncode == 0, r.stderr
        assert PASSWORDS[who] not in r.stdout + r.stderr
    r = nhjc_broker("add-service", password=PASSWORDS["nhjc-pipeline"], files=d)
    assert r.returncode == 0, r.stderr
    set_password(d / "passwd", C, PASSWORDS[C], use_tool=False)  # hashed here, with hashlib
    tls_port, local_port = free_port(), free_port()
    shipped = (ROOT / "config" / "mosquitto" / "nhjc.conf").read_text()
    conf = d / "mosquitto.conf"
    conf.write_text(f"{shipped}\n{secure_config(SECURE.read_text(), d, certs, tls_port, local_port)}\n"
                    f"persistence_location {d}/\nlog_dest file {d}/broker.log\nuser root\n")
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(tls_port)
    wait_port(local_port)
    yield Secure(d, certs, tls_port, local_port, proc)
    proc.terminate()
    proc.wait(10)


class Client:
    """A paho client that records the CONNACK and what it receives."""

    def __init__(self, s: Secure, user: str | None, password: str | None = None, tls: bool = True,
                 port: int | None = None, ca: Path | None = None) -> None:
        self.connack = threading.Event()
        self.reason: mqtt.ReasonCode | None = None
        self.got: list[tuple[str, bytes]] = []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}",
                             protocol=mqtt.MQTTv5, reconnect_on_failure=False)
        if user is not None:
            self.c.username_pw_set(user, PASSWORDS.get(user) if password is None else password)
        if tls:
            self.c.tls_set(ca_certs=str(ca or s.certs["ca"]))
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = lambda *_: self.connack.set()  # closed without a CONNACK
        self.c.on_message = lambda _c, _u, m: self.got.append((m.topic, m.payload))
        self.port = port or (s.tls_port if tls else s.local_port)
        self.error: Exception | None = None

    def _on_connect(self, _c, _u, _flags, reason, _props) -> None:
        self.reason = reason
        self.connack.set()

    def connect(self) -> bool:
        """True when the broker accepted the connection."""
        try:
            self.c.connect("127.0.0.1", self.port)
        except (OSError, ssl.SSLError) as exc:
            self.error = exc
            _close_sockets_in(exc)
            return False
        self.c.loop_start()
        self.connack.wait(5)
        return self.reason is not None and not self.reason.is_failure

    def subscribe(self, *topics: str) -> None:
        done = threading.Event()
        self.c.on_subscribe = lambda *_: done.set()
        self.c.subscribe([(t, 1) for t in topics])
        assert done.wait(5)

    def publish(self, topic: str, payload: bytes) -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(5)

    def wait(self, payload: bytes, timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and all(p != payload for _, p in self.got):
            time.sleep(0.02)
        assert any(p == payload for _, p in self.got), f"{payload!r} never arrived: {self.got}"

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def _close_sockets_in(exc: BaseException) -> None:
    """paho leaves the socket of a failed TLS handshake open (its _ssl_wrap_socket does
    not close it on the way out), to warn when collected: closed here, where the
    traceback still holds it."""
    tb = exc.__traceback__
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, socket.socket):
                value.close()
        tb = tb.tb_next


def _refused(c: Client) -> bool:
    ok = c.connect()
    c.close()
    return not ok


def test_anonymous_and_wrong_passwords_are_refused_on_both_listeners(secure) -> None:
    assert _refused(Client(secure, None, tls=True))
    assert _refused(Client(secure, None, tls=False))
    assert _refused(Client(secure, A, password="not A's password"))
    assert _refused(Client(secure, "nobody", password="x", tls=False))
    # The reason is authentication, not the connection: the right password gets in.
    ok = Client(secure, A)
    assert ok.connect()
    ok.close()


def test_tls_listener_speaks_only_tls_with_the_servers_certificate(secure, tmp_path) -> None:
    plain_on_tls = Client(secure, A, tls=False, port=secure.tls_port)
    assert _refused(plain_on_tls)
    other_ca = make_ca_and_server(tmp_path / "other")["ca"]
    wrong_ca = Client(secure, A, ca=other_ca)
    assert _refused(wrong_ca)
    assert isinstance(wrong_ca.error, ssl.SSLCertVerificationError)
    good = Client(secure, B)
    assert good.connect()
    assert good.c.socket().version() in ("TLSv1.2", "TLSv1.3")  # type: ignore[union-attr]
    good.close()


def _denied(s: Secure, user: str, topic: str, payload: bytes, tls: bool = True) -> bool:
    """Publishes once on a new connection: True when the broker refused it, which
    Mosquitto does by answering the PUBACK (MQTT 5: 0x87 not authorized) and closing."""
    c = Client(s, user, tls=tls)
    assert c.connect()
    acked: list[mqtt.ReasonCode] = []
    c.c.on_publish = lambda _c, _u, _mid, reason, _p: acked.append(reason)
    c.c.publish(topic, payload, qos=1)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and c.c.is_connected():
        time.sleep(0.02)
    refused = not c.c.is_connected() and bool(acked) and acked[0].value == 0x87
    c.close()
    return refused


def test_a_gateway_writes_only_under_its_own_enterprise(secure) -> None:
    pipeline = Client(secure, "nhjc-pipeline", tls=False)
    assert pipeline.connect()
    pipeline.subscribe("nhjc/v1/#", "$share/nhjc/nhjc/v1/+/+/readings")
    mark = uuid.uuid4().hex.encode()
    try:
        for topic in (f"nhjc/v1/{B}/gw-1/readings", f"nhjc/v1/{B}/gw-1/items", f"nhjc/v1/{B}/gw-1/status",
                      "nhjc/v1/other/gw-1/readings", f"nhjc/v1/{A}/gw-1/other", f"nhjc/v1/{A}/readings"):
            assert _denied(secure, A, topic, b"forged " + mark), topic
        # Refused before the next was sent: had any reached the subscriber, it would
        # have arrived before this one, from A's own prefix.
        a = Client(secure, A)
        assert a.connect()
        a.publish(f"nhjc/v1/{A}/gw-1/readings", b"own " + mark)
        a.close()
        pipeline.wait(b"own " + mark)
        time.sleep(0.3)
        topics = [t for t, p in pipeline.got if p.endswith(mark)]
        # Once by the plain subscription and once by the shared one.
        assert topics == [f"nhjc/v1/{A}/gw-1/readings"] * 2, pipeline.got
    finally:
        pipeline.close()


def test_the_pipeline_reads_every_enterprise_and_writes_nothing(secure) -> None:
    pipeline = Client(secure, "nhjc-pipeline", tls=True)
    assert pipeline.connect()
    pipeline.subscribe("$share/nhjc/nhjc/v1/+/+/readings", "nhjc/v1/+/+/items")
    gateways = {who: Client(secure, who) for who in (A, B, C)}
    try:
        for who, gw in gateways.items():
            assert gw.connect(), who
            gw.publish(f"nhjc/v1/{who}/gw-7/readings", f"r {who}".encode())
            gw.publish(f"nhjc/v1/{who}/gw-7/items", f"i {who}".encode())
        for who in gateways:
            pipeline.wait(f"r {who}".encode())
            pipeline.wait(f"i {who}".encode())
        assert _denied(secure, "nhjc-pipeline", f"nhjc/v1/{A}/gw-7/readings", b"from the pipeline")
        gateways[A].publish(f"nhjc/v1/{A}/gw-7/readings", b"after")
        pipeline.wait(b"after")
        time.sleep(0.3)
        assert not any(p == b"from the pipeline" for _, p in pipeline.got)
    finally:
        for gw in gateways.values():
            gw.close()
        pipeline.close()


def test_nhjc_run_stores_a_gateways_readings_through_the_secure_broker(secure, db, tmp_path) -> None:
    codes = ["01-00-0000-023300-01", "00-00-0000-011500-01"]
    gw = Client(secure, A)
    assert gw.connect()
    items = json.dumps({"v": 1, "items": [item(c) for c in codes]}).encode()
    gw.c.publish(f"nhjc/v1/{A}/gw-1/items", items, qos=1, retain=True).wait_for_publish(5)
    env = {"NHJC_MQTT__USERNAME": "nhjc-pipeline", "NHJC_MQTT__PASSWORD": PASSWORDS["nhjc-pipeline"],
           "NHJC_MQTT__CA_FILE": str(secure.certs["ca"]), "NHJC_MQTT__SHARED_GROUP": "nhjc"}
    svc = ServiceProcess(f"mqtts://127.0.0.1:{secure.tls_port}", db, env=env, log=tmp_path / "svc.log").start()
    try:
        rs = [{"code": c, "ts": T0 + i * 60, "value": 100.0 + i} for c in codes for i in range(10)]
        gw.publish(f"nhjc/v1/{A}/gw-1/readings", json.dumps({"v": 1, "readings": rs}).encode())
        wait_count(db, "SELECT count(*) FROM readings", len(rs))
        assert count(db, "SELECT count(*) FROM items WHERE enterprise = %s", A) == 2
    finally:
        assert svc.stop(signal.SIGTERM) == 0
        gw.c.publish(f"nhjc/v1/{A}/gw-1/items", b"", qos=1, retain=True).wait_for_publish(5)
        gw.close()
    assert PASSWORDS["nhjc-pipeline"] not in (tmp_path / "svc.log").read_text()


def test_an_account_added_while_the_broker_runs_works_after_sighup(secure) -> None:
    new = enterprise_code(804)
    PASSWORDS[new] = "added later"
    late = Client(secure, new)
    assert _refused(late)
    r = nhjc_broker("add-gateway", new, password=PASSWORDS[new], files=secure.dir)
    assert r.returncode == 0, r.stderr
    assert "added" in r.stdout and PASSWORDS[new] not in r.stdout + r.stderr
    os.kill(secure.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _refused(Client(secure, new)):
        time.sleep(0.2)
    ok = Client(secure, new)
    assert ok.connect()
    ok.close()


def test_add_gateway_refuses_a_bad_credit_code_and_writes_nothing(tmp_path) -> None:
    bad = A[:17] + ("0" if A[17] != "0" else "1")
    for code, says in ((bad, "check character"), (A.lower(), "alphabet"), (A[:10], "10 characters")):
        r = nhjc_broker("add-gateway", code, password="pw", files=tmp_path)
        assert r.returncode == 2, r.stderr
        assert "not a GB 32100 credit code" in r.stderr and says in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_add_gateway_again_re_keys_the_account_and_keeps_one_acl(tmp_path) -> None:
    for pw in ("first", "second"):
        r = nhjc_broker("add-gateway", A, password=pw, files=tmp_path)
        assert r.returncode == 0, r.stderr
        r = nhjc_broker("add-gateway", B, password=pw, files=tmp_path)
        assert r.returncode == 0, r.stderr
    users = [ln.split(":")[0] for ln in (tmp_path / "passwd").read_text().splitlines()]
    assert users == [A, B]
    acl = (tmp_path / "acl").read_text()
    assert acl.count("pattern write nhjc/v1/%u/+/readings") == 1
    assert A not in acl  # one pattern serves every enterprise
    assert oct((tmp_path / "passwd").stat().st_mode & 0o777) == "0o640"
    r = nhjc_broker("add-gateway", A, password="", files=tmp_path)
    assert r.returncode == 1 and "no password" in r.stderr


def test_the_hashlib_entry_is_what_mosquitto_passwd_writes(tmp_path) -> None:
    f = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", str(f), "u"], input="abc déf\nabc déf\n", text=True,
                   capture_output=True, check=True)
    written = f.read_text().strip()
    salt = base64.b64decode(written.split("$")[3])
    assert pbkdf2_entry("u", "abc déf", salt) == written


def test_secure_conf_leaves_no_anonymous_listener_on_all_interfaces() -> None:
    lines = [ln.split() for ln in SECURE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert ["allow_anonymous", "false"] in lines
    assert not any(ln[0] == "allow_anonymous" and ln[1] == "true" for ln in lines)
    listeners = [ln for ln in lines if ln[0] == "listener"]
    # The only listener on every interface is the TLS one (certfile follows it).
    wide = [ln for ln in listeners if len(ln) == 2]
    assert wide == [["listener", "8883"]]
    assert all(ln[2] == "127.0.0.1" for ln in listeners if len(ln) == 3)


def test_the_pipeline_account_can_adopt_a_gone_instances_session(secure) -> None:
    # nhjc/adoption.py: an instance connects under the pipeline's account as a gone
    # peer's client id, unsubscribes its session and receives what it held.
    tag = uuid.uuid4().hex[:6]

    def member(cid: str, got: list[bytes], *, share: bool) -> mqtt.Client:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
        c.username_pw_set("nhjc-pipeline", PASSWORDS["nhjc-pipeline"])
        c.tls_set(ca_certs=str(secure.certs["ca"]))
        c.on_message = lambda _c, _u, m: got.append(m.payload)
        unsubscribed: list[bool] = []
        c.on_unsubscribe = lambda _c, _u, _mid, reasons, _p: unsubscribed.extend(not r.is_failure for r in reasons)
        subscribed = threading.Event()
        c.on_subscribe = lambda *_: subscribed.set()
        # A group of its own: an earlier test's kept session is a member of "nhjc".
        topic = f"$share/adopt-{tag}/nhjc/v1/+/+/readings"
        c.on_connect = (lambda cl, *_: cl.subscribe(topic, 1)) if share else (lambda cl, *_: cl.unsubscribe(topic))
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        c.connect("127.0.0.1", secure.tls_port, 30, clean_start=False, properties=props)
        c.loop_start()
        if share:
            assert subscribed.wait(5)
        else:
            deadline = time.monotonic() + 5
            while not unsubscribed and time.monotonic() < deadline:
                time.sleep(0.02)
            assert unsubscribed == [True]
        return c

    got_a: list[bytes] = []
    got_b: list[bytes] = []
    got_adopter: list[bytes] = []
    a = member(f"nhjc-a-{tag}", got_a, share=True)
    b = member(f"nhjc-b-{tag}", got_b, share=True)
    gw = Client(secure, A)
    assert gw.connect()
    try:
        sock = a.socket()
        assert sock is not None
        sock.close()  # gone without a DISCONNECT, as a killed instance
        a.loop_stop()
        time.sleep(0.5)
        for i in range(6):
            gw.publish(f"nhjc/v1/{A}/gw-1/readings", f"m{i}".encode())
        deadline = time.monotonic() + 5
        while len(got_b) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        adopter = member(f"nhjc-a-{tag}", got_adopter, share=False)
        deadline = time.monotonic() + 5
        while len(got_b) + len(got_adopter) < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        adopter.loop_stop()
        adopter.disconnect()
        assert got_adopter, "the gone member's turn was not delivered to the adopter"
        assert sorted(got_b + got_adopter) == [f"m{i}".encode() for i in range(6)]
    finally:
        gw.close()
        b.loop_stop()
        b.disconnect()
