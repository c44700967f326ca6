"""`offline_optimum`: a proven lower bound on what any policy pays to serve every request on time.

The constrained problem is the simulated world's own (`controller/sim`): whole replicas, each billed
from the moment it gets its GPU (its cold start included) until it is removed; a Ready replica serving
`work = prompt / prefill_tps + output / decode_tps` replica-seconds per second, in the engine's FIFO
lanes (one lane for plain vLLM, two preemptive lanes for Ebbtide's gateway); at most `max_replicas`
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
requests save their API price up to `U_s(n_s, n_{s+1})`, an upper bound of what any on-time subset of
them can save. The bound is `min over plans of cost + API total - sum_s U_s`, found by a DP over
slots whose state is the Ready count.

`U_s`: each slot is cut into `A` atoms (of length at least `T` where the slot allows). Take a *group*
of consecutive atoms, an on-time GPU subset `G` of its requests within one lane, `f` the group's
first arrival, `l` its last, and `i` the last request of `G`. Work arriving at or after `f` is served
no earlier than `f`, and a FIFO lane serves all of `G` before `i`, and `i`'s prefill, before `i`'s
first token, which comes by `a_i + T <= l + T`. So `sum_G work - decode_i <= cap = integral_f^{l+T}
n(t) dt`; with `lanes` lanes sharing the replicas, `sum_G work <= cap + lanes * max decode`, and if
`cap` is 0 no request with a prefill is on time. The API dollars such a `G` saves are at most a
fractional knapsack: requests are binned by price per replica-second of work (`K` bins, each bin's
work counted at its densest request's price, which can only overstate the saving), filled densest
first up to that capacity. The groups of a partition hold disjoint requests, so their bounds add up,
and the least sum over all partitions of the slot into groups is again a bound: that is `U_s`, found
by a DP over atoms. A request whose own prefill exceeds `T` saves nothing. Above 16 replicas the part
of a window that reaches into the next slot is counted at `max_replicas` instead of at the next slot's
Ready count (an overstatement of capacity, so still a bound), which keeps the work linear in the pool
size.

Proof that no online policy on the simulated world pays less. Take any run, with its Ready counts
`n(t)` (piecewise constant on the slots, since the loop scales only at ticks and a replica is Ready one
cold start after it is scheduled) and its set of requests served on the GPUs within `T`. Every
replica lifetime is billed for at least its length (rounding up to the billing unit and the minimum
only add); the lifetimes' lengths sum to the Ready replica-seconds plus one cold start for every
replica that became Ready (a replica removed before Ready only adds), and every rise of `n` is such
a replica. So its GPU bill is at least the plan's cost. Its on-time requests in each slot form a
subset that satisfies every group inequality above under `n(t)`, so they save at most `U_s(n_s,
n_{s+1})`; every other request is priced at the fallback. Its comparable cost is therefore at least
the DP's value for its own plan, which is at least the DP's minimum. Nothing here depends on how the
policy decides, only on what the world allows. Daily budget caps are ignored (dropping a constraint
can only lower the bound). With billing by the second and a minimum no longer than the cold start,
the billing is counted exactly; with coarser billing it is counted by the second, a weaker bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Optimum", "OptimumProblem", "OptimumTooLarge", "offline_optimum", "plan_cost", "slot_grid", "too_large"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

_DENSITY_BINS = 8
"""Price-per-work bins of the knapsack bound; the API's prices make densities vary within ~25 %."""
_MAX_ATOMS = 8
_CHUNK = 2048
"""Slots evaluated at once (bounds the memory of the vectorised knapsack)."""
_MAX_ENTRIES = 64_000_000
"""Largest table of slot bounds solved (512 MB of floats): a week at 1-second ticks with 8 replicas fits."""
_EXACT_NEXT = 16
"""Up to this many replicas, a slot's bound depends on the next slot's Ready count; above, the window
reaching into the next slot is counted at the pool's maximum (a looser bound, linear in memory)."""


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
    """FIFO lanes sharing the replicas (Ebbtide's gateway has two; plain vLLM one)."""

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


@dataclass(frozen=True, slots=True)
class Optimum:
    """The bound's cost, how it splits, and the plan that reaches it."""

    total_usd: float
    gpu_usd: float
    fallback_usd: float
    gpu_hours: float
    starts: int
    """Replicas the plan starts (each pays one cold start)."""
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


def _savings(p: OptimumProblem, bounds: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Per slot: every request's API dollars, and U[s, n, n'] (dollars savable with n, then n', Ready)."""
    slots = bounds.size - 1
    top = p.max_replicas
    lengths = np.diff(bounds)
    slot = np.clip(np.searchsorted(bounds, p.arrival_s, side="right") - 1, 0, slots - 1)
    api_total = _sums(slot, p.api_usd, slots)
    # U[s, n, n'], or U[s, n, 0] alone when the next slot is counted at the maximum (see _EXACT_NEXT).
    problem = too_large(p)
    if problem:
        raise OptimumTooLarge(problem)
    U = np.zeros((slots, top + 1, top + 1 if top <= _EXACT_NEXT else 1))
    t_obj = p.objective_s
    savable = (p.prefill_s <= t_obj) & (p.api_usd > 0)
    if top == 0 or not np.any(savable):
        return api_total, U
    atoms = int(min(max(math.floor(float(np.median(lengths)) / t_obj), 1), _MAX_ATOMS)) if t_obj > 0 else 1
    s_idx = slot[savable]
    offset = p.arrival_s[savable] - bounds[s_idx]
    atom = np.clip((offset / (lengths[s_idx] / atoms)).astype(np.int64), 0, atoms - 1)
    value = p.api_usd[savable]
    work = np.maximum(p.work_s[savable], 1e-15)
    decode = np.maximum(p.work_s[savable] - p.prefill_s[savable], 0.0)
    density = value / work
    lo, hi = float(density.min()), float(density.max())
    bins = _DENSITY_BINS if hi > lo * (1 + 1e-9) else 1
    klass = (
        np.clip((np.log(density / lo) / math.log(hi / lo) * bins).astype(np.int64), 0, bins - 1)
        if bins > 1
        else (np.zeros(density.size, dtype=np.int64))
    )
    # Each bin's work is counted at the densest request in it: E = V / density_max <= the bin's work.
    bin_top = np.zeros(bins)
    np.maximum.at(bin_top, klass, density)
    cell = s_idx * atoms + atom
    V = _sums(cell * bins + klass, value, slots * atoms * bins).reshape(slots, atoms, bins)
    dmax_flat = np.zeros(slots * atoms)
    np.maximum.at(dmax_flat, cell, decode)
    dmax = dmax_flat.reshape(slots, atoms)
    free = _sums(cell, np.where(p.prefill_s[savable] <= 0, value, 0.0), slots * atoms).reshape(slots, atoms)
    first_flat = np.full(slots * atoms, math.inf)
    np.minimum.at(first_flat, cell, offset)
    last_flat = np.full(slots * atoms, -math.inf)
    np.maximum.at(last_flat, cell, offset)
    first, last = first_flat.reshape(slots, atoms), last_flat.reshape(slots, atoms)
    order = np.argsort(-bin_top)  # densest bin first
    V = V[:, :, order]
    E = V / bin_top[order]
    busy = np.flatnonzero(V.sum(axis=(1, 2)) > 0)
    nxt = np.append(lengths[1:], math.inf)
    for c in range(0, busy.size, _CHUNK):
        rows = busy[c : c + _CHUNK]
        U[rows] = _slot_bounds(
            V[rows],
            E[rows],
            dmax[rows],
            free[rows],
            first[rows],
            last[rows],
            bin_top[order],
            lengths[rows],
            nxt[rows],
            t_obj,
            top,
            p.lanes,
        )
    return api_total, U


def too_large(p: OptimumProblem) -> str:
    """Why the DP would not fit in memory for this problem, or "" when it does."""
    bounds, _ = slot_grid(p.horizon_s, p.step_s, p.cold_start_s)
    slots, top = bounds.size - 1, p.max_replicas
    if slots * (top + 1) * (top + 1 if top <= _EXACT_NEXT else 1) <= _MAX_ENTRIES:
        return ""
    return (
        f"offline_optimum: {slots:,} slots of at most {p.step_s:g} s with 0..{top} replicas are too many to "
        "solve; use a longer control tick or a shorter horizon"
    )


def _sums(index: IntArray, weights: FloatArray, size: int) -> FloatArray:
    return np.asarray(np.bincount(index, weights=weights, minlength=size), dtype=np.float64)


def _greedy(V: FloatArray, before: FloatArray, density: FloatArray, cap: FloatArray) -> FloatArray:
    """Fractional knapsack over density bins (last axis, densest first) filled up to `cap`.

    Bin `c` holds `V[c]` dollars at `density[c]` per replica-second, after `before[c]` replica-seconds
    of denser bins.
    """
    room = np.maximum(cap[..., None] - before, 0.0)
    return np.asarray(np.minimum(V, density * room).sum(axis=-1))


def _slot_bounds(
    V: FloatArray,
    E: FloatArray,
    dmax: FloatArray,
    free: FloatArray,
    first: FloatArray,
    last: FloatArray,
    density: FloatArray,
    length: FloatArray,
    nxt: FloatArray,
    t_obj: float,
    top: int,
    lanes: int,
) -> FloatArray:
    """U[s, n, n'] for a chunk of slots: the least sum of group bounds over partitions into atom runs.

    `first` and `last` are each atom's earliest and latest savable arrival (offsets in the slot; inf
    and -inf when it has none): a group's window runs from its first arrival to its last one plus `T`.
    """
    rows, atoms, _ = V.shape
    cV = np.concatenate((np.zeros((rows, 1, V.shape[2])), np.cumsum(V, axis=1)), axis=1)
    cE = np.concatenate((np.zeros((rows, 1, E.shape[2])), np.cumsum(E, axis=1)), axis=1)
    cF = np.concatenate((np.zeros((rows, 1)), np.cumsum(free, axis=1)), axis=1)

    def group(i: int, k: int) -> tuple[FloatArray, ...]:
        """Atoms i..k: bins' values and work ahead of each, slack, free value, window in and beyond the slot."""
        begin = first[:, i : k + 1].min(axis=1)
        end = last[:, i : k + 1].max(axis=1) + t_obj
        empty = ~np.isfinite(end)
        inside = np.where(empty, 0.0, np.minimum(end, length) - np.where(empty, 0.0, begin))
        beyond = np.where(empty, 0.0, np.maximum(end - length, 0.0))
        slack = lanes * dmax[:, i : k + 1].max(axis=1)
        work = cE[:, k + 1] - cE[:, i]
        before = np.cumsum(work, axis=-1) - work
        return cV[:, k + 1] - cV[:, i], before, slack, cF[:, k + 1] - cF[:, i], inside, beyond

    def bound(parts: tuple[FloatArray, ...], cap: FloatArray) -> FloatArray:
        v, before, slack, fr = parts[:4]
        return np.where(cap > 0, _greedy(v, before, density, cap + slack), fr)

    groups = {(i, k): group(i, k) for k in range(atoms) for i in range(k + 1)}
    # A group that does not end the slot counts any window beyond it at the pool's maximum; one that
    # ends it counts up to the next slot's length at that slot's Ready replicas.
    closing = {i: groups[(i, atoms - 1)] for i in range(atoms)}
    after = {i: np.minimum(closing[i][5], nxt) for i in range(atoms)}
    nexts = range(top + 1) if top <= _EXACT_NEXT else [top]
    out = np.empty((rows, top + 1, len(nexts)))
    for n in range(top + 1):
        best = np.zeros((rows, atoms))  # best[:, j]: least bound of atoms [0, j)
        for k in range(atoms - 1):
            candidates = [
                best[:, i] + bound(groups[(i, k)], n * groups[(i, k)][4] + top * groups[(i, k)][5])
                for i in range(k + 1)
            ]
            best[:, k + 1] = np.min(candidates, axis=0)
        for column, m in enumerate(nexts):
            tail = [
                best[:, i] + bound(closing[i], n * closing[i][4] + m * after[i] + top * (closing[i][5] - after[i]))
                for i in range(atoms)
            ]
            out[:, n, column] = np.min(tail, axis=0)
    return out


def _saved(U: FloatArray, ready: IntArray) -> FloatArray:
    """Each slot's bound on savings under a plan (Ready per slot, then at the horizon)."""
    rows = np.arange(ready.size - 1)
    following = ready[1:] if U.shape[2] > 1 else np.zeros(ready.size - 1, dtype=np.int64)
    return np.asarray(U[rows, ready[:-1], following])


def plan_cost(p: OptimumProblem, ready: IntArray) -> float:
    """The model's cost of one plan, inf if the world forbids it.

    `ready` holds the Ready replicas of each slot of `slot_grid` and, last, those Ready at the horizon
    (they serve the unbilled tail).
    """
    bounds, rise = slot_grid(p.horizon_s, p.step_s, p.cold_start_s)
    api_total, U = _savings(p, bounds)
    ready = np.asarray(ready, dtype=np.int64)
    if ready.size != bounds.size or np.any(ready < 0) or np.any(ready > p.max_replicas):
        return math.inf
    rate = p.replica_usd_per_hour / 3600.0
    previous = np.concatenate(([p.initial_replicas], ready[:-1]))
    ups = np.maximum(ready - previous, 0)
    if np.any((ups > 0) & ~rise):
        return math.inf
    saved = _saved(U, ready)
    return float(rate * (np.diff(bounds) @ ready[:-1] + p.cold_start_s * ups.sum()) + api_total.sum() - saved.sum())


def offline_optimum(p: OptimumProblem) -> Optimum:
    """The least cost of the model over every plan (see the module docstring), and that plan."""
    bounds, rise = slot_grid(p.horizon_s, p.step_s, p.cold_start_s)
    slots = bounds.size - 1
    lengths = np.diff(bounds)
    api_total, U = _savings(p, bounds)
    rate = p.replica_usd_per_hour / 3600.0
    top = p.max_replicas
    states = np.arange(top + 1)
    hold = rate * lengths[:, None] * states[None, :]  # billing of n Ready replicas through each slot
    up = np.maximum(states[None, :] - states[:, None], 0)  # up[n, n']
    start_cost = rate * p.cold_start_s * up
    blocked = np.where(up > 0, math.inf, 0.0)
    cost = np.where(states <= p.initial_replicas, 0.0, math.inf)
    choice = np.zeros((slots + 1, top + 1), dtype=np.int64)
    # cost[n]: least cost of the slots before s with n Ready in slot s (its billing and savings not yet);
    # after the last slot, n is the Ready count at the horizon.
    for s in range(slots):
        # U[s] is (n, n') or (n, 1): the latter broadcasts over n'.
        step = (cost + hold[s])[:, None] - U[s] + (start_cost if rise[s + 1] else blocked)
        choice[s + 1] = np.argmin(step, axis=0)
        cost = step[choice[s + 1], states]
    ready = np.empty(slots + 1, dtype=np.int64)
    ready[-1] = int(np.argmin(cost))
    for s in range(slots, 0, -1):
        ready[s - 1] = choice[s, ready[s]]
    previous = np.concatenate(([p.initial_replicas], ready[:-1]))
    starts = int(np.maximum(ready - previous, 0).sum())
    replica_seconds = float(lengths @ ready[:-1]) + p.cold_start_s * starts
    saved = _saved(U, ready)
    unsaved = api_total - saved
    counts = np.bincount(np.clip(np.searchsorted(bounds, p.arrival_s, side="right") - 1, 0, slots - 1), minlength=slots)
    share = np.divide(unsaved, api_total, out=np.zeros(slots), where=api_total > 0)
    gpu_usd = rate * replica_seconds
    fallback_usd = float(unsaved.sum())
    return Optimum(
        total_usd=gpu_usd + fallback_usd,
        gpu_usd=gpu_usd,
        fallback_usd=fallback_usd,
        gpu_hours=replica_seconds / 3600.0 * p.gpus_per_replica,
        starts=starts,
        fallback_requests=float(np.sum(np.clip(share, 0.0, 1.0) * counts)),
        slot_start_s=bounds,
        ready=ready,
    )
