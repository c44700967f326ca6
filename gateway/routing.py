"""Where one request goes: `policies.overflow.route_request` fed with the gateway's view of the pool.

The wait is estimated as the simulator estimates it (controller/sim/engine.py): the work ahead on the
Ready replicas over their throughput from the spec (`demand.replicaTokensPerSecond`), work counted in
tokens. Work ahead is what is left of this gateway's in-flight GPU requests (their estimated prompt and
output tokens, by lane, drained at the replicas' throughput as time passes, like the simulator's fluid
lanes, and never below what its streamed requests still waiting for a first token have ahead:
`PoolState.waiting`) plus the requests vLLM reports waiting or running that are not this gateway's
(from the scrape, at the pool's mean request size), plus a margin of one standard deviation of the sum
of their outputs (`policies.overflow.output_margin`). A request's own prefill counts against the objective, as in the
simulator, at the same throughput. With no Ready replica, a request the policy would send to the
fallback is held instead when a replica should be Ready before its objective runs out.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from gateway.directory import PoolState
from gateway.upstream import Endpoint
from policies.overflow import Lane, Route, RouteDecision, is_saturation, route_request
from policies.spec import FallbackCapAction

__all__ = ["Action", "Plan", "least_in_flight", "plan_request"]


class Action(Enum):
    """What the gateway does with a request."""

    GPU = "gpu"
    FALLBACK = "fallback"
    HOLD = "hold"
    REJECT = "reject"
    """The fallback is closed by the budget cap with `onFallbackCap: reject` (429)."""
    UNAVAILABLE = "unavailable"
    """No replica in time and every provider is cooling down after failures (503 with Retry-After)."""


@dataclass(slots=True)
class Plan:
    """A routing decision made concrete: the action, the endpoint or hold deadline, and why."""

    action: Action
    decision: RouteDecision
    lane: Lane = Lane.ON_TIME
    endpoint: Endpoint | None = None
    ready: int = 0
    """Routable replicas when the plan was made (a fallback with replicas Ready is saturation, unless...)."""
    saturation: bool = True
    """...`policies.overflow.is_saturation` says otherwise (a late request, the replay pricing it)."""
    hold_until: float = 0.0


def least_in_flight(endpoints: list[Endpoint]) -> Endpoint:
    """The endpoint with the fewest requests in flight from this gateway plus others' on its engine."""
    best = endpoints[0]
    best_load = best.in_flight + best.others
    for endpoint in endpoints[1:]:
        load = endpoint.in_flight + endpoint.others
        if load < best_load:
            best, best_load = endpoint, load
    return best


def plan_request(
    pool: PoolState,
    *,
    prompt_tokens: int,
    now: float,
    arrival: float,
    controller_tick: float,
    max_hold_seconds: float,
) -> Plan:
    """Route one request of `pool` arriving at `arrival` (monotonic seconds), decided at `now`."""
    spec = pool.spec
    tps = spec.demand.replica_tokens_per_second
    ready = pool.routable(now)
    n = len(ready)
    pool.drain(now, n)
    has_fallback = bool(pool.providers)
    fallback_open = has_fallback and pool.fallback_usable(now)
    # Only a budget cap that closed an existing fallback asks to reject (route_request's contract).
    reject = has_fallback and not pool.fallback_open and spec.budget.on_fallback_cap is FallbackCapAction.REJECT
    objective = spec.objective.ttft_seconds
    budget = objective - spec.demand.prefill_seconds(prompt_tokens) - (now - arrival)
    decision = route_request(
        waiting=pool.normal_ahead(),
        ready_replicas=n,
        replica_requests_per_second=tps,
        max_wait_seconds=spec.fallback.max_queue_wait_seconds,
        fallback_open=fallback_open,
        reject_when_closed=reject,
        late_waiting=pool.backlog_late,
        on_time_wait_seconds=budget if spec.routes_late_requests else None,
        late_lane=spec.objective.defer_late_requests,
        late_to_fallback=spec.fallback.take_late_requests,
    )
    if decision.route is Route.REJECT:
        return Plan(Action.REJECT, decision, ready=n)
    if n > 0:
        if decision.route is Route.GPU:
            return Plan(Action.GPU, decision, decision.lane, least_in_flight(ready), ready=n)
        saturation = is_saturation(decision, on_time_wait_seconds=budget, replay=spec.demand.replay)
        return Plan(Action.FALLBACK, decision, ready=n, saturation=saturation)
    cooling = has_fallback and pool.fallback_open and not fallback_open
    if decision.route is Route.GPU and not cooling:
        # No fallback to take it (none, or closed by the cap): wait for a replica, as long as allowed.
        return Plan(Action.HOLD, decision, decision.lane, hold_until=arrival + max_hold_seconds)
    deadline = now + max(budget, 0.0)
    if pool.ready_eta(now, controller_tick) <= deadline:
        return Plan(Action.HOLD, decision, hold_until=min(deadline, arrival + max_hold_seconds))
    return Plan(Action.UNAVAILABLE if cooling else Action.FALLBACK, decision)
