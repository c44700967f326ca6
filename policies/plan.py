"""A policy that follows a replica plan made in advance: `offline_optimum`'s plan, replayed.

The plan says how many replicas should be Ready in each slot. A replica is Ready one cold start
after it is asked for, so at each step the policy asks for the most replicas the plan wants Ready
at any moment of the next cold start (keeping a replica through a dip shorter than a cold start,
which costs no more than stopping and restarting it), and keeps a replica the plan no longer wants
until its billed unit is nearly over (`policies.scaling.billing_hold`: with coarse billing that time
is paid already; by the second it changes nothing). Run through the simulator with Ebbtide's
gateway, it is what perfect foresight in scaling alone achieves: an achievable cost on the same
world, so the true optimum lies between `offline_optimum` and this run's SLO-priced cost.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from policies.scaling import billing_hold
from policies.spec import GPUPoolSpec
from policies.types import Decision, Limits, Observation, PolicyState, Reason

__all__ = ["ReplicaPlan", "follow_plan"]


@dataclass(frozen=True, slots=True)
class ReplicaPlan:
    """Ready replicas per slot: slot `i` starts `slot_start_s[i]` seconds after `start`."""

    start: dt.datetime
    slot_start_s: npt.NDArray[np.float64]
    ready: npt.NDArray[np.int64]
    cold_start_s: float

    def wanted(self, offset_s: float) -> int:
        """The most Ready replicas the plan wants between `offset_s` and one cold start later."""
        lo = max(int(np.searchsorted(self.slot_start_s, offset_s, side="right")) - 1, 0)
        hi = max(int(np.searchsorted(self.slot_start_s, offset_s + self.cold_start_s, side="right")), lo + 1)
        return int(self.ready[lo:hi].max()) if self.ready.size else 0


def follow_plan(
    spec: GPUPoolSpec, obs: Observation, state: PolicyState, now: dt.datetime, *, plan: ReplicaPlan
) -> tuple[Decision, PolicyState]:
    """Ask for what the plan needs Ready within one cold start; observations do not matter."""
    offset = (now - plan.start).total_seconds()
    desired = min(plan.wanted(offset), spec.target.max_replicas)
    limits = Limits(0, spec.target.max_replicas, Reason.POOL_MIN, "the plan", Reason.POOL_MAX)
    message = f"plan: {desired} replica(s) Ready within the next {plan.cold_start_s:.0f} s"
    reason = Reason.STEADY
    details: list[tuple[str, float]] = []
    if desired < obs.current_replicas:  # a replica whose billed unit is paid serves on for nothing
        desired, reason, message = billing_hold(spec, obs, now, desired, reason, message, details)
    return Decision(desired, True, reason, message, limits, tuple(details)), state
