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

import re
import ssl
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
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

__all__ = ["Settings", "SettingsError", "load_settings", "read_file", "redact_url", "secret_value"]


class SettingsError(Exception):
    """A setting is wrong; the message is one line naming it."""


class _Fault(ValueError):
    """Raised by a section's model validator about one of its fields, so the message
    names that field rather than the whole section."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def secret_value(secret: SecretStr | None) -> str | None:
    """The plain text of a secret, for the one call that needs it (never for a message)."""
    return None if secret is None else secret.get_secret_value()


# URL query parameters holding a secret: password, sslpassword, a token ... (not passfile,
# which names a file).
_SECRET_QUERY = re.compile(r"password|secret|token", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` as messages show it: any password (in the user part or the query) is ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}{':***' if colon else ''}@{hosts}"
    query = "&".join(
        f"{pair.partition('=')[0]}=***" if _SECRET_QUERY.search(pair.partition("=")[0]) else pair
        for pair in parts.query.split("&") if pair
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def read_file(path: Path) -> bytes:
    """The file's bytes; else ValueError in one line naming the path and the trouble."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"no such file {path}") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a directory, not a file") from None
    except PermissionError:
        raise ValueError(f"cannot read {path}: permission denied") from None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc.__class__.__name__}") from None


def _check_readable(path: Path) -> Path:
    """The path, when it names a file we can read; else ValueError in one line."""
    read_file(path)
    return path


def _read_secret(path: Path) -> SecretStr:
    """A secret file's content, without the trailing newline editors and ``echo`` add."""
    _check_readable(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    text = text.rstrip("\r\n")
    if not text:
        raise ValueError(f"{path} is empty")
    return SecretStr(text)


def _from_file(section: BaseModel, name: str) -> None:
    """Fill secret ``name`` from ``name_file`` when that is given (never both)."""
    path = getattr(section, f"{name}_file")
    if path is None:
        return
    if getattr(section, name) is not None:
        raise _Fault(f"{name}_file", f"give {name} or {name}_file, not both")
    try:
        value = _read_secret(path)
    except ValueError as exc:
        raise _Fault(f"{name}_file", str(exc)) from None
    setattr(section, name, value)


def _check_tls(ca_file: Path | None, cert_file: Path | None, key_file: Path | None) -> None:
    """Build the TLS context once, so a file that is not a certificate or a key that
    does not match is found at start (each file exists: the field validators said so)."""
    if key_file is not None and cert_file is None:
        raise _Fault("key_file", "key_file without cert_file")
    ctx = ssl.create_default_context()
    if ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=str(ca_file))
        except (ssl.SSLError, ValueError):
            raise _Fault("ca_file", f"{ca_file} holds no PEM certificate") from None
    if cert_file is not None:
        try:
            # A callable password: an encrypted key fails here instead of prompting.
            ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None, password=lambda: b"")
        except (ssl.SSLError, ValueError) as exc:
            if "KEY_VALUES_MISMATCH" in str(exc):
                raise _Fault("key_file", f"{key_file} is not the key of {cert_file}") from None
            where = f"{cert_file} with key {key_file}" if key_file else f"{cert_file}"
            raise _Fault("cert_file", f"{where}: not a PEM certificate and unencrypted key") from None


def _check_target_tls(pkcs12_file: Path | None, pkcs12_password: str | None, ciphers: str | None) -> None:
    """A PKCS#12 bundle that opens with its password and holds a certificate and key, and
    a cipher string OpenSSL accepts, found at start rather than at the first request."""
    if pkcs12_file is not None:
        from cryptography.hazmat.primitives.serialization import pkcs12

        try:
            key, cert, _ = pkcs12.load_key_and_certificates(
                pkcs12_file.read_bytes(), pkcs12_password.encode() if pkcs12_password is not None else None)
        except (ValueError, TypeError):
            raise _Fault("pkcs12_file", f"{pkcs12_file}: not a PKCS#12 bundle, or pkcs12_password is wrong") from None
        if key is None or cert is None:
            raise _Fault("pkcs12_file", f"{pkcs12_file} holds no certificate with its key")
    if ciphers is not None:
        try:
            ssl.create_default_context().set_ciphers(ciphers)
        except ssl.SSLError:
            raise _Fault("tls_ciphers", "OpenSSL accepts no cipher of this string") from None


class _Section(BaseModel):
    # hide_input_in_errors: a validation error's text never holds what was given
    # (it may be a password).
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    @field_validator("ca_file", "cert_file", "key_file", check_fields=False)
    @classmethod
    def _readable(cls, v: Path | None) -> Path | None:
        return None if v is None else _check_readable(v)


class MqttSettings(_Section):
    url: str = "mqtt://127.0.0.1:1883"
    client_id: str = "nhjc-pipeline"
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None  # the password is this file's content
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

    @model_validator(mode="after")
    def _files(self) -> MqttSettings:
        _from_file(self, "password")
        _check_tls(self.ca_file, self.cert_file, self.key_file)
        if self.reconnect_max_s < self.reconnect_min_s:  # the backoff needs min <= max
            raise _Fault("reconnect_max_s", "is below reconnect_min_s")
        return self


class DatabaseSettings(_Section):
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
        if any(k != "password" and _SECRET_QUERY.search(k) for k, _ in query):
            raise _Fault("url", "a secret in the URL's query is not supported (use database.password for the password)")
        if colon or in_query:
            if self.password is not None or self.password_file is not None:
                raise _Fault("url", "holds a password and database.password(_file) is given too: give one")
            given = unquote(in_url) if colon else in_query[-1]
            netloc = f"{user}{at}{hosts}"
            rest = urlencode([(k, v) for k, v in query if k != "password"]) if in_query else parts.query
            self.url = urlunsplit((parts.scheme, netloc, parts.path, rest, parts.fragment))
            self.password = SecretStr(given)
        _from_file(self, "password")
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
    # After a failed commit (the database away) the batch is tried again after this
    # pause, doubling up to pause_max_s; nothing is acknowledged meanwhile.  The items
    # registry's look-ups wait the same way.
    pause_min_s: float = Field(0.2, gt=0)
    pause_max_s: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _pauses(self) -> IngestSettings:
        if self.pause_max_s < self.pause_min_s:  # the backoff needs min <= max
            raise _Fault("pause_max_s", "is below pause_min_s")
        return self


class ProcessingSettings(_Section):
    timezone: str = "Asia/Shanghai"
    # A segment between two readings longer than this is a gap (DOMAIN rules).
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
    # After a failed step (the database away, or a bug) a stage pauses this long,
    # doubling up to pause_max_s; its work stays in the database meanwhile.
    pause_min_s: float = Field(0.5, gt=0)
    pause_max_s: float = Field(5.0, gt=0)

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


class TargetSettings(_Section):
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
    backoff_max_s: float = Field(300.0, gt=0)
    # The data code the platform assigned to the enterprise total (consumption code 0000).
    total_code: str = Field("00-00-0000-000000-00", pattern=r"^\d{2}-\d{2}-\d{4}-\d{6}-\d{2}$")
    # On a target's first start, periods of this many past days are sent (and at least
    # the latest finished day, month and year).
    backfill_days: float = Field(1.0, ge=0, le=400)
    # Acknowledged outbox rows are forgotten after this many days.
    keep_days: float = Field(35.0, gt=0)
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

    @model_validator(mode="before")
    @classmethod
    def _no_token(cls, data: Any) -> Any:
        # The token flavour matched no platform; its settings point to yunnan in one line.
        if isinstance(data, dict):
            if data.get("flavour") == "token":
                raise _Fault("flavour", 'the "token" flavour is gone: use flavour = "yunnan" with pin and secret')
            for old in ("password", "password_file", "sm4_key", "sm4_key_file"):
                if old in data:
                    raise _Fault(old, f'{old} belonged to the removed "token" flavour: use flavour = "yunnan"'
                                 " with pin and secret")
        return data

    @field_validator("pkcs12_file", "pin_file", "secret_file", "pkcs12_password_file")
    @classmethod
    def _readable_extra(cls, v: Path | None) -> Path | None:
        return None if v is None else _check_readable(v)

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
            _from_file(self, name)
        pin, secret = secret_value(self.pin), secret_value(self.secret)
        if pin is not None and not re.fullmatch(r"[0-9]{4,12}", pin):
            raise _Fault("pin_file" if self.pin_file else "pin", "must be a PIN of 4 to 12 digits")
        if secret is not None and (len(secret) < 16 or not secret.isascii() or not secret.isprintable()):
            raise _Fault("secret_file" if self.secret_file else "secret",
                         "must be at least 16 printable ASCII characters")
        _check_tls(self.ca_file, self.cert_file, self.key_file)
        _check_target_tls(self.pkcs12_file, secret_value(self.pkcs12_password), self.tls_ciphers)
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
    # After a failed step of a target (the database away, or a bug; not the platform,
    # whose failures pause the target with the target's own backoff) it pauses this
    # long, doubling up to pause_max_s.
    pause_min_s: float = Field(0.5, gt=0)
    pause_max_s: float = Field(5.0, gt=0)


class MetricsSettings(_Section):
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
    if isinstance(cause, _Fault):
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
