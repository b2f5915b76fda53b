"""What can go wrong talking to a platform, typed by what the runner does next.

::

    UplinkError
    ├── RetryableError      try again later, with backoff (the record is fine)
    │   └── AuthError       the platform refused our credentials or token (401)
    └── RejectedError       the platform refused the records themselves (4xx other
                            than 401/408/429): keep them, count them, show them,
                            never retry blindly

Adapters raise only these; :mod:`uplink.http` translates aiohttp's exceptions and HTTP
statuses into them in one place.  ``RetryableError.reason`` is one of :data:`REASONS`
(a metrics label, so it stays a short fixed list); the detail goes to logs and the
outbox, never to a label.
"""

from __future__ import annotations

__all__ = ["REASONS", "AuthError", "RejectedError", "RetryableError", "UplinkError"]

# Why an attempt will be retried.  "transport" reasons mean the platform itself is
# unwell (the whole target pauses); the others concern one request.
REASONS = (
    "timeout",        # no complete answer within the target's timeout
    "connect",        # refused, reset, TLS handshake failed, DNS...
    "http_5xx",
    "http_408",
    "http_429",
    "http_other",     # 1xx/3xx: a platform misconfiguration, not the record's fault
    "response_code",  # HTTP 2xx but responseCode is not "0"
    "bad_reply",      # 2xx with a body we cannot use (not JSON, fields missing)
    "auth",           # token or password refused
    "register",       # registration refused: the enterprise is unknown to the platform
    "config",         # item configuration refused
)
TRANSPORT_REASONS = frozenset({"timeout", "connect", "http_5xx", "http_408", "http_429"})


class UplinkError(Exception):
    """Base of every error an adapter raises."""


class RetryableError(UplinkError):
    """Try again later; nothing is wrong with the records themselves."""

    def __init__(self, reason: str, detail: str = "", *, retry_after_s: float | None = None) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown retry reason {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        # The platform's Retry-After, when it sent one (429/503): a floor for the backoff.
        self.retry_after_s = retry_after_s

    @property
    def transport(self) -> bool:
        """True when the platform did not answer properly at all (it looks down)."""
        return self.reason in TRANSPORT_REASONS

    @property
    def pauses_target(self) -> bool:
        """True when trying other records now would fail the same way: the platform is
        unwell, or it refuses our credentials (one password serves every enterprise)."""
        return self.reason in TRANSPORT_REASONS or self.reason == "auth"


class AuthError(RetryableError):
    """401: the token expired or the credentials are wrong."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("auth", detail)


class RejectedError(UplinkError):
    """The platform refused the request's records (HTTP 4xx): do not resend as is."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
