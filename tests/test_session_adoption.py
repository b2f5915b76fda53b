"""The adoption of a gone instance's MQTT session (nhjc/adoption.py): the survivors of a
shared group drain what the broker keeps for it, without it coming back; an adoption
cut short by the adopter's own death is taken up by another; an instance that returns
waits for an adoption in progress, then takes its share again.  A single instance
without a group holds no session lock at all.  Real broker, database and processes."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.fault_scenarios import Chain, Load, Publisher, run_round
from tests.harness import Ledger
from tests.test_scale_out import GROUP, Cluster, Member, publish
from tools.guest import PrivateBroker, free_port
from tools.process import ServiceProcess, count, query, wait_for


def _readyz(cluster: Cluster, n: int) -> tuple[int, dict[str, Any]]:
    m = cluster.members[n]
    assert m is not None
    status, body = m.http("/readyz")
    return status, (json.loads(body) if body else {})


def _adopting(cluster: Cluster) -> dict[int, str]:
    out = {}
    for n in cluster.alive():
        peer = _readyz(cluster, n)[1].get("adopting")
        if peer:
            out[n] = str(peer)
    return out


def _drained(cluster: Cluster, n: int) -> float:
    m = cluster.members[n]
    assert m is not None
    return m.metric("nhjc_sessions_adopted_total", 'outcome="drained"')


def test_an_interrupted_adoption_is_taken_up_and_the_owner_rejoins(fresh_broker: PrivateBroker, db: str,
                                                                   tmp_path: Path) -> None:
    # A long settle time keeps the first adoption going long enough to kill its adopter.
    cluster = Cluster(fresh_broker, db, tmp_path, instances=3, env={"NHJC_MQTT__ADOPT_SETTLE_S": "6"}).start()
    seen: dict[str, Any] = {}

    def kill_then_kill_the_adopter(chain: Chain, pub: Publisher, ledger: Ledger,
                                   rng: random.Random) -> tuple[float, str]:
        pub.wait_progress(0.3)
        victim = 0
        cluster.kill_member(victim)
        wait_for(lambda: bool(_adopting(cluster)), 30, "an adoption of the killed session")
        (adopter, peer), = _adopting(cluster).items()
        assert peer == cluster.client_ids[victim]
        cluster.kill_member(adopter)
        last = ({0, 1, 2} - {victim, adopter}).pop()
        seen["last"], seen["adopter"] = last, adopter
        wait_for(lambda: _adopting(cluster).get(last) == peer, 30, "the adoption taken up by the last instance")
        # The victim comes back meanwhile: it waits for its session's lock, visibly.
        cluster.start_member(victim, wait_ready=False)
        wait_for(lambda: "waiting for the lock of its own MQTT session"
                 in json.dumps(_readyz(cluster, victim)[1]), 30, "the returning instance waiting, in /readyz")
        seen["waited"] = True
        # Ready only once the last instance has released the victim's session.
        m = cluster.members[victim]
        assert m is not None
        m.wait_ready(60)
        pub.wait()
        return time.monotonic(), f"killed {victim}, then its adopter {adopter}"

    try:
        r = run_round(cluster, kill_then_kill_the_adopter, 1, rng=random.Random(4))
        assert seen.get("waited")
        assert r.account.ok, r.account.problems()
        # The last instance drained both gone sessions: the victim's (whose first
        # adoption was cut short) and the killed adopter's own.
        wait_for(lambda: _drained(cluster, seen["last"]) == 2, 60, "both gone sessions drained")
        m = cluster.members[seen["last"]]
        assert m is not None and m.metric("nhjc_sessions_adopted_total", 'outcome="interrupted"') == 0
        adopter_id = cluster.client_ids[seen["adopter"]]
        assert query(db, "SELECT drained_by FROM mqtt_sessions WHERE client_id = %s",
                     adopter_id) == [(cluster.client_ids[seen["last"]],)]
        # Registered again on its return: no longer marked drained.
        assert count(db, "SELECT count(*) FROM mqtt_sessions WHERE client_id = %s AND drained_at IS NULL",
                     cluster.client_ids[0]) == 1
        # The returned instance takes its turn of new messages again.
        before = [cluster.frames(n) for n in cluster.alive()]
        messages = Load(9, enterprises=1).messages()[:60]
        Publisher(fresh_broker.url, messages, rate=200).start().wait(60)
        wait_for(lambda: sum(cluster.frames(n) for n in cluster.alive()) - sum(before) >= len(messages), 30,
                 "every new frame taken")
        assert cluster.frames(0) > 0
        assert sum(cluster.frames(n) for n in cluster.alive()) - sum(before) == len(messages)
    finally:
        cluster.stop()


def test_one_instance_without_a_group_holds_no_session_lock(fresh_broker: PrivateBroker, db: str,
                                                            tmp_path: Path) -> None:
    sp = ServiceProcess(fresh_broker.url, db, log=tmp_path / "alone.log").start()
    try:
        status, body = sp.http("/readyz")
        assert status == 200
        assert not any(job.startswith("mqtt session") for job in json.loads(body)["owns"])
        assert "adopting" not in json.loads(body)
        assert "nhjc_sessions_adopted_total" not in sp.http("/metrics")[1]
        assert count(db, "SELECT count(*) FROM mqtt_sessions") == 0
    finally:
        sp.stop()


def test_one_instance_in_a_group_registers_its_session(fresh_broker: PrivateBroker, db: str, tmp_path: Path) -> None:
    client_id = f"nhjc-alone-{free_port()}"
    sp = ServiceProcess(fresh_broker.url, db, client_id=client_id, env={"NHJC_MQTT__SHARED_GROUP": GROUP},
                        log=tmp_path / "alone.log").start()
    try:
        _, body = sp.http("/readyz")
        assert f"mqtt session {client_id}" in json.loads(body)["owns"]
        assert query(db, "SELECT shared_group, drained_at FROM mqtt_sessions") == [(GROUP, None)]
    finally:
        sp.stop()


# --- the broker's behaviour the adoption relies on --------------------------------------

def test_mosquitto_still_delivers_a_sessions_backlog_after_unsubscribing(fresh_broker: PrivateBroker) -> None:
    # The adopter unsubscribes the gone member's session at once, then drains it: the
    # broker must still deliver what the session holds (queued and in flight), and give
    # the session no turn of what is published afterwards.
    port = fresh_broker.port
    a = Member(port, "member-a", ack=False)
    b = Member(port, "member-b")
    time.sleep(0.3)
    publish(port, 0, 20)
    wait_for(lambda: len(b.got) == 10, 10, "b's turn (a holds 5 in flight unacknowledged, the rest queued)")
    a.vanish()
    time.sleep(0.5)
    publish(port, 20, 20)
    wait_for(lambda: len(b.got) >= 20, 10, "b's turn of the second 20")
    got: list[int] = []
    adopter = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="member-a", protocol=mqtt.MQTTv5, manual_ack=True)

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        got.append(int(msg.payload))
        client.ack(msg.mid, msg.qos)

    adopter.on_message = on_message
    adopter.on_connect = lambda client, *_: client.unsubscribe(f"$share/{GROUP}/scale/#")
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    adopter.connect("127.0.0.1", port, 30, clean_start=False, properties=props)
    adopter.loop_start()
    try:
        wait_for(lambda: len(got) == 20, 10, "a's session drained")
        publish(port, 40, 10)
        wait_for(lambda: len(b.got) == 30, 10, "every new message to b")
        time.sleep(0.5)
        assert sorted(got) == list(range(0, 40, 2))  # what a had in flight, and its turn queued since
    finally:
        adopter.disconnect()
        adopter.loop_stop()
        b.close()
