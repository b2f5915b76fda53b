"""The uplink's settings: one section per platform target, and the uplink's own."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from config.sections import (
    Fault,
    Section,
    check_backoff,
    check_readable,
    check_target_tls,
    check_tls,
    from_file,
    secret_value,
)

__all__ = ["TargetSettings", "UplinkSettings"]


class TargetSettings(Section):
    """One platform the uplink forwards to (docs/uplink.md)."""

    url: str
    # gbt37947: the reference interface (register, item configuration, data batches);
    # shandong: its variant with every data field SM4-encrypted, one record per call;
    # yunnan: a token from requestAK first, then data with a bearer token.
    flavour: Literal["gbt37947", "shandong", "yunnan"] = "gbt37947"
    # 6-digit administrative region sent at registration; default: characters 3-8 of
    # the enterprise's credit code.
    region: str | None = Field(None, pattern=r"^\d{6}$")
    # TLS: ca_file to verify the platform (default: the system store); cert_file and
    # key_file for mutual TLS.
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    timeout_s: float = Field(10.0, gt=0)
    # Records per data request (the token flavour always sends one).
    batch_size: int = Field(200, ge=1, le=10_000)
    # Requests in flight at once to this target.
    concurrency: int = Field(4, ge=1, le=64)
    # Real-time periods go this long after their 15-minute period closes.
    realtime_delay_s: float = Field(60.0, ge=0)
    # Daily upload time (HH:MM:SS, local); the platform's register reply overrides it.
    # Days go at this time on the next day, months on day 2, years on 2 January.
    upload_time: str = Field("00:10:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d:[0-5]\d$")
    backoff_min_s: float = Field(1.0, gt=0)
    # The longest pause of a failing target (and the longest wait of a record or an
    # enterprise's registration): a platform back from an outage gets traffic again
    # within it, while the outage still costs one request per pause.
    backoff_max_s: float = Field(30.0, gt=0)
    # The data code the platform assigned to the enterprise total (consumption code 0000).
    total_code: str = Field("00-00-0000-000000-00", pattern=r"^\d{2}-\d{2}-\d{4}-\d{6}-\d{2}$")
    # On a target's first start, periods of this many past days are sent (and at least
    # the latest finished day, month and year).
    backfill_days: float = Field(1.0, ge=0, le=400)
    # Acknowledged outbox rows are forgotten after this many days.
    keep_days: float = Field(35.0, gt=0)
    # A period already sent whose value changes (late data, a backfill draining) is
    # sent again only once it has stayed unchanged this long, so a period revised by
    # every batch of a backlog goes once or twice rather than once per batch; however
    # often it changes, it goes at the latest resend_max_wait_s after its first change.
    # Periods never sent keep their schedule (real-time: realtime_delay_s).
    resend_quiet_s: float = Field(120.0, ge=0)
    resend_max_wait_s: float = Field(1800.0, ge=0)
    enabled: bool = True

    # -- issue 10: what each flavour and platform needs (docs/uplink.md, "Flavours") --
    # yunnan: the enterprise's PIN (4 to 12 digits) and the platform-issued secret (at
    # least 16 ASCII characters; its first 16 are the SM4 key).  The enterprise
    # registry's pin and secret for this target win over these.
    pin: SecretStr | None = None
    pin_file: Path | None = None  # the PIN is this file's content
    secret: SecretStr | None = None
    secret_file: Path | None = None  # the secret is this file's content
    # TLS beyond PEM: a PKCS#12 client certificate bundle and its password; the lowest
    # TLS version offered; an OpenSSL cipher string (a TLS 1.1-only platform needs
    # tls_min_version = "TLSv1.1" and tls_ciphers = "DEFAULT:@SECLEVEL=0").
    pkcs12_file: Path | None = None
    pkcs12_password: SecretStr | None = None
    pkcs12_password_file: Path | None = None
    tls_min_version: Literal["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"] | None = None
    tls_ciphers: str | None = None
    # gbt37947 item configuration: collectSystemName of every item, and the statTypes
    # each item is configured for (one entry per statType; [0] sends one entry).
    collect_system_name: str = Field("nhjc", min_length=1, max_length=100)
    config_stat_types: list[Literal[0, 1, 2, 3]] = Field([0], min_length=1)
    # How `valid` is written: "boolean" (true/false), "one_valid" ("1" valid, "0" not),
    # "zero_valid" ("0" valid, "1" not).  Default: boolean, but zero_valid for shandong.
    valid_style: Literal["boolean", "one_valid", "zero_valid"] | None = None
    # yunnan: the data call's path under the platformURL of the token reply (else url).
    data_path: str = Field("uploadData", pattern=r"^[A-Za-z0-9_./-]+$")

    # -- issue 11: measuring instruments (docs/uplink.md, "Instruments") --
    # Send the instrument records (meters, verifications, replacements) where the
    # flavour has a call for them (yunnan, gbt37947 with centerMeteringDataUrl).
    meters: bool = True
    # yunnan: the instrument calls' paths under the platformURL of the token reply (else url).
    gauge_path: str = Field("gaugeConfigure", pattern=r"^[A-Za-z0-9_./-]+$")
    gauge_verify_path: str = Field("gaugeVerifyConfigure", pattern=r"^[A-Za-z0-9_./-]+$")
    gauge_replace_path: str = Field("gaugeReplaceConfigure", pattern=r"^[A-Za-z0-9_./-]+$")

    @model_validator(mode="before")
    @classmethod
    def _no_token(cls, data: Any) -> Any:
        # The token flavour matched no platform; its settings point to yunnan in one line.
        if isinstance(data, dict):
            if data.get("flavour") == "token":
                raise Fault("flavour", 'the "token" flavour is gone: use flavour = "yunnan" with pin and secret')
            for old in ("password", "password_file", "sm4_key", "sm4_key_file"):
                if old in data:
                    raise Fault(old, f'{old} belonged to the removed "token" flavour: use flavour = "yunnan"'
                                 " with pin and secret")
        return data

    @field_validator("pkcs12_file", "pin_file", "secret_file", "pkcs12_password_file")
    @classmethod
    def _readable_extra(cls, v: Path | None) -> Path | None:
        return None if v is None else check_readable(v)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if "@" in parts.netloc:
            # The URL is printed and stored with delivery errors: no credentials in it.
            raise ValueError("must not hold credentials")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _consistent(self) -> TargetSettings:
        for name in ("pin", "secret", "pkcs12_password"):
            from_file(self, name)
        pin, secret = secret_value(self.pin), secret_value(self.secret)
        if pin is not None and not re.fullmatch(r"[0-9]{4,12}", pin):
            raise Fault("pin_file" if self.pin_file else "pin", "must be a PIN of 4 to 12 digits")
        if secret is not None and (len(secret) < 16 or not secret.isascii() or not secret.isprintable()):
            raise Fault("secret_file" if self.secret_file else "secret",
                         "must be at least 16 printable ASCII characters")
        check_tls(self.ca_file, self.cert_file, self.key_file)
        check_target_tls(self.pkcs12_file, secret_value(self.pkcs12_password), self.tls_ciphers)
        check_backoff(self, "backoff_min_s", "backoff_max_s")
        return self


class UplinkSettings(Section):
    targets: dict[str, TargetSettings] = Field(default_factory=dict)
    # How often each target looks for due periods when it is idle.
    interval_ms: int = Field(1000, ge=10)
    # A consumption revision is treated as final this long after it was handed out (a
    # transaction that took a revision number commits within this time); until then
    # the uplink looks at it again, so a slow commit cannot slip past it.
    settle_s: float = Field(60.0, ge=0)
    # After a failed step of a target (the database away, or a bug; not the platform,
    # whose failures pause the target with the target's own backoff) it pauses this
    # long, doubling up to pause_max_s.
    pause_min_s: float = Field(0.5, gt=0)
    pause_max_s: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _pauses(self) -> UplinkSettings:
        check_backoff(self, "pause_min_s", "pause_max_s")
        return self
