"""Per-request routing: serve on the GPUs while they keep up, otherwise send to the fallback API."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Route", "RouteDecision", "Routing", "expected_wait_seconds", "route_request"]


class Routing(StrEnum):
    """How a gateway routes a pool's requests as a whole (per request, `route_request` decides)."""

    OVERFLOW = "overflow"
    """The pool's fallback takes what the GPUs cannot serve within its wait limit (Ebbtide)."""
    QUEUE = "queue"
    """No fallback: requests queue on the GPUs."""
    FALLBACK = "fallback"
    """Everything goes to the fallback."""


class Route(StrEnum):
    """Where a request goes."""

    GPU = "gpu"
    FALLBACK = "fallback"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """A routing choice with its reason (cold, saturated, within-wait, fallback-closed)."""

    route: Route
    reason: str
    expected_wait_seconds: float


def expected_wait_seconds(waiting: float, ready_replicas: int, replica_requests_per_second: float) -> float:
    """Queue wait a new request can expect: requests ahead of it over the pool's completion rate."""
    if ready_replicas <= 0 or replica_requests_per_second <= 0:
        return float("inf")
    return max(waiting, 0.0) / (ready_replicas * replica_requests_per_second)


def route_request(
    *,
    waiting: float,
    ready_replicas: int,
    replica_requests_per_second: float,
    max_wait_seconds: float,
    fallback_open: bool,
    reject_when_closed: bool = False,
) -> RouteDecision:
    """Route one request given the pool's queue, its ready replicas and their throughput.

    With no ready replica (scaled to zero or still starting) or an expected wait above the pool's
    limit, the request overflows to the fallback, unless the fallback is closed (no URL, budget cap),
    in which case it queues on the GPUs or, if asked, is rejected.
    """
    wait = expected_wait_seconds(waiting, ready_replicas, replica_requests_per_second)
    if wait <= max_wait_seconds:
        return RouteDecision(Route.GPU, "within-wait", wait)
    reason = "cold" if ready_replicas <= 0 else "saturated"
    if fallback_open:
        return RouteDecision(Route.FALLBACK, reason, wait)
    if reject_when_closed:
        return RouteDecision(Route.REJECT, f"{reason}-fallback-closed", wait)
    return RouteDecision(Route.GPU, f"{reason}-fallback-closed", wait)
