"""What can go wrong talking to a platform, typed by what the runner does next.

::

    UplinkError
    ├── RetryableError      try again later, with backoff (the record is fine)
    │   └── AuthError       the platform refused our credentials or token (401)
    ├── RefreshError        the platform forgot who we are, or changed our key:
    │                       register again, then retry the same request ONCE
    └── RejectedError       the platform refused the records themselves: keep them,
                            count them by reason, show them, never resend blindly

Adapters raise only these; :mod:`uplink.http` turns aiohttp's exceptions, HTTP
statuses and the ``responseCode`` of a reply into them in one place
(:func:`uplink.http.classify_reply`).  ``RetryableError.reason`` is one of
:data:`REASONS` and ``RejectedError.reason`` one of :data:`REJECT_REASONS` (metrics
labels, so short fixed lists); the platform's own words go to ``detail`` /
``message``, for logs and the outbox, never to a label.
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "REASONS",
    "REFRESHES",
    "REJECT_REASONS",
    "AuthError",
    "RefreshError",
    "RejectedError",
    "RetryableError",
    "UplinkError",
]

# Why an attempt will be retried.  "transport" reasons mean the platform itself is
# unwell (the whole target pauses); the others concern one request.
REASONS = (
    "timeout",        # no complete answer within the target's timeout
    "connect",        # refused, reset, TLS handshake failed, DNS...
    "http_5xx",
    "http_408",
    "http_429",
    "http_other",     # 1xx/3xx: a platform misconfiguration, not the record's fault
    "busy",           # HTTP 200 with a failure the platform says is passing (busy, try later)
    "bad_reply",      # 2xx with a body we cannot use (not JSON, fields missing)
    "auth",           # token or password refused
    "register",       # registration refused: the enterprise is unknown to the platform
    "config",         # item configuration refused
    "internal",       # an unexpected error of ours with one enterprise's records (a bug)
)
TRANSPORT_REASONS = frozenset({"timeout", "connect", "http_5xx", "http_408", "http_429", "busy"})

# Why records were refused for good.
REJECT_REASONS = (
    "http_4xx",        # an HTTP 4xx other than 401, 408 and 429
    "unknown_code",    # HTTP 200 with a failure code or message we do not know
    "refresh_failed",  # the same refresh-worthy failure again right after registering anew
    "not_sendable",    # refused before sending: the value is not a finite number
    "not_taken",       # an instrument the platform has no call for (gbt37947 without centerMeteringDataUrl)
)

# What a RefreshError asks the runner to renew before the one retry.
REFRESHES = ("register",)
Refresh = Literal["register"]

# Why a refresh is asked for (a metrics label as well).
REFRESH_REASONS = (
    "device_mismatch",  # the device id does not belong to this enterprise (a new registration gives one)
    "decrypt_failed",   # the platform could not decrypt our fields (a new registration gives a new key)
    "token_refused",    # the token was refused (401): a new one is fetched at registration
)


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
        """True when the platform did not answer properly at all, or said it is too
        busy to: it looks down, and other requests now would fare the same."""
        return self.reason in TRANSPORT_REASONS

    @property
    def pauses_target(self) -> bool:
        """True when trying other records now would fail the same way: the platform is
        unwell or busy, or it refuses our credentials (one password serves every enterprise)."""
        return self.reason in TRANSPORT_REASONS or self.reason == "auth"


class AuthError(RetryableError):
    """401 on the credentials themselves (a token request refused)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("auth", detail)


class RefreshError(UplinkError):
    """The platform refused the request because what registration gave us is stale:
    the device id is not this enterprise's, the field key is not the one it expects, or
    the token is no longer good.

    The runner forgets the enterprise's registration (and its configuration), calls
    ``register`` (and ``configure``) again and retries the same request once.  If that
    retry raises a RefreshError again, the runner treats the records as rejected
    (:meth:`exhausted`): a second refresh would only loop.
    """

    def __init__(self, refresh: Refresh, reason: str, detail: str = "") -> None:
        if refresh not in REFRESHES:
            raise ValueError(f"unknown refresh {refresh!r}")
        if reason not in REFRESH_REASONS:
            raise ValueError(f"unknown refresh reason {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.refresh: Refresh = refresh
        self.reason = reason
        self.detail = detail

    def exhausted(self) -> RejectedError:
        """The rejection to record when the retry after a refresh failed the same way."""
        return RejectedError(200, f"{self.reason} again after registering anew: {self.detail}",
                             reason="refresh_failed")


class RejectedError(UplinkError):
    """The platform refused the request's records: do not resend them as they are.

    ``status`` is the HTTP status (200 when the refusal came as a ``responseCode``),
    ``reason`` one of :data:`REJECT_REASONS`, ``message`` the platform's own words."""

    def __init__(self, status: int, message: str, *, reason: str = "http_4xx") -> None:
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        super().__init__(f"HTTP {status}: {message}" if reason == "http_4xx"
                         else f"{reason} (HTTP {status}): {message}")
        self.status = status
        self.message = message
        self.reason = reason
