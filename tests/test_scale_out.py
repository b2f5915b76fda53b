"""Several `nhjc run` on one shared subscription (`mqtt.shared_group`), one database and
two mock platforms: the readings are shared and stored once, each singular job (each
uplink target, completeness) is owned by one instance, and a SIGKILLed owner's jobs are
taken over with nothing lost at the platforms and no period sent by two at once.

What Mosquitto (2.0) does with a shared-subscription member that is gone is tested too,
because the adoption of sessions relies on it: its persistent session stays in the group
and keeps receiving its turn of the messages (queued, never handed to another member);
they wait there, with what was in flight, until an instance connects again with the same
client id, which then receives them all.  Should the session expire first, the broker
drops them.  So the survivors adopt the session (nhjc/adoption.py): they connect as its
client id and drain it, with no restart of the killed instance (tests/test_session_adoption.py)."""

from __future__ import annotations

import json
import random
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.fault_scenarios import PLATFORMS, Chain, Load, Publisher, run_round
from tests.harness import Ledger, platform_control
from tools.guest import PrivateBroker, free_port
from tools.process import ServiceProcess, wait_for

GROUP = "nhjc"
JOBS = ("completeness", "scorecard", *(f"uplink {p}" for p in PLATFORMS))


class Cluster(Chain):
    """The fault scenarios' chain with ``instances`` services on one shared group, each
    with its own client id (kept across a restart, as a deployment must)."""

    def __init__(self, broker: PrivateBroker, dsn: str, workdir: Path, *, instances: int,
                 env: dict[str, str] | None = None) -> None:
        super().__init__(broker, dsn, workdir)
        self.extra_env = env or {}
        base = free_port()
        self.client_ids = [f"nhjc-scale-{base}-{n}" for n in range(instances)]
        self.members: list[ServiceProcess | None] = [None] * instances
        self.down: set[int] = set()

    def start_service(self, wait_ready: bool = True) -> None:
        for n in range(len(self.members)):
            self.start_member(n, wait_ready=False)
        if wait_ready:
            for m in self.members:
                assert m is not None
                m.wait_ready()

    def start_member(self, n: int, *, wait_ready: bool = True) -> None:
        sp = self._new_service()
        sp.env |= {"NHJC_MQTT__CLIENT_ID": self.client_ids[n], "NHJC_MQTT__SHARED_GROUP": GROUP, **self.extra_env}
        sp.log = self.workdir / f"service-{n}.log"
        self.members[n] = sp.start(wait_ready=wait_ready)
        self.service = self.members[0]
        self.down.discard(n)

    def kill_member(self, n: int) -> None:
        m = self.members[n]
        assert m is not None
        m.kill()
        self.down.add(n)
        self.restarts += 1

    def alive(self) -> list[int]:
        return [n for n, m in enumerate(self.members)
                if n not in self.down and m is not None and m.proc is not None and m.proc.poll() is None]

    def service_alive(self) -> bool:
        return len(self.alive()) == len(self.members) - len(self.down)

    def owners(self) -> dict[str, list[int]]:
        """job -> the members whose /readyz says they own it."""
        out: dict[str, list[int]] = {job: [] for job in JOBS}
        for n in self.alive():
            m = self.members[n]
            assert m is not None
            status, body = m.http("/readyz")
            for job in json.loads(body).get("owns", []) if status else []:
                out.setdefault(job, []).append(n)
        return out

    def accepted(self, n: int) -> float:
        m = self.members[n]
        assert m is not None
        return m.metric("nhjc_readings_accepted_total")

    def frames(self, n: int) -> float:
        m = self.members[n]
        assert m is not None
        return m.metric("nhjc_frames_received_total")

    def stop(self) -> None:
        for n in self.alive():
            m = self.members[n]
            assert m is not None
            m.stop()
        self.service = None
        super().stop()


def each_job_owned_once(cluster: Cluster) -> bool:
    return all(len(v) == 1 for v in cluster.owners().values())


def overlaps(cluster: Cluster) -> dict[str, int]:
    """Per platform: records carried by two requests in flight at once (two senders)."""
    out = {}
    for name, url in cluster.platforms.items():
        with urllib.request.urlopen(url + "/_stats", timeout=5) as r:
            out[name] = int(json.loads(r.read())["overlaps"])
    return out


def test_three_instances_share_the_readings_and_own_each_job_once(fresh_broker: PrivateBroker, db: str,
                                                                  tmp_path: Path) -> None:
    cluster = Cluster(fresh_broker, db, tmp_path, instances=3).start()
    try:
        wait_for(lambda: each_job_owned_once(cluster), 30, "every job owned")
        r = run_round(cluster, "none", 1, rng=random.Random(1))
        assert r.account.ok, r.account.problems()
        shares = [cluster.frames(n) for n in range(3)]
        # Every instance got a part of the frames (the broker takes turns), and together
        # exactly what was published: no message went to two of them.
        assert all(s > 0 for s in shares), shares
        assert sum(shares) == len(Load(1, enterprises=4).messages())
        owners = cluster.owners()
        assert all(len(v) == 1 for v in owners.values()), owners
        assert overlaps(cluster) == dict.fromkeys(PLATFORMS, 0)
    finally:
        cluster.stop()


def test_sigkill_of_the_owner_under_load(fresh_broker: PrivateBroker, db: str, tmp_path: Path) -> None:
    cluster = Cluster(fresh_broker, db, tmp_path, instances=3).start()
    seen: dict[str, Any] = {}

    def kill_the_owner(chain: Chain, pub: Publisher, ledger: Ledger, rng: random.Random) -> tuple[float, str]:
        assert chain is cluster
        # The platforms answer slowly, so that sends are in flight when the owner dies.
        for url in cluster.platforms.values():
            platform_control(url, slow_s=0.2)
        pub.wait_progress(0.4)
        victim = cluster.owners()["uplink provincial"][0]
        jobs = [job for job, who in cluster.owners().items() if who == [victim] and job in JOBS]
        cluster.kill_member(victim)
        killed = time.monotonic()
        wait_for(lambda: all(len(cluster.owners()[job]) == 1 for job in jobs), 30,
                 f"{jobs} taken over by another instance")
        seen["takeover_s"] = time.monotonic() - killed
        seen["jobs"] = jobs
        published = pub.wait()
        # The survivors adopt the killed instance's session: its turn of the messages
        # (and what it had in flight) is stored without it coming back.
        wait_for(lambda: cluster.account(ledger).missing == 0, 60, "every reading stored, the victim still down")
        seen["all_stored_s"] = time.monotonic() - killed
        seen["after_publish_s"] = time.monotonic() - published
        # The adoption ends adopt_settle_s after the broker's last delivery to it.
        wait_for(lambda: sum(_adopted(cluster, n) for n in cluster.alive()) == 1, 30, "the adoption ended")
        seen["drained_s"] = time.monotonic() - killed
        cluster.start_member(victim)  # the same client id: it rejoins the group
        for url in cluster.platforms.values():
            platform_control(url, slow_s=0)
        return time.monotonic(), f"killed member {victim}"

    try:
        wait_for(lambda: each_job_owned_once(cluster), 30, "every job owned")
        r = run_round(cluster, kill_the_owner, 1, rng=random.Random(2))
        print(f"takeover of {seen['jobs']} in {seen['takeover_s']:.1f} s; every reading stored "
              f"{seen['all_stored_s']:.1f} s after the SIGKILL ({seen['after_publish_s']:.1f} s after the last "
              f"publish); its session marked drained {seen['drained_s']:.1f} s after the SIGKILL")
        assert "uplink provincial" in seen["jobs"]
        assert r.recovery_s is not None, r.account.problems()
        assert r.account.ok, r.account.problems()
        assert overlaps(cluster) == dict.fromkeys(PLATFORMS, 0)
        assert each_job_owned_once(cluster)
    finally:
        cluster.stop()


def test_an_instance_joining_the_group_drops_the_plain_subscription_of_its_session(
        fresh_broker: PrivateBroker, db: str, tmp_path: Path) -> None:
    # One instance ran alone (plain subscription, kept in its session); then it runs in a
    # group with a second one.  Its old subscription would bring it every reading on top
    # of its turn: each frame would be taken twice, and the load not shared at all.
    client_id = f"nhjc-join-{free_port()}"
    alone = ServiceProcess(fresh_broker.url, db, client_id=client_id, log=tmp_path / "alone.log").start()
    alone.stop()
    group = {"NHJC_MQTT__SHARED_GROUP": GROUP}
    members = [ServiceProcess(fresh_broker.url, db, client_id=cid, env=group, log=tmp_path / f"{cid}.log").start()
               for cid in (client_id, f"{client_id}-b")]
    try:
        messages = Load(7, enterprises=1).messages()[:60]
        pub = Publisher(fresh_broker.url, messages, rate=200).start()
        pub.wait(60)

        def frames() -> list[float]:
            return [m.metric("nhjc_frames_received_total") for m in members]

        wait_for(lambda: sum(frames()) >= len(messages), 30, "every frame taken")
        time.sleep(1.0)  # a second copy would arrive meanwhile
        assert sum(frames()) == len(messages) and all(f > 0 for f in frames()), frames()
    finally:
        for m in members:
            m.stop()


# --- the broker's behaviour the guide relies on ----------------------------------------

def test_a_frozen_owner_is_replaced_and_stands_down_when_it_thaws(fresh_broker: PrivateBroker, db: str,
                                                                  tmp_path: Path) -> None:
    # SIGSTOP: the process and its sockets stay, nothing answers.  The database ends its
    # ownership session after release_after_s (5 s here) and another instance takes the
    # jobs; when the frozen one is let go again it stops its owned work before taking
    # another step of it, so no period is sent by two at once.
    env = {"NHJC_OWNERSHIP__HEARTBEAT_S": "1", "NHJC_OWNERSHIP__DEADLINE_S": "1",
           "NHJC_OWNERSHIP__RELEASE_AFTER_S": "5"}
    cluster = Cluster(fresh_broker, db, tmp_path, instances=2, env=env).start()
    seen: dict[str, Any] = {}

    def freeze_the_owner(chain: Chain, pub: Publisher, ledger: Ledger, rng: random.Random) -> tuple[float, str]:
        for url in cluster.platforms.values():
            platform_control(url, slow_s=0.3)
        pub.wait_progress(0.4)
        victim = cluster.owners()["uplink provincial"][0]
        m = cluster.members[victim]
        assert m is not None and m.proc is not None
        m.proc.send_signal(signal.SIGSTOP)
        frozen = time.monotonic()
        try:
            other = 1 - victim
            wait_for(lambda: "uplink provincial" in _owns(cluster, other), 30, "the job taken over")
            seen["takeover_s"] = time.monotonic() - frozen
        finally:
            m.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: "no longer the owner of uplink provincial" in (cluster.workdir / f"service-{victim}.log")
                 .read_text(errors="replace"), 15, "the thawed owner stood down")
        # It no longer shows the target's gauges: the new owner's are the ones to read.
        wait_for(lambda: 'nhjc_uplink_backlog{target="provincial"}' not in m.http("/metrics")[1], 15,
                 "the old owner's uplink gauges dropped")
        for url in cluster.platforms.values():
            platform_control(url, slow_s=0)
        return time.monotonic(), f"froze member {victim}"

    try:
        wait_for(lambda: each_job_owned_once(cluster), 30, "every job owned")
        r = run_round(cluster, freeze_the_owner, 1, rng=random.Random(3))
        print(f"a frozen owner's uplink taken over after {seen['takeover_s']:.1f} s (release_after_s 5)")
        assert seen["takeover_s"] >= 4  # not before the database let the session go
        assert r.account.ok, r.account.problems()
        assert overlaps(cluster) == dict.fromkeys(PLATFORMS, 0)
        wait_for(lambda: each_job_owned_once(cluster), 15, "every job owned once")
    finally:
        cluster.stop()


def _adopted(cluster: Cluster, n: int) -> float:
    m = cluster.members[n]
    assert m is not None
    return m.metric("nhjc_sessions_adopted_total", 'outcome="drained"')


def _owns(cluster: Cluster, n: int) -> list[str]:
    m = cluster.members[n]
    assert m is not None
    status, body = m.http("/readyz")
    return list(json.loads(body).get("owns", [])) if status else []


class Member:
    """A bare MQTT 5 member of a shared group with a persistent session."""

    def __init__(self, port: int, client_id: str, *, ack: bool = True, expiry_s: int = 3600) -> None:
        self.got: list[str] = []
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True)

        def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
            self.got.append(msg.payload.decode())
            if ack:
                client.ack(msg.mid, msg.qos)

        c.on_message = on_message
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = expiry_s
        props.ReceiveMaximum = 5
        c.connect("127.0.0.1", port, 30, clean_start=False, properties=props)
        c.subscribe(f"$share/{GROUP}/scale/#", qos=1)
        c.loop_start()
        self.client = c

    def vanish(self) -> None:
        """Gone without a DISCONNECT, as a killed process."""
        sock = self.client.socket()
        if sock is not None:
            sock.close()
        self.client.loop_stop()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish(port: int, first: int, n: int) -> None:
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{first}", protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    try:
        for i in range(first, first + n):
            pub.publish("scale/x", str(i), qos=1).wait_for_publish(5)
    finally:
        pub.disconnect()
        pub.loop_stop()


@pytest.mark.parametrize("expiry_s", [3600, 2])
def test_mosquitto_keeps_a_gone_members_turn_in_its_session(fresh_broker: PrivateBroker, expiry_s: int) -> None:
    port = fresh_broker.port
    a = Member(port, "member-a", ack=False, expiry_s=expiry_s)  # holds what it gets, unacknowledged
    b = Member(port, "member-b")
    time.sleep(0.3)
    publish(port, 0, 20)
    wait_for(lambda: len(b.got) == 10, 10, "b's turn")
    a.vanish()
    time.sleep(0.5)
    publish(port, 20, 20)
    wait_for(lambda: len(b.got) >= 20, 10, "b's turn of the second 20")
    time.sleep(0.5)
    # b got only its own turn: a's (in flight and new) was not handed over.
    assert sorted(int(x) for x in b.got) == list(range(1, 40, 2))
    time.sleep(max(0, expiry_s + 1 - 1.0) if expiry_s < 60 else 0)
    again = Member(port, "member-a")
    try:
        if expiry_s < 60:
            time.sleep(1.0)
            assert again.got == []  # the session expired: the broker dropped a's turn
        else:
            wait_for(lambda: len(again.got) == 20, 10, "a's session drained")
            assert sorted(int(x) for x in again.got) == list(range(0, 40, 2))
    finally:
        again.close()
        b.close()
