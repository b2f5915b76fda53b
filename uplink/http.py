"""The one place where HTTP outcomes become :mod:`uplink.errors`, and where a target's
TLS context is built.

A reply is judged in this order:

==============================================  ==========================================
what came back                                  error
==============================================  ==========================================
no reply in time / connection or TLS failure    RetryableError timeout / connect
HTTP 5xx, 408, 429                              RetryableError http_5xx / http_408 / http_429
HTTP 401                                        AuthError (retry; the adapter may refresh)
other HTTP 4xx                                  RejectedError http_4xx
other non-2xx                                   RetryableError http_other
2xx, body not a JSON object                     RetryableError bad_reply
``responseCode`` = the flavour's success code   success: the reply object is returned
message holds 序列号与企业统一社会信用代码不符   RefreshError register (device_mismatch)
message holds 解密失败                           RefreshError register (decrypt_failed)
message says busy (繁忙, 稍后, busy)             RetryableError busy
any other ``responseCode``                      RejectedError unknown_code
==============================================  ==========================================

An unknown failure code is a rejection, not a retry: resending the same request to a
platform that refused it with HTTP 200 would loop forever.
"""

from __future__ import annotations

import json
import math
import os
import ssl
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from uplink.errors import AuthError, RefreshError, RejectedError, RetryableError

__all__ = ["TLS_VERSIONS", "classify_reply", "client_ssl_context", "post_json"]

_MAX_MESSAGE = 500  # platform messages are stored, not novels

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    _OLD = {"TLSv1": ssl.TLSVersion.TLSv1, "TLSv1.1": ssl.TLSVersion.TLSv1_1}
TLS_VERSIONS = {
    **_OLD,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}

# Failure messages seen from live platforms with HTTP 200, and what they call for.
_DEVICE_MISMATCH = "序列号与企业统一社会信用代码不符"  # the device id is not this enterprise's
_DECRYPT_FAILED = "解密失败"                          # wrong key, or a malformed hex string
_BUSY = ("繁忙", "稍后", "busy")                       # "system busy, try again later"


def _load_pkcs12(ctx: ssl.SSLContext, pkcs12_file: Path, password: str | None) -> None:
    """Put a PKCS#12 bundle's certificate, chain and key into ``ctx``.

    ``ssl`` loads certificates from files only, so the bundle is written out as PEM to a
    private temporary directory and removed at once; the key is written encrypted under
    a one-time random password, so it is never on disk in clear."""
    data = pkcs12_file.read_bytes()
    try:
        key, cert, chain = pkcs12.load_key_and_certificates(
            data, password.encode() if password is not None else None)
    except (ValueError, TypeError):
        # cryptography's text is not quoted: it says nothing more than this line does.
        raise ValueError(f"{pkcs12_file} is not a PKCS#12 bundle, or its password is wrong") from None
    if key is None or cert is None:
        raise ValueError(f"{pkcs12_file} holds no certificate with its key")
    once = os.urandom(24).hex().encode()
    pem = cert.public_bytes(serialization.Encoding.PEM) + b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in chain)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.BestAvailableEncryption(once))
    with tempfile.TemporaryDirectory(prefix="nhjc-tls-") as folder:
        cert_path, key_path = Path(folder, "cert.pem"), Path(folder, "key.pem")
        cert_path.write_bytes(pem)
        key_path.write_bytes(key_pem)
        ctx.load_cert_chain(str(cert_path), str(key_path), password=lambda: once)


def client_ssl_context(ca_file: Path | None, cert_file: Path | None, key_file: Path | None, *,
                       pkcs12_file: Path | None = None, pkcs12_password: str | None = None,
                       min_version: str | None = None, ciphers: str | None = None) -> ssl.SSLContext:
    """Verify the platform against ca_file (else the system store); present our client
    certificate when one is configured (mutual TLS), from PEM files or from a PKCS#12
    bundle and its password; hold to ``min_version`` (a key of :data:`TLS_VERSIONS`;
    default Python's, TLS 1.2) and ``ciphers`` (an OpenSSL cipher string).

    The settings checked these files at load; one that went away or changed since is a
    ValueError in one line (not an OSError, which would read as a database fault).  The
    message never holds the PKCS#12 password."""
    try:
        ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        if ciphers:
            ctx.set_ciphers(ciphers)
        if min_version is not None:
            with warnings.catch_warnings():
                # Python deprecates TLS 1.0/1.1; a platform that speaks nothing newer needs them.
                warnings.simplefilter("ignore", DeprecationWarning)
                ctx.minimum_version = TLS_VERSIONS[min_version]
        if cert_file is not None:
            ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None, password=lambda: b"")
        if pkcs12_file is not None:
            _load_pkcs12(ctx, pkcs12_file, pkcs12_password)
    except KeyError:
        raise ValueError(f"unknown TLS version {min_version!r} (one of {', '.join(TLS_VERSIONS)})") from None
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        files = ", ".join(str(f) for f in (ca_file, cert_file, key_file, pkcs12_file) if f is not None)
        raise ValueError(f"TLS files {files or '(none)'}: {exc.__class__.__name__}: {exc}") from None
    return ctx


def _message(body: Any, raw: bytes) -> str:
    if isinstance(body, dict) and body.get("responseMessage") not in (None, ""):
        return str(body["responseMessage"])[:_MAX_MESSAGE]
    return raw.decode("utf-8", "replace").strip()[:_MAX_MESSAGE]


def _retry_after(headers: Any) -> float | None:
    try:
        value = float(headers.get("Retry-After", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def classify_reply(body: Mapping[str, Any], *, success: str = "0", code_key: str = "responseCode",
                   url: str = "") -> None:
    """Return when ``body`` reports success (``code_key`` equal to ``success``); else raise
    the error the table above gives for its code and message."""
    code = body.get(code_key)
    if code is not None and str(code) == success:
        return
    message = _message(body, b"")
    detail = f"{url}: {code_key} {code!r}: {message}" if url else f"{code_key} {code!r}: {message}"
    if _DEVICE_MISMATCH in message:
        raise RefreshError("register", "device_mismatch", detail)
    if _DECRYPT_FAILED in message:
        raise RefreshError("register", "decrypt_failed", detail)
    if any(word in message.lower() for word in _BUSY):
        raise RetryableError("busy", detail)
    raise RejectedError(200, f"{code_key} {code!r}: {message}", reason="unknown_code")


async def post_json(session: aiohttp.ClientSession, url: str, payload: Any, *,
                    headers: dict[str, str] | None = None, success: str = "0") -> dict[str, Any]:
    """POST ``payload`` as UTF-8 JSON; return the reply object when its responseCode is
    ``success``, else raise as the table above says.

    The session's timeout applies.  Redirects are not followed: a platform that moved
    is a configuration matter for the operator, and following a 302 would turn our POST
    into a GET.
    """
    data = json.dumps(payload, ensure_ascii=False, allow_nan=False).encode()
    hdrs = {"Content-Type": "application/json;charset=UTF-8", **(headers or {})}
    try:
        async with session.post(url, data=data, headers=hdrs, allow_redirects=False) as resp:
            raw = await resp.read()
            status, resp_headers = resp.status, resp.headers
    except TimeoutError as exc:  # aiohttp's ServerTimeoutError is one too
        raise RetryableError("timeout", f"{url}: no reply in time") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise RetryableError("connect", f"{url}: {exc.__class__.__name__}: {exc}"[:_MAX_MESSAGE]) from exc

    try:
        body: Any = json.loads(raw) if raw else None
    except ValueError:
        body = None
    if status >= 500:
        raise RetryableError("http_5xx", f"HTTP {status}: {_message(body, raw)}",
                             retry_after_s=_retry_after(resp_headers))
    if status in (408, 429):
        raise RetryableError(f"http_{status}", f"HTTP {status}: {_message(body, raw)}",
                             retry_after_s=_retry_after(resp_headers))
    if status == 401:
        raise AuthError(f"HTTP 401: {_message(body, raw)}")
    if 400 <= status < 500:
        raise RejectedError(status, _message(body, raw))
    if not 200 <= status < 300:
        raise RetryableError("http_other", f"HTTP {status}")
    if not isinstance(body, dict):
        raise RetryableError("bad_reply", f"{url}: the reply is not a JSON object")
    classify_reply(body, success=success)
    return body
