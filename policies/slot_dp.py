"""One pass of `offline_optimum`'s DP over slots (`policies/optimum.py` holds the model and its proof).

The state is (Ready replicas, level of the shared stretch the slot before took); each slot's savings
bound `U` comes from `policies/slot_bounds.py`. Pure computation on arrays, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from policies.optimum import OptimumProblem
    from policies.slot_bounds import SlotBounds

__all__ = ["Solution", "one_pass"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Solution:
    """A pass's cheapest plan and levels, and its value (the bound at the pass's weight)."""

    total_usd: float
    ready: IntArray
    """Ready replicas per slot, then at the horizon."""
    level: IntArray
    """The level of each slot's shared stretch, then at the horizon."""
    saved: FloatArray
    """Each slot's bound on savings along the plan."""
    api_total: FloatArray


def one_pass(p: OptimumProblem, store: SlotBounds, rise: BoolArray, forced: IntArray | None, weight: float) -> Solution:
    """One DP over the slots with the bounds `store` holds now, the GPU bill counted at `weight`."""
    savings = store.savings
    slots = savings.slots
    top = p.max_replicas
    J = savings.in_share.size
    lengths = savings.lengths
    rate = p.replica_usd_per_hour / 3600.0
    start_s = weight * p.cold_start_s + (1.0 - weight) * p.billed_floor_s
    rate *= weight  # per Ready second
    counts = np.arange(top + 1)
    up = np.maximum(counts[None, :] - counts[:, None], 0)  # up[n, n']
    starts = (p.replica_usd_per_hour / 3600.0 * start_s * up)[:, None, :, None]
    blocked = np.where(up > 0, math.inf, 0.0)[:, None, :, None]
    # cost[n, j]: least cost of the slots before s with n Ready in slot s, its shared stretch at level j.
    cost = np.full((top + 1, J), math.inf)
    cost[: p.initial_replicas + 1, 0] = 0.0  # nothing came before time 0
    if forced is not None:
        cost[counts != forced[0]] = math.inf
    states = (top + 1) * J
    choice = np.zeros((slots + 1, states), dtype=np.int64)
    gained = np.zeros((slots + 1, states))
    columns = np.arange(states)
    to_n, to_j = columns // J, columns % J
    for s, u in store:  # u: (n, j, n' or 1, j')
        if not u.any():  # an idle slot saves nothing, whatever the levels
            cost = _idle_step(cost, rate * lengths[s] * counts, starts if rise[s + 1] else blocked, choice[s + 1])
            if forced is not None:
                cost[counts != forced[s + 1]] = math.inf
                choice[s + 1, np.repeat(counts != forced[s + 1], J)] = 0
            continue
        step = (cost + rate * lengths[s] * counts[:, None])[:, :, None, None] - u
        step = step + (starts if rise[s + 1] else blocked)
        if forced is not None:
            step[:, :, counts != forced[s + 1], :] = math.inf
        flat = np.broadcast_to(step, (top + 1, J, top + 1, J)).reshape(states, states)
        best = np.argmin(flat, axis=0)
        choice[s + 1] = best
        cost = flat[best, columns].reshape(top + 1, J)
        gained[s + 1] = np.broadcast_to(u, (top + 1, J, top + 1, J))[best // J, best % J, to_n, to_j]
    path = np.empty(slots + 1, dtype=np.int64)
    path[-1] = int(np.argmin(cost))
    total = float(cost.reshape(-1)[path[-1]])
    saved = np.zeros(slots)
    for s in range(slots, 0, -1):
        saved[s - 1] = gained[s, path[s]]
        path[s - 1] = choice[s, path[s]]
    total += float(savings.api_total.sum())
    return Solution(total, path // J, path % J, saved, savings.api_total)


def _idle_step(cost: FloatArray, held: FloatArray, moves: FloatArray, choice: IntArray) -> FloatArray:
    """One DP step over a slot that saves nothing: the same minimum, and the same first (n, j) of it in
    flat order, as the full step over (n, j, n', j'), in (n, n') alone; fills `choice` (per n', j')
    and returns the next cost (equal over j')."""
    J = cost.shape[1]
    first_j = np.argmin(cost, axis=1)
    here = cost[np.arange(cost.shape[0]), first_j] + held  # least over j, then the slot's own bill
    step = here[:, None] + moves[:, 0, :, 0]  # step[n, n']
    best_n = np.argmin(step, axis=0)
    nxt = step[best_n, np.arange(step.shape[1])]
    choice[:] = np.repeat(best_n * J + first_j[best_n], J)
    return np.repeat(nxt[:, None], J, axis=1)
