"""The collector against a real broker: TLS with credentials, and a broker restart."""

import subprocess

from tests.harness import wait_count
from tests.tls import make_ca_and_server
from tools.gateway import Gateway, enterprise_code, item
from tools.guest import PrivateBroker, free_port
from tools.process import ServiceProcess, query, wait_for

CODE = "01-00-0000-023300-01"
T0 = 1764303300


def test_tls_with_username_and_password(db, tmp_path) -> None:
    certs = make_ca_and_server(tmp_path / "certs")
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "pipeline", "s3cret"], check=True)
    tls_port = free_port()
    # The plain listener (for the test gateway) stays anonymous; the TLS one wants a
    # client certificate and a password.
    broker = PrivateBroker(tmp_path / "broker", prefix="per_listener_settings true", extra=(
        f"listener {tls_port} 127.0.0.1\ncafile {certs['ca']}\ncertfile {certs['server']}\n"
        f"keyfile {certs['server_key']}\nrequire_certificate true\n"
        f"password_file {passwd}\nallow_anonymous false\n"
    ))
    broker.start()
    try:
        ent = enterprise_code(30)
        gw = Gateway(broker.url, ent)  # plain listener from PrivateBroker() is the first one
        gw.items([item(CODE)])
        tls_url = f"mqtts://127.0.0.1:{tls_port}"
        env = {"NHJC_MQTT__CA_FILE": str(certs["ca"]), "NHJC_MQTT__CERT_FILE": str(certs["client"]),
               "NHJC_MQTT__KEY_FILE": str(certs["client_key"]), "NHJC_MQTT__USERNAME": "pipeline"}
        # A wrong password never becomes ready: the broker refuses it.
        bad = ServiceProcess(tls_url, db, env={**env, "NHJC_MQTT__PASSWORD": "wrong"},
                             log=tmp_path / "bad.log").start(wait_ready=False)
        wait_for(lambda: "refused" in (tmp_path / "bad.log").read_text(), 15, "refusal logged")
        assert bad.http("/readyz")[0] == 503
        assert bad.stop() == 0
        svc = ServiceProcess(tls_url, db, env={**env, "NHJC_MQTT__PASSWORD": "s3cret"},
                             log=tmp_path / "svc.log").start()
        try:
            gw.readings([{"code": CODE, "ts": T0, "value": 42.0}])
            wait_count(db, "SELECT count(*) FROM readings", 1)
            assert query(db, "SELECT value FROM readings") == [(42.0,)]
        finally:
            assert svc.stop() == 0
            gw.close()
    finally:
        broker.stop()


def test_broker_restart_reconnects_and_resumes_the_session(fresh_broker, db, tmp_path) -> None:
    ent = enterprise_code(31)
    gw = Gateway(fresh_broker.url, ent)
    gw.items([item(CODE)])
    svc = ServiceProcess(fresh_broker.url, db, log=tmp_path / "svc.log",
                         env={"NHJC_MQTT__RECONNECT_MAX_S": "1"}).start()
    try:
        gw.readings([{"code": CODE, "ts": T0, "value": 1.0}])
        wait_count(db, "SELECT count(*) FROM readings", 1)
        gw.close()
        fresh_broker.stop()
        wait_for(lambda: svc.http("/readyz")[0] == 503, 15, "not ready without a broker")
        fresh_broker.start()  # same port, persistence on: the session survives
        gw = Gateway(fresh_broker.url, ent)
        wait_for(lambda: svc.http("/readyz")[0] == 200, 20, "reconnected")
        gw.readings([{"code": CODE, "ts": T0 + 60, "value": 2.0}])
        wait_count(db, "SELECT count(*) FROM readings", 2)
    finally:
        assert svc.stop() == 0
        gw.close()
