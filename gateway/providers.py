"""The fallback providers of a pool: their URLs, keys, timeouts and cooldown after a failure.

A provider that fails (connect error, timeout, 408, 429, 5xx, 529, a stream that breaks before its first
content event) cools down for its `Retry-After` when it sent one (capped), else 5 s doubling to 60 s on
each consecutive failure. When the cooldown ends, one request probes it (half-open, as a circuit
breaker does); the others keep skipping it until that probe succeeds or fails.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import math

import aiohttp

from policies.spec import Provider

__all__ = [
    "COOLDOWN_BASE_SECONDS",
    "COOLDOWN_MAX_SECONDS",
    "FAILOVER_STATUSES",
    "RETRY_AFTER_MAX_SECONDS",
    "ProviderState",
    "is_failover_status",
    "retry_after_seconds",
]

COOLDOWN_BASE_SECONDS = 5.0
COOLDOWN_MAX_SECONDS = 60.0
RETRY_AFTER_MAX_SECONDS = 600.0
"""A provider asking for more than ten minutes is treated as asking for ten: it is probed again then."""
FAILOVER_STATUSES = frozenset({408, 429, 529})
"""Besides every 5xx: statuses after which the next provider is tried (never 400/401/403/404/422)."""


def is_failover_status(status: int) -> bool:
    """Whether an upstream status means "try the next provider" rather than "the request is wrong"."""
    return status >= 500 or status in FAILOVER_STATUSES


def retry_after_seconds(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or an HTTP date), None when absent or bad."""
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = (when - (now or dt.datetime.now(dt.UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX_SECONDS)


class ProviderState:
    """One provider of one pool as the gateway uses it: where to send, with which key, and its health."""

    __slots__ = (
        "api_key",
        "chat_url",
        "completions_url",
        "cooldown_until",
        "failures",
        "headers",
        "probing",
        "spec",
        "timeout",
    )

    def __init__(self, spec: Provider, api_key: str | None) -> None:
        self._configure(spec, api_key)
        self.cooldown_until = 0.0
        self.failures = 0
        self.probing = False

    def _configure(self, spec: Provider, api_key: str | None) -> None:
        self.spec = spec
        self.api_key = api_key
        base = spec.base_url.rstrip("/")
        self.chat_url = base + "/chat/completions"
        self.completions_url = base + "/completions"
        # Built once: the provider's key, never the client's; nothing else of the client's headers.
        self.headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = aiohttp.ClientTimeout(
            total=spec.total_timeout_seconds, sock_connect=spec.connect_timeout_seconds
        )

    @property
    def name(self) -> str:
        """The provider's name (the `provider` label)."""
        return self.spec.name

    def update(self, spec: Provider, api_key: str | None) -> ProviderState:
        """This provider with a changed spec or key. The same URL keeps the same object, so its health
        (and what requests in flight report into it) carries over; a new URL starts fresh."""
        if spec.base_url != self.spec.base_url:
            return ProviderState(spec, api_key)
        self._configure(spec, api_key)
        return self

    def available(self, now: float) -> bool:
        """Whether a request may be sent now: not cooling down, and no probe of it is under way."""
        return now >= self.cooldown_until and not self.probing

    def acquire(self, now: float) -> None:
        """Mark a request as sent; after a cooldown it is the probe that decides the provider's health."""
        if self.failures and now >= self.cooldown_until:
            self.probing = True

    def succeeded(self) -> None:
        """The provider answered: it is healthy again."""
        self.failures = 0
        self.cooldown_until = 0.0
        self.probing = False

    def failed(self, now: float, retry_after: float | None = None) -> float:
        """The provider failed: cool it down and return for how long."""
        self.failures += 1
        self.probing = False
        if retry_after is not None:
            seconds = retry_after
        else:
            seconds = min(COOLDOWN_BASE_SECONDS * 2 ** (self.failures - 1), COOLDOWN_MAX_SECONDS)
        self.cooldown_until = now + seconds
        return seconds

    def released(self) -> None:
        """A request ended without telling anything about the provider (the client left): no verdict."""
        self.probing = False
