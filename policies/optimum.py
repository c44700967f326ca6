"""`offline_optimum`: a proven lower bound on what any policy pays to serve every request on time.

The constrained problem is the simulated world's own (`controller/sim`): whole replicas, each billed
from the moment it gets its GPU (its cold start included) until it is removed; a Ready replica serving
`work = prompt / prefill_tps + output / decode_tps` replica-seconds per second, in the engine's FIFO
lanes (one lane for plain vLLM, and for Ebbtide's gateway where its late requests go to a fallback that
is always open; two preemptive lanes where it can queue them in its late lane); at most `max_replicas`
replicas; replicas started and stopped only at the control loop's ticks. A request counts as served
on the GPUs only if its first token comes within the objective `T`; any other request is priced at
the fallback's per-token rate (what sending it to the API instead would have cost). The optimum is the
cheapest such plan with perfect foresight; this module computes a lower bound of it by dynamic
programming, exact in the billing and the replica count and relaxed only where the serving is
concerned. A policy's comparable cost (`slo_priced_usd` in the simulator) is its GPU bill plus the
fallback price of every request it did not serve on the GPUs within `T`.

The model. Time is cut into slots at every moment the number of Ready replicas can change: the ticks
`k * step` (scale-downs) and `k * step + cold_start` (a replica scheduled at a tick becomes Ready).
In each slot `s` of length `L_s` the plan has `n_s` Ready replicas, `0 <= n_s <= max_replicas`. It
costs `rate * (sum_s L_s n_s + cold_start * sum_s max(n_s - n_{s-1}, 0))`, where `rate` is one
replica's price per second, `n_{-1}` the initial replicas and `n_S` the replicas Ready at the horizon
(they serve the unbilled tail); a rise is allowed only one cold start after a tick. Each slot's
requests save their API price up to `U_s(n_s, j_s, n_{s+1}, j_{s+1})`, an upper bound of what any
on-time subset of them can save, where `j_s` is the level of the slot's *shared stretch* taken by the
slot before (below). The bound is `min over plans and levels of cost + API total - sum_s U_s`, found by
a DP over slots whose state is (Ready count, level): `(max_replicas + 1) * (SHARE_LEVELS + 1)` states
(`policies/slot_savings.py` computes `U`).

`U_s`: each slot is cut into `A` equal atoms (of about `T`, or `T / 4` in a slot that one replica
cannot serve whole; any cut gives a bound, finer ones more partitions to choose from). Take a *group*
of consecutive atoms, an on-time GPU subset `G` of its requests within one lane, `f` the group's
first arrival, `l` its last, and `i` the last request of `G`. Work arriving at or after `f` is served
no earlier than `f`, and a FIFO lane serves all of `G` before `i`, and `i`'s prefill, before `i`'s
first token, which comes by `a_i + T <= l + T`. So `sum_G work - decode_i <= cap = integral_f^{l+T}
n(t) dt`; with `lanes` lanes sharing the replicas, each lane's own last request is exempt, so `sum_G work
<= cap` plus the `lanes` largest decodes of the group's requests, and if `cap` is 0 no request with a
prefill is on time. The API dollars such a `G` saves are at most a
fractional knapsack: requests are binned by price per replica-second of work (`K` bins); a bin's
requests in the group, of value `V` and work `W` with densities in `[lo, hi]`, give any subset of work
`w` at most `min(w hi, V - (W - w) lo)` (what is left out is worth at least its work at `lo`), a
concave function of two segments, and the segments of all bins, filled densest first up to that
capacity, bound the sum. The groups of a partition hold disjoint requests, so their bounds add up,
and the least sum over all partitions of the slot into groups is again a bound: that is `U_s`, found
by a DP over atoms. A request whose own prefill exceeds `T` saves nothing.

The shared stretch. A window that starts in slot `s` can end up to `T` into slot `s + 1`, whose own
groups count the same capacity: the first `R = min(T, L_{s+1})` seconds of slot `s + 1`, `n_{s+1} * R`
replica-seconds. Let `y` be the part of it that slot `s`'s on-time requests actually use, a share
`y / (n_{s+1} R)` in `((j - 1) / m, j / m]` for one level `j` of `m = SHARE_LEVELS` (level 0: none).
Slot `s`'s groups count at most `min(j / m * n_{s+1} R, n_{s+1} * their window in R)` there. Each group
of slot `s + 1`, whose window is `[f, e]`, loses at least what `y` must occupy inside it: `n_{s+1} *
max((j - 1) / m * R - min(f, R) - max(R - e, 0), 0)` (of the stretch, at most the parts before `f` and
after `e` lie outside the window). So each boundary counts at most one level's width of the stretch
twice instead of all of it. A window that reaches past the next slot (a slot shorter than `T`), and a
group that reaches beyond its slot without closing it, count that part at `max_replicas` in full; above
16 replicas every window's part in the next slot is counted so, at `max_replicas` and without levels
(an overstatement of capacity, so still a bound), which keeps the work linear in the pool size.

Window LPs. A partition checks each group against its own window alone, and only its last request's
prefill. `policies/window_lp.py` checks every window on a grid of `T / 16` (or of the slot's length
over 128, where that is coarser) at once, as a linear program over the slot's requests (`x_i` in [0,
1]: on time or not): the arrival windows (the requests arriving in `[g1, g2 - T]`, as a group's
window, with the lanes' largest decodes as slack) and the *latest-start* windows (the requests
arriving from `g1` whose `a + T - prefill` is at most `g2`: a request is on time only if the work
ahead of it in its lane is done by then, so all but each lane's last request's work is done inside
`[f, e]`; the lanes' largest works as slack), each with the capacity a group of the same window
counts. Any dual of that LP bounds its value (weak duality), at every combination `(n, j, n', j')`
at once, as the capacities are known in closed form; so `U_s` becomes the least of the partition
bound and every certificate found (where `n_s > 0`). The DP runs in passes
(`policies/slot_bounds.py`): after each, the LP of every loaded slot is solved at the combination
the best plan uses; the next pass uses the lowered `U`. Every pass's value is a bound. When the plan
uses only combinations already solved, the value is the least over all plans of the model whose
`U_s` is the least of the partition bound and the slot's own LP value at each combination with
replicas (an unsolved combination's certificate is at least its own LP value, so no plan is cheaper
under that model); `WINDOW_PASSES` caps the passes.

Proof that no online policy on the simulated world pays less. Take any run, with its Ready counts
`n(t)` (piecewise constant on the slots, since the loop scales only at ticks and a replica is Ready
one cold start after it is scheduled) and its set of requests served on the GPUs within `T`. Every
replica lifetime is billed for at least its length (rounding up to the billing unit and the minimum
only add); the lifetimes' lengths sum to the Ready replica-seconds plus one cold start for every
replica that became Ready (a replica removed before Ready only adds), and every rise of `n` is such a
replica. So its GPU bill is at least the plan's cost. Its on-time requests in each slot form a subset
that satisfies every group inequality and every window row above under `n(t)`, with the capacity each
slot's on-time requests use of the next slot's shared stretch at its level `j_{s+1}`, so they save at
most `U_s(n_s, j_s, n_{s+1}, j_{s+1})` (the partition's and every certificate's); every other request
is priced at the fallback. Its comparable cost is therefore at least the DP's value for its own plan
and levels, which is at least the DP's minimum. Nothing here depends on how the policy decides, only
on what the world allows. Daily budget caps are ignored (dropping a constraint can only lower the
bound). With billing by the second and a minimum no longer than the cold start, the billing is counted
exactly; with coarser billing, see "Billing units".

Billing units. A replica that lives `L` seconds is billed `max(ceil(L / unit) * unit, minimum)`, at least
`max(L, F)` with `F = max(unit, minimum)` its billed floor, and so at least `w L + (1 - w) F` for every
weight `w` in [0, 1] (`max(L, F)` is the convex hull of the rounded bill over the lifetimes a Ready
replica can have, `L >= cold_start`). Summed over a run's replicas (a replica Ready at time 0 is
counted at `w L` alone: its floor may have been paid before), the GPU bill is at least `w` times the
lifetimes the DP counts plus `(1 - w) F` per start. So the same DP with each Ready second priced at `w
rate` and each start at `rate (w cold_start + (1 - w) F)` is a bound for every `w`, and the bound is the
best of those solved. Where `F` is no longer than the cold start, `max(L, F) = L` and `w = 1` is the
best (the bill by the second). Otherwise the value is concave in `w` (a least of functions affine in
it), and the best plan's own slope, its lifetimes less `F` per start, says on which side of `w` the
maximum lies. From `w = 1` the search tries at most `BILLING_STEPS` more weights: where the lines of
the last plan found rising and the last found falling cross, halving the interval until both are known
(and its low end last, if no plan has risen), and stops once the best value found reaches that
crossing. Each weight's value is a bound whatever the search does. The window LPs' certificates bound
the savings alone and hold at every weight, so all the weights share them. This counts what rounding
each replica's first unit costs (a short rental at hourly billing pays an hour), not the rounding of
later units: a weaker bound than the rounded bill where plans keep replicas for many units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from policies.slot_bounds import SlotBounds
from policies.slot_dp import Solution, one_pass
from policies.slot_savings import SlotSavings

__all__ = ["Optimum", "OptimumProblem", "OptimumTooLarge", "offline_optimum", "plan_cost", "slot_grid", "too_large"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

_EXACT_NEXT = 16
"""Up to this many replicas, a slot's bound depends on the next slot's Ready count and on the shared
stretch's levels; above, the window reaching into the next slot is counted at the pool's maximum and
in full (a looser bound, linear in the pool size)."""
SHARE_LEVELS = 4
"""Levels of the capacity two neighbouring slots share: each boundary counts at most a quarter of it
twice (see the module docstring)."""
WINDOW_PASSES = 8
"""Passes of window LPs at most (`policies/window_lp.py`); 0 leaves the partition bound alone. The
default week converges in three or four."""
BILLING_STEPS = 5
"""Weights tried at most after `w = 1` where a started replica's billed floor exceeds the cold start
(see "Billing units")."""
_MAX_WORK = 400_000_000
"""Largest DP solved, in slots x states^2 (a minute or two on one core): a week at 4-second ticks with
8 replicas fits, one at 2-second ticks does not."""


class OptimumTooLarge(ValueError):
    """The problem has more slots and replica counts than the DP solves in reasonable memory."""


@dataclass(frozen=True, slots=True)
class OptimumProblem:
    """The requests and the world's rules (arrays of equal length, sorted by arrival)."""

    arrival_s: FloatArray
    work_s: FloatArray
    """Replica-seconds of full throughput per request (the engine's work)."""
    prefill_s: FloatArray
    """Seconds of each request's own prefill (prompt / prefill tokens per second)."""
    api_usd: FloatArray
    """What the fallback would charge for each request."""
    horizon_s: float
    step_s: float
    """The control loop's tick: replicas are started and stopped only at its multiples."""
    cold_start_s: float
    objective_s: float
    """Time to first token within which a GPU request counts as served."""
    max_replicas: int
    replica_usd_per_hour: float
    """One replica's price (all its GPUs)."""
    gpus_per_replica: int = 1
    initial_replicas: int = 0
    """Replicas Ready at time 0 (billed from 0, no cold start)."""
    lanes: int = 2
    """FIFO lanes a request can be on time in, sharing the replicas: plain vLLM has one, Ebbtide's gateway
    two where its late lane can be reached (`controller.sim.bounds.serving_lanes`)."""
    billing_unit_s: float = 1.0
    """The provider's billing unit: a replica's time is rounded up to whole units."""
    minimum_billed_s: float = 0.0
    """The least a replica is billed, however short its life."""

    def __post_init__(self) -> None:
        n = self.arrival_s.size
        if not (self.work_s.size == self.prefill_s.size == self.api_usd.size == n):
            raise ValueError("arrays must have equal length")
        if n and np.any(np.diff(self.arrival_s) < 0):
            raise ValueError("arrivals must be sorted")
        if self.horizon_s <= 0 or self.step_s <= 0:
            raise ValueError("horizon and step must be > 0 s")
        if self.cold_start_s < 0 or self.objective_s < 0:
            raise ValueError("cold start and objective must be >= 0 s")
        if self.max_replicas < 0 or not 0 <= self.initial_replicas <= max(self.max_replicas, 0):
            raise ValueError("need 0 <= initial_replicas <= max_replicas")
        if not (self.billing_unit_s > 0 and self.minimum_billed_s >= 0):
            raise ValueError("need a billing unit > 0 s and a minimum >= 0 s")

    @property
    def billed_floor_s(self) -> float:
        """The least a started replica is billed: one unit, or the minimum if longer."""
        return max(self.billing_unit_s, self.minimum_billed_s)


@dataclass(frozen=True, slots=True)
class Optimum:
    """The bound's cost, how it splits, and the plan that reaches it."""

    total_usd: float
    gpu_usd: float
    fallback_usd: float
    gpu_hours: float
    starts: int
    """Replicas the plan starts (each pays one cold start)."""
    billing_weight: float
    """The weight `w` the GPU bill was counted with: 1 (by the second), or below 1 where each started
    replica's billed floor counts (see the module docstring, "Billing units")."""
    fallback_requests: float
    """Requests (fractionally, in proportion to their slot's unsaved dollars) left to the API."""
    slot_start_s: FloatArray
    """Each slot's start, and last the horizon."""
    ready: IntArray
    """The plan's Ready replicas in each slot, and last those Ready at the horizon."""


def slot_grid(horizon_s: float, step_s: float, cold_start_s: float) -> tuple[FloatArray, BoolArray]:
    """Slot boundaries (0 first, the horizon last) and, per boundary, whether Ready replicas may rise there.

    The last flag is for the horizon itself: a replica Ready exactly then serves the unbilled tail.
    """
    ticks = np.arange(math.floor(horizon_s / step_s) + 1, dtype=np.float64) * step_s
    points = np.concatenate((ticks, ticks + cold_start_s))
    points = np.unique(np.round(points[points < horizon_s], 9))
    bounds = np.append(points, horizon_s)
    since_tick = (bounds - cold_start_s) / step_s
    rise = (bounds >= cold_start_s - 1e-9) & np.isclose(since_tick, np.round(since_tick), atol=1e-6)
    rise[0] = False  # time 0 starts with the initial replicas
    return bounds, rise


def _levels(p: OptimumProblem) -> int:
    return SHARE_LEVELS if p.max_replicas <= _EXACT_NEXT else 0


def too_large(p: OptimumProblem) -> str:
    """Why the DP would take too long for this problem, or "" when it does not."""
    bounds, _ = slot_grid(p.horizon_s, p.step_s, p.cold_start_s)
    slots = bounds.size - 1
    states = (p.max_replicas + 1) * (_levels(p) + 1)
    if slots * states * states <= _MAX_WORK:
        return ""
    return (
        f"offline_optimum: {slots:,} slots of at most {p.step_s:g} s with 0..{p.max_replicas} replicas are too "
        "many to solve; use a longer control tick or a shorter horizon"
    )


def _starts(p: OptimumProblem, ready: IntArray) -> int:
    previous = np.concatenate(([p.initial_replicas], ready[:-1]))
    return int(np.maximum(ready - previous, 0).sum())


def _lived(p: OptimumProblem, lengths: FloatArray, ready: IntArray) -> tuple[float, int]:
    """(replica-seconds of the plan's lifetimes, its starts)."""
    starts = _starts(p, ready)
    return float(lengths @ ready[:-1]) + p.cold_start_s * starts, starts


def _crossing(rising: tuple[float, float], falling: tuple[float, float]) -> float:
    """The weight where two plans' lines `a + b w` cross (one rising, one falling)."""
    return (falling[0] - rising[0]) / (rising[1] - falling[1])


def _best(p: OptimumProblem, forced: IntArray | None = None) -> tuple[Solution, float]:
    """The best bound over the billing weights tried, and its weight (see "Billing units")."""
    problem = too_large(p)
    if problem:
        raise OptimumTooLarge(problem)
    bounds, rise = slot_grid(p.horizon_s, p.step_s, p.cold_start_s)
    savings = SlotSavings(p, bounds, _levels(p), exact_next=p.max_replicas <= _EXACT_NEXT)
    store = SlotBounds(p, bounds, savings)  # certificates hold at every weight: shared by all
    best, best_weight = _solve(p, store, rise, forced, 1.0), 1.0
    if p.billed_floor_s <= p.cold_start_s:
        return best, best_weight  # every replica that became Ready lived at least its floor
    lengths = np.diff(bounds)
    rate = p.replica_usd_per_hour / 3600.0

    def line(sol: Solution, weight: float) -> tuple[float, float]:
        """The plan's own value as `a + b w` over the weights (its savings as this pass found them)."""
        lived, starts = _lived(p, lengths, sol.ready)
        slope = rate * (lived - p.billed_floor_s * starts)
        return sol.total_usd - slope * weight, slope

    falling = line(best, 1.0)
    if falling[1] >= 0:
        return best, best_weight  # the value is concave in the weight: no lower weight is higher
    rising: tuple[float, float] | None = None
    low, high = 0.0, 1.0
    for step in range(BILLING_STEPS):
        # Halving, or the lowest weight left when the last try has found no plan that rises.
        weight = low if rising is None and step == BILLING_STEPS - 1 else (low + high) / 2.0
        if rising is not None:  # where the two plans' lines cross: the maximum if no third plan is lower
            cross = _crossing(rising, falling)
            weight = cross if low < cross < high else weight
        at = _solve(p, store, rise, forced, weight)
        if at.total_usd > best.total_usd:
            best, best_weight = at, weight
        a, b = line(at, weight)
        if b >= 0:
            low, rising = weight, (a, b)
        else:
            high, falling = weight, (a, b)
        if rising is not None:
            cross = _crossing(rising, falling)
            if rising[0] + rising[1] * cross <= best.total_usd + 1e-12 * (1.0 + abs(best.total_usd)):
                break  # no weight is higher than the best found, on the lines known
    return best, best_weight


def _solve(p: OptimumProblem, store: SlotBounds, rise: BoolArray, forced: IntArray | None, weight: float) -> Solution:
    """The DP over slots whose state is (Ready replicas, level of the shared stretch taken by the slot
    before), the GPU bill counted at `weight`; with `forced`, the Ready counts are fixed to it and only
    the levels are chosen.

    Pass after pass, the window LP of every slot is solved at the combination the best plan uses
    (`SlotBounds.tighten`), until the plan uses only combinations already solved (or `WINDOW_PASSES`
    passes are done; every pass's value is a bound).
    """
    best = one_pass(p, store, rise, forced, weight)
    for _ in range(WINDOW_PASSES):
        if not store.tighten(best.ready, best.level, best.saved):
            break
        best = one_pass(p, store, rise, forced, weight)
    return best


def plan_cost(p: OptimumProblem, ready: IntArray) -> float:
    """The model's cost of one plan, inf if the world forbids it.

    `ready` holds the Ready replicas of each slot of `slot_grid` and, last, those Ready at the horizon
    (they serve the unbilled tail).
    """
    bounds, _ = slot_grid(p.horizon_s, p.step_s, p.cold_start_s)
    ready = np.asarray(ready, dtype=np.int64)
    if ready.size != bounds.size or np.any(ready < 0) or np.any(ready > p.max_replicas):
        return math.inf
    return _best(p, forced=ready)[0].total_usd


def offline_optimum(p: OptimumProblem) -> Optimum:
    """The least cost of the model over every plan (see the module docstring), and that plan."""
    bounds, _ = slot_grid(p.horizon_s, p.step_s, p.cold_start_s)
    slots = bounds.size - 1
    lengths = np.diff(bounds)
    best, weight = _best(p)
    ready = best.ready
    rate = p.replica_usd_per_hour / 3600.0
    lived, starts = _lived(p, lengths, ready)
    replica_seconds = weight * lived + (1.0 - weight) * p.billed_floor_s * starts  # what the bound counts
    unsaved = best.api_total - best.saved
    counts = np.bincount(np.clip(np.searchsorted(bounds, p.arrival_s, side="right") - 1, 0, slots - 1), minlength=slots)
    share = np.divide(unsaved, best.api_total, out=np.zeros(slots), where=best.api_total > 0)
    gpu_usd = rate * replica_seconds
    fallback_usd = float(unsaved.sum())
    return Optimum(
        total_usd=gpu_usd + fallback_usd,
        gpu_usd=gpu_usd,
        fallback_usd=fallback_usd,
        gpu_hours=replica_seconds / 3600.0 * p.gpus_per_replica,
        starts=starts,
        billing_weight=weight,
        fallback_requests=float(np.sum(np.clip(share, 0.0, 1.0) * counts)),
        slot_start_s=bounds,
        ready=ready,
    )
