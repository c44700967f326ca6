"""The offline lower bound: what serving a workload would cost with perfect foresight.

For each billing period (the provider's billing unit: a second, a minute or an hour, aligned to the
simulation start) the bound buys a whole number `k` of replicas for the whole period and sends to the
API only what `k` replicas cannot serve in it. Which requests stay on the GPUs is chosen as a
fractional knapsack (the requests whose API price per replica-second of work is highest stay), which can
only undercut any real assignment. Then it takes the cheapest `k` for every period. It ignores queueing
(a period's work may be served anywhere within the period), cold starts, minimum billed times and idle
capacity between bursts: every online policy pays for at least one of these, which is why no online
policy can beat this cost. (A replica whose paid hour straddles two periods serves both for one price;
the bound charges each period for it, so with coarse billing and a workload of isolated bursts that
straddle period boundaries the bound could exceed a lucky policy; the tests check it stays below every
policy on the shipped scenarios.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from policies.cost import ApiPrice

__all__ = ["LowerBound", "lower_bound"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class LowerBound:
    """The bound's cost and how it splits."""

    total_usd: float
    gpu_usd: float
    fallback_usd: float
    gpu_hours: float
    fallback_requests: float
    """Requests (fractionally) left to the API."""
    periods: int
    gpu_periods: int
    """Periods in which the bound runs at least one replica."""


def lower_bound(
    arrival_s: FloatArray,
    input_tokens: IntArray,
    output_tokens: IntArray,
    work_seconds: FloatArray,
    *,
    period_seconds: float,
    replica_usd_per_hour: float,
    gpus_per_replica: int,
    price: ApiPrice,
) -> LowerBound:
    """The cheapest per-period mix of whole replicas and API for these requests (arrays of equal length).

    `work_seconds` is each request's replica-seconds of full throughput; `replica_usd_per_hour` is one
    replica's price (all its GPUs) per hour.
    """
    n = int(arrival_s.size)
    if not (input_tokens.size == output_tokens.size == work_seconds.size == n):
        raise ValueError("arrays must have equal length")
    if period_seconds <= 0:
        raise ValueError("period must be > 0 s")
    if n == 0:
        return LowerBound(0.0, 0.0, 0.0, 0.0, 0.0, 0, 0)
    api = (input_tokens * price.input_usd_per_million + output_tokens * price.output_usd_per_million) / 1e6
    period = np.floor(arrival_s / period_seconds).astype(np.int64)
    work = np.maximum(work_seconds.astype(np.float64), 1e-15)
    ratio = api / work
    # Within each period, the requests most worth keeping on a GPU come first.
    order = np.lexsort((-ratio, period))
    period, work, api = period[order], work[order], api[order]
    ids, first, counts = np.unique(period, return_index=True, return_counts=True)
    cum_work = np.concatenate(([0.0], np.cumsum(work)))
    cum_api = np.concatenate(([0.0], np.cumsum(api)))
    base_work = cum_work[first]
    base_api = cum_api[first]
    total_work = cum_work[first + counts] - base_work
    total_api = cum_api[first + counts] - base_api

    capacity = period_seconds  # replica-seconds one replica offers in one period
    replica_usd = replica_usd_per_hour * period_seconds / 3600.0
    k_max = np.ceil(total_work / capacity - 1e-12).astype(np.int64)
    # Every candidate (period, k) for k in 0..k_max, evaluated at once.
    group = np.repeat(np.arange(ids.size), k_max + 1)
    k = np.arange(group.size) - np.repeat(np.cumsum(k_max + 1) - (k_max + 1), k_max + 1)
    served_work = np.minimum(k * capacity, total_work[group])
    position = base_work[group] + served_work
    # Fractional knapsack: API dollars saved by the first `served_work` of the sorted requests.
    j = np.clip(np.searchsorted(cum_work, position, side="left"), 1, cum_work.size - 1)
    w0, w1 = cum_work[j - 1], cum_work[j]
    a0, a1 = cum_api[j - 1], cum_api[j]
    span = w1 - w0
    frac = np.divide(position - w0, span, out=np.zeros_like(position), where=span > 0)
    saved = np.clip(a0 + np.clip(frac, 0, 1) * (a1 - a0) - base_api[group], 0.0, None)
    cost = k * replica_usd + (total_api[group] - saved)
    # Cheapest k per period (first minimum).
    best = np.full(ids.size, math.inf)
    np.minimum.at(best, group, cost)
    is_best = cost <= best[group] + 1e-12
    chosen = np.full(ids.size, -1, dtype=np.int64)
    candidates = np.flatnonzero(is_best)
    # The smallest k reaching the minimum: first candidate per group.
    _, first_best = np.unique(group[candidates], return_index=True)
    chosen_idx = candidates[first_best]
    chosen[group[chosen_idx]] = k[chosen_idx]
    gpu_usd = float(np.sum(chosen * replica_usd))
    fallback_usd = float(np.sum(total_api - saved[chosen_idx]))
    fallback_work = total_work - np.minimum(chosen * capacity, total_work)
    fallback_requests = float(
        np.sum(np.divide(fallback_work, total_work, out=np.zeros_like(total_work), where=total_work > 0) * counts)
    )
    return LowerBound(
        total_usd=gpu_usd + fallback_usd,
        gpu_usd=gpu_usd,
        fallback_usd=fallback_usd,
        gpu_hours=float(np.sum(chosen)) * period_seconds / 3600.0 * gpus_per_replica,
        fallback_requests=fallback_requests,
        periods=int(ids.size),
        gpu_periods=int(np.count_nonzero(chosen)),
    )
