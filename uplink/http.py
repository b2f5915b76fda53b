"""The one place where HTTP outcomes become :mod:`uplink.errors`.

Rules: a reply whose ``responseCode`` is "0" is success; a time-out, a
connection error, a 5xx, 408, 429 or any other ``responseCode`` is retried; 401 means
our token or password (retried after re-authenticating); any other 4xx is a rejection
of what we sent.
"""

from __future__ import annotations

import json
import math
import ssl
from pathlib import Path
from typing import Any

import aiohttp

from uplink.errors import AuthError, RejectedError, RetryableError

__all__ = ["client_ssl_context", "post_json"]

_MAX_MESSAGE = 500  # platform messages are stored, not novels


def client_ssl_context(ca_file: Path | None, cert_file: Path | None,
                       key_file: Path | None) -> ssl.SSLContext:
    """Verify the platform against ca_file (else the system store); present our client
    certificate when one is configured (mutual TLS).

    The settings checked these files at load; one that went away or changed since is a
    ValueError in one line (not an OSError, which would read as a database fault)."""
    try:
        ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        if cert_file is not None:
            ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None, password=lambda: b"")
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        files = ", ".join(str(f) for f in (ca_file, cert_file, key_file) if f is not None)
        raise ValueError(f"TLS files {files}: {exc.__class__.__name__}: {exc}") from None
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


async def post_json(session: aiohttp.ClientSession, url: str, payload: Any, *,
                    headers: dict[str, str] | None = None) -> dict[str, Any]:
    """POST ``payload`` as UTF-8 JSON; return the reply object when responseCode is "0".

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
    if str(body.get("responseCode")) != "0":
        raise RetryableError("response_code",
                             f"responseCode {body.get('responseCode')!r}: {_message(body, raw)}")
    return body
