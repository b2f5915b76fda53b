"""The one settings model: a TOML file plus ``NHJC_`` environment variables.

The environment wins over the file; nested names are joined with ``__``
(``NHJC_MQTT__URL``, ``NHJC_UPLINK__TARGETS__PROVINCIAL__URL``).  Everything is
validated at start: :func:`load_settings` raises :class:`SettingsError` whose
message is one line naming the offending setting.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["Settings", "SettingsError", "load_settings"]


class SettingsError(Exception):
    """A setting is wrong; the message is one line naming it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MqttSettings(_Section):
    url: str = "mqtt://127.0.0.1:1883"
    client_id: str = "nhjc-pipeline"
    username: str | None = None
    password: str | None = None
    # TLS: a CA file enables certificate checks; client cert/key for mutual TLS.
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    # $share/{group}/... when several instances share the load; empty for one instance.
    share_group: str = ""
    keepalive_s: int = Field(30, ge=5, le=3600)
    # The most messages the broker may have in flight to us unacknowledged (MQTT 5
    # Receive Maximum).  With acknowledgement after commit this bounds memory too.
    receive_maximum: int = Field(2000, ge=1, le=65535)
    # How long the broker keeps our session (and queues messages for it) while we are
    # away.  Longer than any outage you plan to survive; the broker's own limits apply.
    session_expiry_s: int = Field(7 * 86400, ge=60)
    reconnect_min_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError("must look like mqtt://host:port or mqtts://host:port")
        try:
            _ = parts.port  # raises on a port that is not a number
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from None
        return v


class DatabaseSettings(_Section):
    url: str = "postgresql://nhjc@127.0.0.1:5432/nhjc"
    pool_size: int = Field(4, ge=1, le=100)
    command_timeout_s: float = Field(60.0, gt=0)
    # How long a new connection may take (a stalled database must not hold a stage).
    connect_timeout_s: float = Field(10.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if urlsplit(v).scheme not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URL")
        return v


class IngestSettings(_Section):
    # A batch is committed when it holds batch_rows readings or batch_ms has passed.
    batch_rows: int = Field(10_000, ge=1, le=1_000_000)
    batch_ms: int = Field(200, ge=1, le=60_000)
    max_frame_bytes: int = Field(256 * 1024, ge=1024)
    max_readings_per_frame: int = Field(5000, ge=1)
    # Readings further ahead of their arrival than this are flagged "early";
    # more than a day ahead they are rejected (WIRE: bad_timestamp).
    early_tolerance_s: float = Field(300.0, ge=0)
    # Readings older than this at arrival are stored, flagged "late".
    late_horizon_s: float = Field(7 * 86400.0, gt=0)


class ProcessingSettings(_Section):
    timezone: str = "Asia/Shanghai"
    # A segment between two readings longer than this is a gap (DOMAIN rules).
    max_gap_s: float = Field(1800.0, gt=0)
    # A register unchanged this long while the enterprise's other items move is "stuck".
    stuck_after_s: float = Field(6 * 3600.0, gt=0)
    # How often the aggregator looks for periods to recompute.
    interval_ms: int = Field(500, ge=10)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v


class TargetSettings(_Section):
    """One platform the uplink forwards to (docs/uplink.md)."""

    url: str
    # gbt37947: register / item configuration / data batches; token: SM4 PIN-block token,
    # one record per call.
    flavour: Literal["gbt37947", "token"] = "gbt37947"
    # 6-digit administrative region sent at registration; default: characters 3-8 of
    # the enterprise's credit code.
    region: str | None = Field(None, pattern=r"^\d{6}$")
    # Token flavour: the PIN (4 to 12 digits) and the SM4 key (32 hex digits) that
    # encrypts its PIN block.
    password: str | None = None
    sm4_key: str | None = Field(None, pattern=r"^[0-9a-fA-F]{32}$")
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
    backoff_max_s: float = Field(300.0, gt=0)
    # The data code the platform assigned to the enterprise total (consumption code 0000).
    total_code: str = Field("00-00-0000-000000-00", pattern=r"^\d{2}-\d{2}-\d{4}-\d{6}-\d{2}$")
    # On a target's first start, periods of this many past days are sent (and at least
    # the latest finished day, month and year).
    backfill_days: float = Field(1.0, ge=0, le=400)
    # Acknowledged outbox rows are forgotten after this many days.
    keep_days: float = Field(35.0, gt=0)
    enabled: bool = True

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _consistent(self) -> TargetSettings:
        if self.flavour == "token":
            if self.password is None or not re.fullmatch(r"\d{4,12}", self.password):
                raise ValueError("the token flavour needs password: a PIN of 4 to 12 digits")
            if self.sm4_key is None:
                raise ValueError("the token flavour needs sm4_key (32 hex digits)")
        if (self.key_file is not None) and self.cert_file is None:
            raise ValueError("key_file without cert_file")
        if self.backoff_max_s < self.backoff_min_s:
            raise ValueError("backoff_max_s is below backoff_min_s")
        return self


class UplinkSettings(_Section):
    targets: dict[str, TargetSettings] = Field(default_factory=dict)
    # How often each target looks for due periods when it is idle.
    interval_ms: int = Field(1000, ge=10)
    # A consumption revision is treated as final this long after it was handed out (a
    # transaction that took a revision number commits within this time); until then
    # the uplink looks at it again, so a slow commit cannot slip past it.
    settle_s: float = Field(60.0, ge=0)


class MetricsSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="NHJC_",
        env_nested_delimiter="__",
        extra="forbid",
        case_sensitive=False,
    )

    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    processing: ProcessingSettings = Field(default_factory=ProcessingSettings)
    uplink: UplinkSettings = Field(default_factory=UplinkSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence: explicit arguments, then environment, then the TOML file.
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def _one_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    name = ".".join(str(p) for p in err["loc"]) or "settings"
    env = "NHJC_" + "__".join(str(p) for p in err["loc"]).upper()
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"bad setting {name} ({env}): {err['msg']}{more}"


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Read the TOML file (if any) and the environment; raise SettingsError on any fault."""
    cls: type[Settings] = Settings
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise SettingsError(f"bad setting --config: no such file {path}")

        class _FromFile(Settings):
            model_config = SettingsConfigDict(**{**Settings.model_config, "toml_file": path})

        cls = _FromFile
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise SettingsError(_one_line(exc)) from None
    except ValueError as exc:  # TOML syntax errors and the like
        raise SettingsError(f"bad setting file {config_file}: {exc}".splitlines()[0]) from None
