"""Whether one more replica pays: the break-even of a replica's price against the API spend it absorbs.

Pure arithmetic on the spec and one demand sample; `policies.scaling.decide` asks it before buying a
replica and before keeping one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from policies.spec import GPUPoolSpec
from policies.types import DemandSample

__all__ = [
    "OVERFLOW_CREDIT",
    "CostCheck",
    "cost_limit",
    "mean_sized_replicas",
    "offered_and_price",
    "replica_worth",
    "start_check",
]

# Share of the current overflow a new replica is credited with: bursts are uneven, and what one more
# replica absorbs of them shrinks with every replica added.
OVERFLOW_CREDIT = 0.5


@dataclass(frozen=True, slots=True)
class CostCheck:
    """The break-even comparison for starting one more replica."""

    worth_it: bool
    absorbed_tokens_per_second: float
    api_usd: float
    gpu_usd: float
    horizon_seconds: float
    """How long the replica is billed for."""
    serving_seconds: float | None = None
    """How long the absorbed rate is credited (a new replica: its horizon less the cold start)."""


def offered_and_price(spec: GPUPoolSpec, demand: DemandSample) -> tuple[float, float]:
    """(offered tokens per second, fallback dollars per token at the offered input/output mix)."""
    offered_in = max(demand.input_tokens_per_second or 0.0, 0.0)
    offered_out = max(demand.output_tokens_per_second or 0.0, 0.0)
    offered = offered_in + offered_out
    if offered <= 0:
        return 0.0, (spec.fallback.input_usd_per_million + spec.fallback.output_usd_per_million) / 2e6
    usd = offered_in * spec.fallback.input_usd_per_million + offered_out * spec.fallback.output_usd_per_million
    return offered, usd / offered / 1e6


def replica_worth(
    spec: GPUPoolSpec,
    demand: DemandSample,
    replicas_before: int,
    *,
    current: int,
    keep_tokens_per_second: float | None = None,
    headroom_replicas: int = 0,
) -> CostCheck | None:
    """Does replica number `replicas_before + 1` cost less than the API spend it absorbs?

    A running replica (`replicas_before < current`) carries an equal share of the offered tokens with
    the replicas before it; its start is sunk, so it is worth keeping while that share, priced at the
    fallback, exceeds its hourly price (the offered rate taken as the larger of the smoothed one and
    `keep_tokens_per_second`, the last hour's average, when given). A new replica absorbs the offered
    tokens beyond what the replicas before it carry at `replicaTokensPerSecond` each (up to that much
    itself), or its credit of what the gateway is overflowing (bursts the averages cannot see),
    or, while the last hour's mean asks for it (it is one of the first `headroom_replicas`), its equal
    share of that mean, whichever is more; it is committed for the billing horizon (the
    billing unit, the minimum billed time, or one cold start plus the scale-down delay, whichever is
    longest) but serves only after its cold start. None when the offered token rate is unknown.
    """
    if demand.input_tokens_per_second is None or demand.output_tokens_per_second is None:
        return None
    offered, usd_per_token = offered_and_price(spec, demand)
    capacity = spec.demand.replica_tokens_per_second
    gpu_hourly = spec.replica_usd_per_hour
    if replicas_before < current:
        if keep_tokens_per_second is not None:
            offered = max(offered, keep_tokens_per_second)
        absorbed = min(offered / (replicas_before + 1), capacity)
        api_usd = absorbed * usd_per_token * 3600.0
        return CostCheck(api_usd >= gpu_hourly and absorbed > 0, absorbed, api_usd, gpu_hourly, 3600.0, 3600.0)
    beyond = min(max(offered - replicas_before * capacity, 0.0), capacity)
    overflow = max(demand.overflow_tokens_per_second or 0.0, 0.0)
    bursts = OVERFLOW_CREDIT * min(max(overflow - (replicas_before - current) * capacity, 0.0), capacity)
    headroom = 0.0
    if replicas_before < headroom_replicas:
        # Sized on the hour's mean, a new replica carries an equal share of it, as a running one does.
        headroom = min((keep_tokens_per_second or 0.0) / (replicas_before + 1), capacity)
    return start_check(spec, max(beyond, bursts, headroom), usd_per_token)


def mean_sized_replicas(spec: GPUPoolSpec, mean_tokens_per_second: float | None) -> int:
    """Replicas `demand.replicaMeanTokensPerSecond` asks for at this hourly mean (0 when off or unknown).

    `decide` applies it only while the gateway sent at least `BURST_OVERFLOW_SHARE` of the last hour's
    offered tokens to the fallback with a replica Ready: a smooth load needs no headroom for bursts.
    """
    per_replica = spec.demand.replica_mean_tokens_per_second
    if per_replica is None or mean_tokens_per_second is None or mean_tokens_per_second <= 0:
        return 0
    return max(math.ceil(mean_tokens_per_second / per_replica - 1e-9), 0)


def start_check(
    spec: GPUPoolSpec, absorbed: float, usd_per_token: float, *, serving_at_most: float | None = None
) -> CostCheck:
    """A new replica absorbing `absorbed` tok/s after its cold start, against its billed horizon.

    `serving_at_most` caps how long the absorbed rate is credited (a burst is only known to last as long
    as it is seen); the replica is still billed for its whole horizon.
    """
    horizon = float(
        max(
            spec.billing.granularity.seconds,
            spec.billing.minimum_billed_seconds,
            spec.cold_start_seconds + spec.demand.scale_down_delay_seconds,
        )
    )
    serving = max(horizon - spec.cold_start_seconds, 0.0)
    if serving_at_most is not None:
        serving = min(serving, serving_at_most)
    api_usd = absorbed * usd_per_token * serving
    gpu_usd = spec.replica_usd_per_hour * horizon / 3600.0
    return CostCheck(api_usd >= gpu_usd and absorbed > 0, absorbed, api_usd, gpu_usd, horizon, serving)


def cost_limit(
    spec: GPUPoolSpec,
    demand: DemandSample,
    wanted: int,
    current: int,
    keep_tokens_per_second: float | None,
    headroom_replicas: int,
) -> tuple[int, CostCheck | None]:
    """How many of the `wanted` replicas pay for themselves, and the first check that failed (if any)."""
    replicas = 0
    while replicas < wanted:
        check = replica_worth(
            spec,
            demand,
            replicas,
            current=current,
            keep_tokens_per_second=keep_tokens_per_second,
            headroom_replicas=headroom_replicas,
        )
        if check is None:
            return wanted, None
        if not check.worth_it:
            return replicas, check
        replicas += 1
    return wanted, None
