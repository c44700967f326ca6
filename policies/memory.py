"""What the policy remembers between decisions: smoothed token rates and the last hour in 5-minute buckets.

Pure functions of the previous state, a reading and the time; `policies.scaling.decide` folds each
reading in before it decides.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import replace

from policies.spec import GPUPoolSpec
from policies.types import DemandSample, PolicyState

__all__ = ["KEEP_BUCKET_SECONDS", "KEEP_HORIZON_SECONDS", "ewma", "hour_buckets", "hour_mean", "overflow_share",
           "smooth_rates"]  # fmt: skip

# A running replica is priced for the next hour, on the mean demand of the last one, kept in 5-minute
# buckets.
KEEP_HORIZON_SECONDS = 3600.0
KEEP_BUCKET_SECONDS = 300.0


def smooth_rates(
    spec: GPUPoolSpec, demand: DemandSample, state: PolicyState, now: dt.datetime
) -> tuple[DemandSample, PolicyState]:
    """Exponentially weighted token rates; the queue gauges stay as sampled."""
    if demand.input_tokens_per_second is None or demand.output_tokens_per_second is None:
        return demand, state
    raw = (demand.input_tokens_per_second, demand.output_tokens_per_second, demand.overflow_tokens_per_second or 0.0)
    elapsed = None if state.rates_at is None else max((now - state.rates_at).total_seconds(), 0.0)
    in_, out, over = ewma(state.rates, raw, elapsed, spec.demand.rate_smoothing_seconds)
    smoothed = (in_, out, over)
    smoothed_demand = replace(
        demand,
        input_tokens_per_second=smoothed[0],
        output_tokens_per_second=smoothed[1],
        overflow_tokens_per_second=smoothed[2] if demand.overflow_tokens_per_second is not None else None,
    )
    buckets = hour_buckets(state.keep_buckets, raw[0] + raw[1], elapsed, now)
    overflow_buckets = hour_buckets(state.overflow_buckets, raw[2], elapsed, now)
    return smoothed_demand, replace(
        state, rates=smoothed, rates_at=now, keep_buckets=buckets, overflow_buckets=overflow_buckets
    )


def hour_buckets(
    buckets: tuple[tuple[dt.datetime, float, float], ...], rate: float, elapsed: float | None, now: dt.datetime
) -> tuple[tuple[dt.datetime, float, float], ...]:
    """Add `rate` over the `elapsed` seconds up to `now` to its 5-minute bucket; keep the last hour's.

    One reading speaks for at most one bucket's time: after a gap (no data, an `off` override) it does
    not stand for the whole gap. Buckets outside the last hour, or after `now` (a clock set back), go.
    """
    oldest = now - dt.timedelta(seconds=KEEP_HORIZON_SECONDS)
    kept = [b for b in buckets if oldest < b[0] <= now]
    if elapsed:
        credited = min(elapsed, KEEP_BUCKET_SECONDS)
        slot = now - dt.timedelta(seconds=now.timestamp() % KEEP_BUCKET_SECONDS)
        if kept and kept[-1][0] == slot:
            _, tokens, seconds = kept[-1]
            kept[-1] = (slot, tokens + rate * credited, seconds + credited)
        else:
            kept.append((slot, rate * credited, credited))
    return tuple(kept)


def hour_mean(buckets: tuple[tuple[dt.datetime, float, float], ...]) -> float | None:
    """Offered tokens per second over the last hour (None before any time has been measured)."""
    seconds = sum(b[2] for b in buckets)
    return sum(b[1] for b in buckets) / seconds if seconds > 0 else None


def overflow_share(state: PolicyState) -> float | None:
    """The share of the last hour's offered tokens the gateway sent away with a replica Ready."""
    offered = sum(b[1] for b in state.keep_buckets)
    if offered <= 0:
        return None
    return sum(b[1] for b in state.overflow_buckets) / offered


def ewma(
    previous: tuple[float, ...] | None, raw: tuple[float, ...], elapsed: float | None, tau: float
) -> tuple[float, ...]:
    """Move each average towards the raw value by the weight `elapsed` seconds have at time constant `tau`."""
    if previous is None or elapsed is None or tau == 0:
        return raw
    weight = 1.0 - math.exp(-elapsed / tau)
    return tuple(p + weight * (r - p) for p, r in zip(previous, raw, strict=True))
