"""Values that flow through a decision: what was observed, what was decided, what is remembered.

All are frozen: a policy returns new values and never mutates its inputs.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["Decision", "DemandSample", "Limits", "Observation", "PolicyState", "Reason"]


class Reason(StrEnum):
    """Machine-readable reason for a decision; written to logs, Events and the pool's status."""

    STEADY = "steady"
    POOL_MIN = "pool-min"
    QUEUE_HIGH = "queue-high"
    TOKENS_HIGH = "tokens-high"
    MEAN_HEADROOM = "mean-headroom"
    OVERFLOW_PAYS = "overflow-pays"
    QUEUE_LOW = "queue-low"
    KV_CACHE_HIGH = "kv-cache-high"
    STEP_LIMIT = "step-limit"
    SCALE_DOWN_DELAY = "scale-down-delay"
    BURST_HOLD = "burst-hold"
    IDLE_GRACE = "idle-grace"
    IDLE_TO_ZERO = "idle-to-zero"
    WINDOW_OPEN = "window-open"
    WINDOW_MAX = "window-max"
    POOL_MAX = "pool-max"
    PREWARM = "prewarm"
    HOLIDAY = "holiday"
    OVERRIDE_OFF = "override-off"
    OVERRIDE_KEEP_WARM = "override-keep-warm"
    BILLING_HOLD = "billing-hold"
    COST_OVERFLOW = "cost-overflow"
    GPU_BUDGET_CAP = "gpu-budget-cap"
    FALLBACK_BUDGET_CAP = "fallback-budget-cap"
    NO_DATA_HOLD = "no-data-hold"
    STALE_DATA_HOLD = "stale-data-hold"
    STARTUP_HOLD = "startup-hold"
    REPLAY = "replay"


@dataclass(frozen=True, slots=True)
class DemandSample:
    """One reading of demand: the engines' queue plus what the gateway sent away.

    `waiting` and `running` are vLLM's num_requests_waiting and num_requests_running summed over the
    pool's ready replicas; `overflow_in_flight` counts requests the gateway is serving at the fallback
    right now (demand the GPUs would carry if they could). Token rates are offered load (all requests,
    served anywhere) in tokens per second, and `overflow_tokens_per_second` the part of it the gateway
    sent to the fallback although a replica was Ready (saturation; what a cold start sends away is in
    the offered rate already), both averaged over the metrics window (counters, so no burst is missed
    the way a sampled gauge misses it); None when unknown.
    """

    observed_at: dt.datetime
    waiting: float
    running: float
    overflow_in_flight: float = 0.0
    kv_cache_usage: float | None = None
    input_tokens_per_second: float | None = None
    output_tokens_per_second: float | None = None
    overflow_tokens_per_second: float | None = None
    replay_usd: tuple[float, ...] | None = None
    """Per count `k` from 0: what `k` replicas held through the last hour would have cost, GPU time
    plus the fallback price of the requests they could not have served on time (`policies.replay`);
    None when unknown (no replay: the gateway's requests could not be read)."""

    @property
    def queue(self) -> float:
        """Total concurrent demand in requests."""
        return self.waiting + self.running + self.overflow_in_flight


@dataclass(frozen=True, slots=True)
class Observation:
    """Everything a policy sees of the world at one moment.

    `demand` is None when there is no usable metric (failed scrape, no endpoint, missing gauge): that is
    "no data", never zero load. `replica_billing_starts` holds, for each replica that exists now (ready or
    starting), the moment its GPU billing began; it may be empty when unknown. Today's usage is None when
    the ledger could not be read: unknown, never zero, so a budget cap it cannot check holds.
    """

    current_replicas: int
    ready_replicas: int
    demand: DemandSample | None
    replica_billing_starts: tuple[dt.datetime, ...] = ()
    gpu_hours_today: float | None = 0.0
    fallback_usd_today: float | None = 0.0
    no_data_reason: str = ""


@dataclass(frozen=True, slots=True)
class Limits:
    """The replica range in force at a moment, and what set its floor."""

    floor: int
    ceiling: int
    floor_reason: Reason
    floor_message: str
    ceiling_reason: Reason


@dataclass(frozen=True, slots=True)
class Decision:
    """What the pool should run now, and why.

    The loop applies only valid decisions; an invalid one (no data, stale data) leaves the replicas as
    they are but its reason is still reported.
    """

    desired_replicas: int
    valid: bool
    reason: Reason
    message: str
    limits: Limits
    details: tuple[tuple[str, float], ...] = ()

    def detail(self, key: str) -> float | None:
        """A named figure behind the decision (break-even dollars, paid seconds kept, …)."""
        for name, value in self.details:
            if name == key:
                return value
        return None


@dataclass(frozen=True, slots=True)
class PolicyState:
    """What a policy remembers between decisions; a fresh one is always safe (see `started_at`).

    `recommendations` are (time, replicas) pairs within the scale-down delay, used like the HPA's
    stabilisation window: the pool scales down only to the highest recommendation in that window.
    `started_at` is when this autoscaler instance began: a fresh one does not scale down before one
    scale-down delay has passed (as Knative does), so a restart never causes a rash scale-down.
    `overflow_at` and `overflow_replicas` remember when the gateway last overflowed enough to pay for
    another replica although every replica was Ready, and how many there were: the pool keeps that many
    for the overflow memory.
    `rates` are the offered input, offered output and overflow token rates smoothed over the rate
    smoothing time (as of `rates_at`): money is decided on sustained demand, not on one burst.
    `keep_buckets` hold the offered tokens of the last hour in 5-minute buckets (bucket start, tokens,
    seconds measured): a running replica is priced for the next hour on the last hour's mean, not on a
    quiet few minutes. `overflow_buckets` hold, in the same buckets, the tokens the gateway sent to the
    fallback with a replica Ready: their share of the hour's offered tokens says whether the load is
    bursty enough for the headroom of `replicaMeanTokensPerSecond`.
    """

    started_at: dt.datetime | None = None
    last_busy_at: dt.datetime | None = None
    recommendations: tuple[tuple[dt.datetime, int], ...] = field(default=())
    overflow_at: dt.datetime | None = None
    overflow_replicas: int = 0
    rates: tuple[float, float, float] | None = None
    rates_at: dt.datetime | None = None
    keep_buckets: tuple[tuple[dt.datetime, float, float], ...] = field(default=())
    overflow_buckets: tuple[tuple[dt.datetime, float, float], ...] = field(default=())
