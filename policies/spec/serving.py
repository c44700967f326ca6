"""What the pool scales and how: its target Deployment, demand, billing, objective and budget."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import ConfigDict, Field, model_validator

from policies.spec.base import _DNS1123, _Model

__all__ = [
    "Billing",
    "BillingGranularity",
    "Budget",
    "Demand",
    "FallbackCapAction",
    "GPUCapAction",
    "Objective",
    "Target",
]


class Target(_Model):
    """The vLLM Deployment this pool scales."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self.minReplicas <= self.maxReplicas", "message": "minReplicas must be <= maxReplicas"}
            ]
        }
    )

    deployment: Annotated[str, Field(min_length=1, max_length=253, pattern=_DNS1123)]
    """Name of the vLLM Deployment."""
    namespace: Annotated[str | None, Field(default=None, max_length=63, pattern=_DNS1123)] = None
    """Namespace of the Deployment; the pool's own namespace when empty."""
    min_replicas: Annotated[int, Field(ge=0)] = 0
    """Fewest replicas at any time, inside or outside windows. 0 allows scale to zero."""
    max_replicas: Annotated[int, Field(ge=0)] = 1
    """Most replicas at any time; windows may lower this but never raise it."""
    gpus_per_replica: Annotated[int, Field(ge=1)] = 1
    """GPUs each replica holds (tensor parallel size); billing multiplies by this."""
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    """Port the vLLM replicas serve on: the gateway sends requests there and the controller scrapes its
    /metrics (vLLM's default is 8000)."""
    served_model: Annotated[str | None, Field(min_length=1, max_length=256)] = None
    """Model name the vLLM replicas serve (their --served-model-name); the pool's first model when empty."""

    @model_validator(mode="after")
    def _min_le_max(self) -> Target:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"minReplicas ({self.min_replicas}) must be <= maxReplicas ({self.max_replicas})")
        return self


class Demand(_Model):
    """How queue depth turns into replicas."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    # replicaTokensPerSecond has a default, so it is always there to compare with.
                    "rule": "!has(self.replicaMeanTokensPerSecond)"
                    " || self.replicaMeanTokensPerSecond <= self.replicaTokensPerSecond",
                    "message": "replicaMeanTokensPerSecond must be <= replicaTokensPerSecond",
                },
                {
                    "rule": "has(self.replicaPrefillTokensPerSecond) == has(self.replicaDecodeTokensPerSecond)",
                    "message": "replicaPrefillTokensPerSecond and replicaDecodeTokensPerSecond go together",
                },
            ]
        }
    )

    target_queue_per_replica: Annotated[float, Field(gt=0)] = 8.0
    """Requests (vLLM num_requests_waiting + num_requests_running) one replica should carry."""
    target_kv_cache_usage: Annotated[float | None, Field(gt=0, le=1)] = None
    """Optional KV-cache utilisation target (0-1]; scale up when the average exceeds it."""
    max_scale_up_step: Annotated[int, Field(ge=1)] = 4
    """Most replicas added in one decision (mirrors the HPA's default of 4 pods per period)."""
    scale_down_delay_seconds: Annotated[int, Field(ge=0)] = 300
    """A scale-down waits until the demand has stayed low this long (HPA stabilisation window: 300 s)."""
    idle_grace_seconds: Annotated[int, Field(ge=0)] = 600
    """Outside windows, the pool goes to zero only after this long with an empty queue."""
    replay: bool = True
    """Replay the last hour's requests (as the gateway reports them) through every replica count and keep
    at least the count that would have cost least (`policies.replay`; needs the gateway). false: the
    other rules alone, which keep fewer replicas for bursts when late requests are acceptable."""
    overflow_memory_seconds: Annotated[int, Field(ge=0)] = 1800
    """After the gateway overflowed with every replica Ready, the pool keeps at least that many replicas
    this long, so replicas added for bursts are not released between bursts."""
    rate_smoothing_seconds: Annotated[int, Field(ge=0)] = 300
    """Time constant of the moving average applied to token rates before they are priced (0: none), so
    one burst does not start a GPU that would be Ready only after the burst."""
    metric_max_age_seconds: Annotated[int, Field(ge=1)] = 90
    """A metric sample older than this is stale: replicas are held, never scaled down on it."""
    replica_tokens_per_second: Annotated[float, Field(gt=0)] = 6000.0
    """Tokens (prompt + generated) one replica should serve per second: its measured maximum times the
    utilisation you target (an 8B model on one H100 sustains roughly 8-10k at a 3:1 prompt mix).
    Turns the offered token rate into replicas and prices what each replica absorbs."""
    replica_mean_tokens_per_second: Annotated[float | None, Field(gt=0)] = None
    """Optional: keep one replica per this many tokens per second of the last hour's mean offered rate
    (prompt + generated), as long as each pays for itself against the fallback, while the load is bursty
    (the gateway sent at least 2% of the hour's tokens to the fallback with a replica Ready). Set well
    below replicaTokensPerSecond: the headroom serves the bursts a mean hides, which a replica started
    when they show would meet only after its cold start. Empty: replicas follow the current rate only."""

    replica_prefill_tokens_per_second: Annotated[float | None, Field(gt=0)] = None
    """Optional, with replicaDecodeTokensPerSecond: prompt tokens one replica prefills per second when
    it does nothing else (an 8B model on one H100: roughly 10-20k). With both, the gateway estimates a
    request's work as its prompt over this plus its expected output over the decode rate, and its own
    prefill as its prompt over this, the simulator's replica model; without them, as prompt plus output
    over replicaTokensPerSecond, a blend that overstates a prompt-heavy request's work."""
    replica_decode_tokens_per_second: Annotated[float | None, Field(gt=0)] = None
    """Optional, with replicaPrefillTokensPerSecond: tokens one replica generates per second over its
    whole running batch, at saturation (an 8B model on one H100: roughly 2.5-5k)."""

    def work_tokens(self, prompt_tokens: float, output_tokens: float) -> float:
        """A request's work in tokens at replicaTokensPerSecond: with the split speeds, its replica-seconds
        (prompt over prefill, output over decode) times that rate; without them, prompt plus output."""
        prefill, decode = self.replica_prefill_tokens_per_second, self.replica_decode_tokens_per_second
        if prefill is None or decode is None:
            return prompt_tokens + output_tokens
        return (prompt_tokens / prefill + output_tokens / decode) * self.replica_tokens_per_second

    def prefill_seconds(self, prompt_tokens: float) -> float:
        """How long a replica takes to prefill a prompt: at the prefill speed, else the blended rate."""
        return prompt_tokens / (self.replica_prefill_tokens_per_second or self.replica_tokens_per_second)

    @model_validator(mode="after")
    def _speeds_together(self) -> Demand:
        if (self.replica_prefill_tokens_per_second is None) != (self.replica_decode_tokens_per_second is None):
            raise ValueError(
                "replicaPrefillTokensPerSecond and replicaDecodeTokensPerSecond go together: set both or neither"
            )
        return self

    @model_validator(mode="after")
    def _mean_within_capacity(self) -> Demand:
        mean = self.replica_mean_tokens_per_second
        if mean is not None and mean > self.replica_tokens_per_second:
            raise ValueError(
                f"replicaMeanTokensPerSecond ({mean:g}) must be <= replicaTokensPerSecond "
                f"({self.replica_tokens_per_second:g}): it sizes for the hour's mean with headroom for bursts"
            )
        return self


class BillingGranularity(StrEnum):
    """The unit a provider rounds GPU time up to."""

    SECOND = "second"
    MINUTE = "minute"
    HOUR = "hour"

    @property
    def seconds(self) -> int:
        """Length of one billing unit in seconds."""
        return {"second": 1, "minute": 60, "hour": 3600}[self.value]


class Billing(_Model):
    """How the GPU provider bills."""

    gpu_hourly_usd: Annotated[float, Field(ge=0)] = 1.6438
    """Price of one GPU for one hour (default: the seed's H100 at $1,200 per 730-hour month)."""
    granularity: BillingGranularity = BillingGranularity.SECOND
    """Each replica's running time is rounded up to this unit."""
    minimum_billed_seconds: Annotated[int, Field(ge=0)] = 60
    """Shortest time billed for one replica start."""
    release_margin_seconds: Annotated[int, Field(ge=0)] = 120
    """With coarse billing, a replica whose paid period has more than this left is kept (at least 15 s is
    used: one control tick, so a margin of 0 cannot hold a replica into period after period)."""


class Objective(_Model):
    """The latency the pool aims for, and how the gateway keeps it under load."""

    ttft_seconds: Annotated[float, Field(gt=0, le=3600)] = 2.0
    """Time to first token the pool aims for (the simulator's SLO by default)."""
    defer_late_requests: bool = True
    """Queue requests that would miss the objective behind those that can still make it, with vLLM's
    request priority (the engine must run with --scheduling-policy priority); false keeps one FIFO."""


class GPUCapAction(StrEnum):
    """What the pool does when today's GPU-hours reach the cap."""

    SCALE_TO_ZERO = "scaleToZero"
    HOLD = "hold"


class FallbackCapAction(StrEnum):
    """What the gateway does when today's fallback spend reaches the cap."""

    QUEUE = "queue"
    REJECT = "reject"


class Budget(_Model):
    """Daily caps, counted per day in the schedule's timezone."""

    max_gpu_hours_per_day: Annotated[float | None, Field(gt=0)] = None
    """GPU-hours (replicas x GPUs x billed hours) allowed per day; no cap when empty."""
    max_fallback_usd_per_day: Annotated[float | None, Field(gt=0)] = None
    """Fallback spend allowed per day; no cap when empty."""
    on_gpu_cap: GPUCapAction = GPUCapAction.SCALE_TO_ZERO
    """scaleToZero sends everything to the fallback; hold allows no scale-up but keeps what runs."""
    on_fallback_cap: FallbackCapAction = FallbackCapAction.QUEUE
    """queue keeps requests on the GPUs (which may then grow past the cost rule); reject answers 429."""
