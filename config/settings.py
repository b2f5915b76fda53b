"""The one settings model: a TOML file plus ``NHJC_`` environment variables.

The environment wins over the file; nested names are joined with ``__``
(``NHJC_MQTT__URL``, ``NHJC_UPLINK__TARGETS__PROVINCIAL__URL``).  Everything is
validated at start: :func:`load_settings` raises :class:`SettingsError` whose
message is one line naming the offending setting.  Files named by the settings (TLS
certificates and keys, secrets) are read or checked here too, so a missing one stops
the start with that line instead of failing later.

Secrets (passwords, a Yunnan PIN and secret) are :class:`~pydantic.SecretStr`: their ``str`` and
``repr`` are stars, and no message shows them.  Each may come from a file instead
(``password_file``, ``pin_file``, ``secret_file``), as container deployments pass them.  A password
in ``database.url`` is moved into ``database.password`` at load, so the URL is safe to
print; :meth:`DatabaseSettings.dsn` puts it back for connecting, and nowhere else.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from config.sections import (
    SECRET_QUERY,
    Fault,
    Section,
    check_backoff,
    check_tls,
    from_file,
    read_file,
    redact_url,
    secret_value,
)
from config.uplink import TargetSettings, UplinkSettings

__all__ = ["DatabaseSettings", "IngestSettings", "MetricsSettings", "MqttSettings", "OwnershipSettings", "ProcessingSettings",
           "Settings", "SettingsError", "TargetSettings", "UplinkSettings", "load_settings", "read_file",
           "redact_url", "secret_value"]


class SettingsError(Exception):
    """A setting is wrong; the message is one line naming it."""


class MqttSettings(Section):
    url: str = "mqtt://127.0.0.1:1883"
    # "{hostname}" is replaced by the host's name at load (one setting for every replica,
    # a distinct id each, stable while the host keeps its name).
    client_id: str = "nhjc-pipeline"
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None  # the password is this file's content
    # TLS: a CA file enables certificate checks; client cert/key for mutual TLS.
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    # Several instances share the readings: each subscribes them as $share/{group}/...
    # (the same group everywhere, its own client_id each); empty for one instance.
    shared_group: str = ""
    keepalive_s: int = Field(30, ge=5, le=3600)
    # The most messages the broker may have in flight to us unacknowledged (MQTT 5
    # Receive Maximum).  With acknowledgement after commit this bounds memory too.
    receive_maximum: int = Field(2000, ge=1, le=65535)
    # How long the broker keeps our session (and queues messages for it) while we are
    # away.  Longer than any outage you plan to survive; the broker's own limits apply.
    session_expiry_s: int = Field(7 * 86400, ge=60)
    reconnect_min_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    # With a shared group: a peer adopting the session of a gone instance has drained it
    # once the broker has delivered nothing to it for this long (the broker sends a
    # session's backlog at once on connect, so a short quiet is enough).
    adopt_settle_s: float = Field(2.0, gt=0, le=300)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if "@" in parts.netloc:
            # Nothing would read them, and the URL is printed: credentials have their settings.
            raise ValueError("must not hold credentials: use mqtt.username and mqtt.password")
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError("must look like mqtt://host:port or mqtts://host:port")
        try:
            _ = parts.port  # raises on a port that is not a number
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from None
        return v

    @field_validator("shared_group")
    @classmethod
    def _group(cls, v: str) -> str:
        # A group name is one topic level: MQTT 5 forbids "/", "+" and "#" in it.
        if bad := sorted({c for c in v if c in "/+#"}):
            raise ValueError(f"a group name may not hold {' '.join(repr(c) for c in bad)}")
        if any(ord(c) < 32 for c in v):
            raise ValueError("a group name may not hold control characters")
        return v

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, v: str) -> str:
        if "{hostname}" in v:
            v = v.replace("{hostname}", socket.gethostname())
        if not v:
            raise ValueError("may not be empty (the broker keeps the session under this id)")
        if len(v.encode()) > 65535 or any(ord(c) < 32 for c in v):
            raise ValueError("must be printable text (at most 65535 bytes)")
        if "{" in v or "}" in v:
            raise ValueError("unknown placeholder: only {hostname} is replaced")
        return v

    @model_validator(mode="after")
    def _files(self) -> MqttSettings:
        from_file(self, "password")
        check_tls(self.ca_file, self.cert_file, self.key_file)
        check_backoff(self, "reconnect_min_s", "reconnect_max_s")
        return self


class DatabaseSettings(Section):
    # Never holds a password once loaded: one given in the URL moves to ``password``.
    url: str = "postgresql://nhjc@127.0.0.1:5432/nhjc"
    password: SecretStr | None = None
    password_file: Path | None = None  # the password is this file's content
    pool_size: int = Field(4, ge=1, le=100)
    command_timeout_s: float = Field(60.0, gt=0)
    # How long a new connection may take (a stalled database must not hold a stage).
    connect_timeout_s: float = Field(10.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URL")
        if "@" in v[len(parts.scheme) + 3 + len(parts.netloc):]:
            # A "/", "?" or "#" in a password ends the host part early and would show
            # the rest of the password as the database name.
            raise ValueError("a password in the URL must be percent-encoded (or use database.password)")
        return v

    @model_validator(mode="after")
    def _password(self) -> DatabaseSettings:
        parts = urlsplit(self.url)
        userinfo, at, hosts = parts.netloc.rpartition("@")
        user, colon, in_url = userinfo.partition(":")
        query = parse_qsl(parts.query, keep_blank_values=True)
        in_query = [v for k, v in query if k == "password"]
        if any(k != "password" and SECRET_QUERY.search(k) for k, _ in query):
            raise Fault("url", "a secret in the URL's query is not supported (use database.password for the password)")
        if colon or in_query:
            if self.password is not None or self.password_file is not None:
                raise Fault("url", "holds a password and database.password(_file) is given too: give one")
            given = unquote(in_url) if colon else in_query[-1]
            netloc = f"{user}{at}{hosts}"
            rest = urlencode([(k, v) for k, v in query if k != "password"]) if in_query else parts.query
            self.url = urlunsplit((parts.scheme, netloc, parts.path, rest, parts.fragment))
            self.password = SecretStr(given)
        from_file(self, "password")
        return self

    def dsn(self) -> str:
        """The URL with the password, to hand to the driver; never for a message."""
        if self.password is None:
            return self.url
        parts = urlsplit(self.url)
        userinfo, _, hosts = parts.netloc.rpartition("@")
        secret = quote(self.password.get_secret_value(), safe="")
        if userinfo:
            netloc = f"{userinfo}:{secret}@{hosts}"
            query = parts.query
        else:  # no user name: libpq and asyncpg also take the password as a parameter
            netloc = hosts
            query = f"{parts.query}&password={secret}" if parts.query else f"password={secret}"
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))

    @property
    def display_url(self) -> str:
        """The URL for messages: ``postgresql://nhjc:***@host:5432/nhjc``."""
        return redact_url(self.dsn())


class IngestSettings(Section):
    # A batch is committed when it holds batch_rows readings or batch_messages messages,
    # when batch_ms has passed, or when no message came for batch_idle_ms: the broker
    # sends no more until some are acknowledged (mqtt.receive_maximum: keep batch_messages at
    # half of it, so one batch is received while the last commits), or the gateways
    # have said all for now.
    batch_rows: int = Field(10_000, ge=1, le=1_000_000)
    batch_messages: int = Field(1000, ge=1, le=65_535)
    batch_ms: int = Field(200, ge=1, le=60_000)
    batch_idle_ms: int = Field(10, ge=1, le=60_000)
    max_frame_bytes: int = Field(256 * 1024, ge=1024)
    max_readings_per_frame: int = Field(5000, ge=1)
    # Readings further ahead of their arrival than this are flagged "early";
    # more than a day ahead they are rejected (quarantine reason bad_timestamp).
    early_tolerance_s: float = Field(300.0, ge=0)
    # Readings older than this at arrival are stored, flagged "late".
    late_horizon_s: float = Field(7 * 86400.0, gt=0)
    # After a failed commit (the database away) the batch is tried again after this
    # pause, doubling up to pause_max_s; nothing is acknowledged meanwhile.  The items
    # registry's look-ups wait the same way.
    pause_min_s: float = Field(0.2, gt=0)
    pause_max_s: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _pauses(self) -> IngestSettings:
        check_backoff(self, "pause_min_s", "pause_max_s")
        return self


class ProcessingSettings(Section):
    timezone: str = "Asia/Shanghai"
    # A segment between two readings longer than this is a gap (docs/processing.md).
    max_gap_s: float = Field(1800.0, gt=0)
    # A register unchanged this long while the enterprise's other items move is "stuck".
    stuck_after_s: float = Field(6 * 3600.0, gt=0)
    # How often the aggregator looks for periods to recompute.
    interval_ms: int = Field(500, ge=10)
    # Pending recomputations the aggregator claims per transaction.
    chunk: int = Field(1000, ge=1, le=100_000)
    # How often today's completeness is computed, and how long after a 15-minute period
    # closes its readings are expected to have arrived.
    completeness_interval_s: float = Field(60.0, gt=0)
    completeness_settle_s: float = Field(900.0, ge=0)
    # How often the platforms' scorecard (quality_daily) is recomputed, and how many
    # local days back from today each round rewrites (late readings change them).
    scorecard_interval_s: float = Field(300.0, gt=0)
    scorecard_days: int = Field(2, ge=1, le=62)
    # After a failed step (the database away, or a bug) a stage pauses this long,
    # doubling up to pause_max_s; its work stays in the database meanwhile.
    pause_min_s: float = Field(0.5, gt=0)
    pause_max_s: float = Field(5.0, gt=0)

    # A reading that arrives when its item already has a reading more than
    # this much later is flagged out_of_line (a clock error or a stray old value).
    out_of_line_s: float = Field(30 * 86400.0, gt=0)
    # Readings flagged unverified (their instrument out of verification, docs/metrology.md):
    # "invalid" makes the periods resting on them valid = false, "flag" only flags them.
    unverified: Literal["invalid", "flag"] = "invalid"

    @model_validator(mode="after")
    def _pauses(self) -> ProcessingSettings:
        check_backoff(self, "pause_min_s", "pause_max_s")
        return self

    @property
    def zone(self) -> ZoneInfo:
        """The time zone, as the stages use it (the text is checked at load)."""
        return ZoneInfo(self.timezone)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v


class OwnershipSettings(Section):
    """Work that must happen once (each uplink target, completeness, ...) is done by the
    instance holding its PostgreSQL advisory lock, on one connection of its own."""

    # How often the owner checks that connection (and a non-owner tries to take what is
    # free): a killed owner's work is taken over within about this long.
    heartbeat_s: float = Field(2.0, gt=0, le=60)
    # A check that gets no answer this long means the connection is gone: the owner
    # stops its owned work at once.
    deadline_s: float = Field(3.0, gt=0, le=60)
    # How long the database waits for a silent owner (its host gone without closing TCP)
    # before it ends the session and frees the locks (TCP keepalives and user timeout,
    # set for that connection).  The owner gives up after heartbeat_s + deadline_s, so
    # this must be longer: then two instances never work on one job at once.
    release_after_s: int = Field(20, ge=4, le=600)

    @model_validator(mode="after")
    def _order(self) -> OwnershipSettings:
        if self.heartbeat_s + self.deadline_s >= self.release_after_s:
            raise Fault("release_after_s", "must be longer than heartbeat_s + deadline_s "
                        "(the owner must give up before the database frees its locks)")
        return self


class MetricsSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="NHJC_",
        env_nested_delimiter="__",
        extra="forbid",
        case_sensitive=False,
        hide_input_in_errors=True,
    )

    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    processing: ProcessingSettings = Field(default_factory=ProcessingSettings)
    uplink: UplinkSettings = Field(default_factory=UplinkSettings)
    ownership: OwnershipSettings = Field(default_factory=OwnershipSettings)
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
    # Built from the error's place and message only, never from the input (a secret).
    err = exc.errors(include_input=False)[0]
    loc = tuple(str(p) for p in err["loc"])
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, Fault):
        loc += (cause.field,)
    name = ".".join(loc) or "settings"
    env = "NHJC_" + "__".join(loc).upper()
    msg = str(err["msg"]).removeprefix("Value error, ")
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"bad setting {name} ({env}): {msg}{more}"


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
