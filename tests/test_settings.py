from pathlib import Path

import pytest

from config.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_loads_and_environment_wins(monkeypatch) -> None:
    monkeypatch.setenv("NHJC_MQTT__URL", "mqtts://broker.example:8883")
    monkeypatch.setenv("NHJC_UPLINK__TARGETS__NATIONAL__TIMEOUT_S", "3.5")
    s = load_settings(ROOT / "config" / "nhjc.example.toml")
    assert s.mqtt.url == "mqtts://broker.example:8883"
    assert s.uplink.targets["national"].timeout_s == 3.5
    assert s.uplink.targets["provincial"].url == "https://provincial.example/nhjc"
    assert s.ingest.batch_rows == 10000


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"NHJC_MQTT__URL": "http://x"}, "mqtt.url"),
        ({"NHJC_INGEST__BATCH_ROWS": "0"}, "ingest.batch_rows"),
        ({"NHJC_PROCESSING__TIMEZONE": "Mars/Olympus"}, "processing.timezone"),
        ({"NHJC_DATABASE__URL": "mysql://x"}, "database.url"),
        ({"NHJC_UPLINK__TARGETS__PROVINCIAL__URL": "not a url"}, "uplink.targets.provincial.url"),
        ({"NHJC_MQTT__NO_SUCH": "1"}, "mqtt.no_such"),
    ],
)
def test_bad_setting_names_itself_in_one_line(monkeypatch, env, named) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SettingsError) as e:
        load_settings()
    assert named in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_and_broken_config_files(tmp_path) -> None:
    with pytest.raises(SettingsError, match="no such file"):
        load_settings(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt\nurl=")
    with pytest.raises(SettingsError) as e:
        load_settings(bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("env", "named"), [
    ({"NHJC_MQTT__RECONNECT_MAX_S": "0.1"}, "mqtt.reconnect_max_s"),
    ({"NHJC_INGEST__PAUSE_MAX_S": "0.1"}, "ingest.pause_max_s"),
    ({"NHJC_PROCESSING__PAUSE_MAX_S": "0.1"}, "processing.pause_max_s"),
    ({"NHJC_UPLINK__PAUSE_MAX_S": "0.1"}, "uplink.pause_max_s"),
    ({"NHJC_UPLINK__TARGETS__P__URL": "http://x", "NHJC_UPLINK__TARGETS__P__BACKOFF_MAX_S": "0.1"},
     "uplink.targets.p.backoff_max_s"),
])
def test_every_backoff_refuses_a_maximum_below_its_minimum(monkeypatch, env, named) -> None:
    """Each backoff doubles from its minimum to its maximum: a maximum below it is named
    at load, not found by a stage at run time."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SettingsError) as e:
        load_settings()
    assert f"bad setting {named} " in str(e.value) and "is below" in str(e.value)


@pytest.mark.parametrize(("group", "why"), [
    ("a/b", "'/'"), ("nhjc+", "'+'"), ("#", "'#'"), ("x\n", "control characters"),
])
def test_a_shared_group_is_one_topic_level(monkeypatch, group, why) -> None:
    monkeypatch.setenv("NHJC_MQTT__SHARED_GROUP", group)
    with pytest.raises(SettingsError) as e:
        load_settings()
    assert "bad setting mqtt.shared_group (NHJC_MQTT__SHARED_GROUP)" in str(e.value) and why in str(e.value)


def test_shared_group_subscribes_readings_only_as_shared(monkeypatch) -> None:
    from ingest.topics import parse_topic, subscriptions

    monkeypatch.setenv("NHJC_MQTT__SHARED_GROUP", "nhjc")
    s = load_settings()
    assert subscriptions(s.mqtt.shared_group) == ["$share/nhjc/nhjc/v1/+/+/readings", "nhjc/v1/+/+/items"]
    assert subscriptions("") == ["nhjc/v1/+/+/readings", "nhjc/v1/+/+/items"]
    # The broker delivers the publication's own topic on a shared subscription (tested
    # end to end in tests/test_scale_out.py); a $share topic would be no topic of ours.
    assert parse_topic("nhjc/v1/91340100MA0000001K/gw1/readings").kind == "readings"
    with pytest.raises(ValueError, match="is not nhjc/v1"):
        parse_topic("$share/nhjc/nhjc/v1/91340100MA0000001K/gw1/readings")


def test_client_id_takes_the_host_name(monkeypatch) -> None:
    import socket

    monkeypatch.setenv("NHJC_MQTT__CLIENT_ID", "nhjc-{hostname}")
    assert load_settings().mqtt.client_id == f"nhjc-{socket.gethostname()}"
    monkeypatch.setenv("NHJC_MQTT__CLIENT_ID", "nhjc-{host}")
    with pytest.raises(SettingsError, match=r"mqtt.client_id .*only \{hostname\}"):
        load_settings()


def test_ownership_gives_up_before_the_database_frees_its_jobs(monkeypatch) -> None:
    monkeypatch.setenv("NHJC_OWNERSHIP__HEARTBEAT_S", "10")
    monkeypatch.setenv("NHJC_OWNERSHIP__DEADLINE_S", "10")
    with pytest.raises(SettingsError) as e:
        load_settings()
    assert "bad setting ownership.release_after_s" in str(e.value)
