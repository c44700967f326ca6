"""Per-request routing: serve on the GPUs while they keep up, otherwise send to the fallback API.

Under a burst, a FIFO queue makes every request behind the burst late, also those that arrive once the
burst is past. With `on_time_wait_seconds` given, the gateway keeps two lanes on the GPUs: a request that
can still make the pool's latency objective goes in the normal lane, one that cannot goes in a late lane
served only when the normal lane is empty (vLLM's `--scheduling-policy priority`, the request's
`priority` field). Late requests are late either way; the ones behind them are not made late too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum, StrEnum

__all__ = [
    "INITIAL_COMPLETION_TOKENS",
    "LATE",
    "OUTPUT_EWMA_WEIGHT",
    "OUTPUT_MARGIN_SIGMAS",
    "Lane",
    "Route",
    "RouteDecision",
    "Routing",
    "expected_wait_seconds",
    "is_saturation",
    "output_margin",
    "route_request",
    "waiting_floor",
]

INITIAL_COMPLETION_TOKENS = 256.0
"""A gateway's estimate of a request's output before the pool's first usage report (no max_tokens)."""
OUTPUT_EWMA_WEIGHT = 0.05
"""Weight of each reported output in the gateway's moving mean of a pool's outputs (and of their spread)."""
OUTPUT_MARGIN_SIGMAS = 1.0
"""Standard deviations of the sum of the outputs ahead that a gateway adds to its work ahead (`output_margin`).
Measured on the simulator's weeks (README, "What the shipped gateway sees"): 0.5, 1 and 2 all raise the share
on time; 1 costs least or ties."""


LATE = "late"
"""The reason of a request sent to the fallback because it would miss the objective on the GPUs although its
wait is within the pool's limit: not saturation (the overflow that says the GPUs are short)."""


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


class Lane(IntEnum):
    """A GPU request's scheduling priority, as vLLM's `priority` field (lower is served first)."""

    ON_TIME = 0
    LATE = 1


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """A routing choice with its reason (cold, saturated, within-wait, on-time, late, fallback-closed)."""

    route: Route
    reason: str
    expected_wait_seconds: float
    lane: Lane = Lane.ON_TIME


def expected_wait_seconds(waiting: float, ready_replicas: int, replica_requests_per_second: float) -> float:
    """Queue wait a new request can expect: requests ahead of it over the pool's completion rate."""
    if ready_replicas <= 0 or replica_requests_per_second <= 0:
        return float("inf")
    return max(waiting, 0.0) / (ready_replicas * replica_requests_per_second)


def is_saturation(decision: RouteDecision, *, on_time_wait_seconds: float | None, replay: bool) -> bool:
    """Whether a request sent to the fallback while a replica was Ready says the GPUs are short.

    Every such request does, except one routed `late` (it would miss the objective on the GPUs, its wait
    within the pool's limit). That one does only when more replicas could have served it on time (its
    own prefill fits the objective: `on_time_wait_seconds` ≥ 0) and the pool does not replay its
    requests: the replay prices every late request itself, so counting it as overflow too buys replicas
    for it twice (measured: 1.33× the optimum at 10× against 1.30×), while without the replay it is the
    only sign of a queue that no longer builds up on the GPUs (1.51× against 2.03×).
    """
    if decision.reason != LATE:
        return True
    return not replay and on_time_wait_seconds is not None and on_time_wait_seconds >= 0


def output_margin(requests: float, output_variance: float) -> float:
    """Output tokens a gateway adds to the work ahead for what its mean cannot know.

    Each of the `requests` ahead is counted at the mean output, but outputs vary (`output_variance`, as
    learned from the answers): their sum is off by about the square root of `requests` times their
    standard deviation, and an estimate that runs low makes requests it calls on time late.
    `OUTPUT_MARGIN_SIGMAS` of that spread is added, nothing when nothing is ahead or outputs never vary.
    """
    if requests <= 0 or output_variance <= 0:
        return 0.0
    return OUTPUT_MARGIN_SIGMAS * math.sqrt(requests * output_variance)


def waiting_floor(waiting_work: float, head_prefill: float) -> float:
    """Work a gateway knows is still ahead on the GPUs: its requests that have not had a first token yet.

    `waiting_work` is their estimated work, `head_prefill` the estimated prefill of the one that has
    waited longest, which may be prefilling now (in a FIFO lane every other waiting request is wholly
    ahead). A gateway's backlog drains at the replicas' throughput, so when its estimates run low it
    falls below the true work and requests it thinks on time are late; this floor, the same for the
    gateway and the simulator, brings it back as long as its requests wait.
    """
    return max(waiting_work - head_prefill, 0.0)


def route_request(
    *,
    waiting: float,
    ready_replicas: int,
    replica_requests_per_second: float,
    max_wait_seconds: float,
    fallback_open: bool,
    reject_when_closed: bool = False,
    late_waiting: float = 0.0,
    on_time_wait_seconds: float | None = None,
    late_lane: bool = True,
    late_to_fallback: bool = False,
) -> RouteDecision:
    """Route one request given the pool's queue, its ready replicas and their throughput.

    `waiting` is the work ahead in the normal lane, `late_waiting` in the late lane (in requests, or in
    any unit `replica_requests_per_second` counts). Without `on_time_wait_seconds` there is one lane: a
    request whose expected wait is within `max_wait_seconds` queues on the GPUs. With it (the longest
    wait at which this request still makes the objective), a request queues in the normal lane when its
    wait there is within both limits, and in the late lane when it would miss the objective but the
    wait behind both lanes is within `max_wait_seconds`; with `late_lane` False there is one FIFO lane and
    such a request queues in it while its wait is within `max_wait_seconds`. With `late_to_fallback`, a
    request that would miss the objective goes to the fallback instead whenever it is open and a replica
    is Ready, with reason `late` while its wait is within `max_wait_seconds` (not saturation: the queue is
    within the pool's limit, and a prompt whose own prefill is longer than the objective is late on any
    number of replicas) and `saturated` beyond it; the lanes keep what the fallback cannot take.

    Otherwise (no ready replica, i.e. scaled to zero or still starting, or too long a wait) the request
    overflows to the fallback, unless the fallback is closed (no URL, budget cap), in which case it
    queues on the GPUs (in the normal lane if it can still make the objective there, else in the late
    lane) or, if asked, is rejected. Only a budget cap that closed an existing fallback asks to reject
    (`onFallbackCap: reject`): for a pool without a fallback the caller passes False.
    """
    wait = expected_wait_seconds(waiting, ready_replicas, replica_requests_per_second)
    if on_time_wait_seconds is None:
        if wait <= max_wait_seconds:
            return RouteDecision(Route.GPU, "within-wait", wait)
        return _away(wait, ready_replicas, fallback_open, reject_when_closed, Lane.ON_TIME)
    on_time = wait <= on_time_wait_seconds
    if on_time and wait <= max_wait_seconds:
        return RouteDecision(Route.GPU, "on-time", wait)
    if not on_time and late_to_fallback and fallback_open and ready_replicas > 0:
        return RouteDecision(Route.FALLBACK, LATE if wait <= max_wait_seconds else "saturated", wait)
    if not late_lane:
        if wait <= max_wait_seconds:
            return RouteDecision(Route.GPU, "within-wait", wait)
        return _away(wait, ready_replicas, fallback_open, reject_when_closed, Lane.ON_TIME)
    behind_all = expected_wait_seconds(waiting + late_waiting, ready_replicas, replica_requests_per_second)
    if not on_time and behind_all <= max_wait_seconds:
        return RouteDecision(Route.GPU, "late-within-wait", behind_all, Lane.LATE)
    # Queued for want of a fallback, a request that can still make the objective keeps the normal lane.
    if on_time:
        return _away(wait, ready_replicas, fallback_open, reject_when_closed, Lane.ON_TIME)
    return _away(behind_all, ready_replicas, fallback_open, reject_when_closed, Lane.LATE)


def _away(wait: float, ready_replicas: int, fallback_open: bool, reject: bool, lane: Lane) -> RouteDecision:
    reason = "cold" if ready_replicas <= 0 else "saturated"
    if fallback_open:
        return RouteDecision(Route.FALLBACK, reason, wait)
    if reject:
        return RouteDecision(Route.REJECT, f"{reason}-fallback-closed", wait)
    return RouteDecision(Route.GPU, f"{reason}-fallback-closed", wait, lane)
