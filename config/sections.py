"""What every settings section is built from: one-line faults naming a field, secrets
read from files, TLS files checked at load, URLs shown without their passwords.  The
sections themselves are in :mod:`config.settings` and :mod:`config.uplink`."""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    SecretStr,
    field_validator,
)

__all__ = ["SECRET_QUERY", "Fault", "Section", "check_backoff", "check_readable", "check_target_tls", "check_tls", "from_file",
           "read_file", "read_secret", "redact_url", "secret_value"]


class Fault(ValueError):
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
SECRET_QUERY = re.compile(r"password|secret|token", re.IGNORECASE)


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
        f"{pair.partition('=')[0]}=***" if SECRET_QUERY.search(pair.partition("=")[0]) else pair
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


def check_readable(path: Path) -> Path:
    """The path, when it names a file we can read; else ValueError in one line."""
    read_file(path)
    return path


def read_secret(path: Path) -> SecretStr:
    """A secret file's content, without the trailing newline editors and ``echo`` add."""
    check_readable(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    text = text.rstrip("\r\n")
    if not text:
        raise ValueError(f"{path} is empty")
    return SecretStr(text)


def from_file(section: BaseModel, name: str) -> None:
    """Fill secret ``name`` from ``name_file`` when that is given (never both)."""
    path = getattr(section, f"{name}_file")
    if path is None:
        return
    if getattr(section, name) is not None:
        raise Fault(f"{name}_file", f"give {name} or {name}_file, not both")
    try:
        value = read_secret(path)
    except ValueError as exc:
        raise Fault(f"{name}_file", str(exc)) from None
    setattr(section, name, value)


def check_tls(ca_file: Path | None, cert_file: Path | None, key_file: Path | None) -> None:
    """Build the TLS context once, so a file that is not a certificate or a key that
    does not match is found at start (each file exists: the field validators said so)."""
    if key_file is not None and cert_file is None:
        raise Fault("key_file", "key_file without cert_file")
    ctx = ssl.create_default_context()
    if ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=str(ca_file))
        except (ssl.SSLError, ValueError):
            raise Fault("ca_file", f"{ca_file} holds no PEM certificate") from None
    if cert_file is not None:
        try:
            # A callable password: an encrypted key fails here instead of prompting.
            ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None, password=lambda: b"")
        except (ssl.SSLError, ValueError) as exc:
            if "KEY_VALUES_MISMATCH" in str(exc):
                raise Fault("key_file", f"{key_file} is not the key of {cert_file}") from None
            where = f"{cert_file} with key {key_file}" if key_file else f"{cert_file}"
            raise Fault("cert_file", f"{where}: not a PEM certificate and unencrypted key") from None


def check_target_tls(pkcs12_file: Path | None, pkcs12_password: str | None, ciphers: str | None) -> None:
    """A PKCS#12 bundle that opens with its password and holds a certificate and key, and
    a cipher string OpenSSL accepts, found at start rather than at the first request."""
    if pkcs12_file is not None:
        from cryptography.hazmat.primitives.serialization import pkcs12

        try:
            key, cert, _ = pkcs12.load_key_and_certificates(
                pkcs12_file.read_bytes(), pkcs12_password.encode() if pkcs12_password is not None else None)
        except (ValueError, TypeError):
            raise Fault("pkcs12_file", f"{pkcs12_file}: not a PKCS#12 bundle, or pkcs12_password is wrong") from None
        if key is None or cert is None:
            raise Fault("pkcs12_file", f"{pkcs12_file} holds no certificate with its key")
    if ciphers is not None:
        try:
            ssl.create_default_context().set_ciphers(ciphers)
        except ssl.SSLError:
            raise Fault("tls_ciphers", "OpenSSL accepts no cipher of this string") from None


class Section(BaseModel):
    # hide_input_in_errors: a validation error's text never holds what was given
    # (it may be a password).
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    @field_validator("ca_file", "cert_file", "key_file", check_fields=False)
    @classmethod
    def _readable(cls, v: Path | None) -> Path | None:
        return None if v is None else check_readable(v)


def check_backoff(section: BaseModel, low: str, high: str) -> None:
    """A backoff's bounds: ``high`` may not be below ``low`` (the backoff doubles from
    one to the other), said of ``high``."""
    if getattr(section, high) < getattr(section, low):
        raise Fault(high, f"is below {low}")
