"""The Prometheus series the gateway exports and the controller reads: one table, two users.

Every series carries the pool's `namespace` and `pool` (its name). Counters are cumulative since the
gateway process started; the controller sums them over the gateway's pods and takes rates from deltas
(a counter that went down is a restarted pod, not negative demand).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ADDED_LATENCY",
    "BEYOND_OBJECTIVE_TOKENS",
    "FALLBACK_USD",
    "HELD",
    "IN_FLIGHT",
    "POOL_LABELS",
    "REQUESTS",
    "SATURATION_REQUESTS",
    "SATURATION_TOKENS",
    "TOKENS",
    "WORK_AHEAD",
    "RouteLabel",
    "TokenKind",
    "TokenSource",
]

POOL_LABELS = ("namespace", "pool")


class RouteLabel(StrEnum):
    """Where the gateway sent a request (the `route` label)."""

    GPU = "gpu"
    """To a Ready replica, on-time lane."""
    GPU_LATE = "gpu-late"
    """To a Ready replica, late lane (a larger vLLM priority number)."""
    FALLBACK = "fallback"
    """To a paid provider."""
    HELD_GPU = "held-gpu"
    """Held at zero Ready replicas, then served by a replica that became Ready in time."""
    HELD_FALLBACK = "held-fallback"
    """Held, then sent to a provider (no replica in time, or the hold queue was full)."""
    REJECTED = "rejected"
    """Answered with an error (fallback closed by `onFallbackCap: reject`, or every provider failed)."""


class TokenKind(StrEnum):
    """The `kind` label of the token counter."""

    PROMPT = "prompt"
    COMPLETION = "completion"


class TokenSource(StrEnum):
    """The `source` label: tokens from the upstream's `usage`, or estimated when it reported none."""

    REPORTED = "reported"
    ESTIMATED = "estimated"


REQUESTS = "ebbtide_gateway_requests_total"
"""Counter {namespace, pool, route}: requests finished, by where they went."""
TOKENS = "ebbtide_gateway_tokens_total"
"""Counter {namespace, pool, route, kind, source}: tokens of finished requests (offered load: all routes)."""
FALLBACK_USD = "ebbtide_gateway_fallback_usd_total"
"""Counter {namespace, pool, provider}: dollars spent at the fallback providers (tokens x prices)."""
SATURATION_REQUESTS = "ebbtide_gateway_saturation_requests_total"
"""Counter {namespace, pool}: requests sent to the fallback while a replica was Ready because the GPUs were
full (`policies.overflow.is_saturation`: not a late request the replay prices)."""
SATURATION_TOKENS = "ebbtide_gateway_saturation_tokens_total"
"""Counter {namespace, pool, kind}: tokens of those requests (the policy's overflow token rate)."""
BEYOND_OBJECTIVE_TOKENS = "ebbtide_gateway_beyond_objective_tokens_total"
"""Counter {namespace, pool, kind}: tokens of requests sent to the fallback because their own prefill is
longer than the objective (late on any number of replicas, with `fallback.takeLateRequests`). They are
counted in TOKENS too; the controller takes them out of the offered load the GPUs are sized and priced on."""
IN_FLIGHT = "ebbtide_gateway_in_flight"
"""Gauge {namespace, pool, route}: requests being served now, route gpu or fallback."""
HELD = "ebbtide_gateway_held"
"""Gauge {namespace, pool}: requests held now, waiting for a replica to become Ready."""
ADDED_LATENCY = "ebbtide_gateway_added_latency_seconds"
"""Histogram {namespace, pool}: time the gateway itself adds before the upstream sees the request."""
WORK_AHEAD = "ebbtide_gateway_work_ahead_seconds"
"""Gauge {namespace, pool, lane}: the wait a new request would expect now from the gateway's estimate of
the work ahead, in the normal lane or behind both (lane normal or late); +Inf with no replica Ready."""
