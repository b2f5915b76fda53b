"""Uplink targets from the environment: only the URL is needed."""

from __future__ import annotations

import pytest

from config.settings import SettingsError, load_settings


def test_targets_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NHJC_UPLINK__TARGETS__PROVINCIAL__URL", "https://127.0.0.1:8443/sx/inf/upload/")
    monkeypatch.setenv("NHJC_UPLINK__TARGETS__NATIONAL__URL", "http://127.0.0.1:8788")
    monkeypatch.setenv("NHJC_UPLINK__TARGETS__NATIONAL__FLAVOUR", "yunnan")
    monkeypatch.setenv("NHJC_UPLINK__TARGETS__NATIONAL__PIN", "246810")
    monkeypatch.setenv("NHJC_UPLINK__TARGETS__NATIONAL__SECRET", "0123456789abcdeffedcba9876543210")
    monkeypatch.setenv("NHJC_UPLINK__TARGETS__NATIONAL__UPLOAD_TIME", "01:30:00")
    targets = load_settings().uplink.targets
    prov, nat = targets["provincial"], targets["national"]
    assert prov.url == "https://127.0.0.1:8443/sx/inf/upload"
    assert (prov.flavour, prov.region, prov.cert_file, prov.upload_time) == ("gbt37947", None, None, "00:10:00")
    assert (nat.flavour, nat.upload_time) == ("yunnan", "01:30:00")


@pytest.mark.parametrize(("env", "named"), [
    ({"FLAVOUR": "token"}, "flavour"),
    ({"SM4_KEY": "0123456789abcdeffedcba9876543210"}, "sm4_key"),
    ({"FLAVOUR": "yunnan", "PIN": "secret"}, "pin"),
    ({"FLAVOUR": "yunnan", "PIN": "246810", "SECRET": "short"}, "secret"),
    ({"TLS_CIPHERS": "NO-SUCH-CIPHER"}, "tls_ciphers"),
    ({"UPLOAD_TIME": "24:00:00"}, "upload_time"),
    ({"REGION": "3401"}, "region"),
    ({"TOTAL_CODE": "0000"}, "total_code"),
    ({"KEY_FILE": "/k.pem"}, "key_file"),
])
def test_bad_target_settings_stop_the_start(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                            named: str) -> None:
    monkeypatch.setenv("NHJC_UPLINK__TARGETS__NATIONAL__URL", "http://127.0.0.1:8788")
    for k, v in env.items():
        monkeypatch.setenv(f"NHJC_UPLINK__TARGETS__NATIONAL__{k}", v)
    with pytest.raises(SettingsError) as err:
        load_settings()
    message = str(err.value)
    assert "\n" not in message and "uplink.targets.national" in message and named in message
