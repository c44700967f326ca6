"""The GPUPool status: the controller's last decision, conditions, next change and ledger."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from policies.spec.base import _Model

__all__ = [
    "BilledPod",
    "Condition",
    "FallbackLedger",
    "FallbackTotal",
    "GPUPoolStatus",
    "LastDecision",
    "NextChange",
    "PoolLedger",
]


class LastDecision(_Model):
    """The most recent decision, as shown in the pool's status."""

    model_config = ConfigDict(extra="ignore")

    reason: Annotated[str, Field(max_length=64)]
    """Machine-readable reason (queue-high, prewarm, billing-hold, no-data-hold, read-error, …)."""
    message: Annotated[str, Field(max_length=4096)]
    """One-line explanation."""
    valid: bool
    """False when the decision only held replicas for lack of data."""
    desired_replicas: Annotated[int | None, Field(ge=0)] = None
    """Replicas the decision asked for; empty when the step could not read the cluster."""
    time: dt.datetime
    """When this reason was first given (it moves only when the reason changes)."""


_CONDITION_REASON = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


class Condition(_Model):
    """One aspect of the pool's state, in the shape of Kubernetes' metav1.Condition."""

    model_config = ConfigDict(extra="ignore")

    type: Annotated[str, Field(min_length=1, max_length=316)]
    """Ready, MetricsAvailable, ScalingActive or BudgetExceeded."""
    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""
    observed_generation: Annotated[int | None, Field(ge=0)] = None
    """The spec generation the condition was set for."""
    last_transition_time: dt.datetime
    """When the status last flipped (not when the condition was last written)."""
    reason: Annotated[str, Field(min_length=1, max_length=1024, pattern=_CONDITION_REASON)]
    """CamelCase reason for the status."""
    message: Annotated[str, Field(max_length=32768)] = ""
    """Human-readable details."""


class NextChange(_Model):
    """The next moment the schedule changes what the pool may run."""

    model_config = ConfigDict(extra="ignore")

    time: dt.datetime
    """When it happens."""
    what: Annotated[str, Field(max_length=256)]
    """What happens then (prewarm for a window, a window opens or closes, an override ends)."""


class FallbackTotal(_Model):
    """One gateway instance's FALLBACK_USD counter total when last counted."""

    model_config = ConfigDict(extra="ignore")

    instance: Annotated[str, Field(max_length=512)]
    """The gateway replica (its metrics URL); empty for a single summed total."""
    total: Annotated[float, Field(ge=0)]
    """Dollars the counter showed."""


class FallbackLedger(_Model):
    """Fallback spend counted today and the gateway counter totals it was counted up to."""

    model_config = ConfigDict(extra="ignore")

    day: dt.date
    """The local day (pool's timezone) the spend belongs to."""
    usd: Annotated[float, Field(ge=0)] = 0.0
    """Dollars counted so far that day."""
    totals: list[FallbackTotal] = Field(
        default_factory=list,
        max_length=256,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["instance"]},
    )
    """Each gateway instance's counter total when last counted."""


class BilledPod(_Model):
    """A pod billed now, and since when today."""

    model_config = ConfigDict(extra="ignore")

    uid: Annotated[str, Field(min_length=1, max_length=128)]
    """The pod's uid."""
    since: dt.datetime
    """Start of its billed time today (its billing start, or local midnight if earlier)."""


class PoolLedger(_Model):
    """What today's GPU-hours were counted from, so a restarted controller goes on counting.

    Lists rather than maps: a JSON merge patch replaces a list whole but merges a map, which would keep a
    pod that went."""

    model_config = ConfigDict(extra="ignore")

    day: dt.date | None = None
    """The local day (pool's timezone) the counts belong to."""
    closed_gpu_seconds: Annotated[float | None, Field(ge=0)] = None
    """GPU-seconds of today's pods that are gone."""
    pods: list[BilledPod] = Field(
        default_factory=list,
        max_length=4096,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["uid"]},
    )
    """The pods billed now."""
    fallback: FallbackLedger | None = None
    """Today's fallback spend."""


class GPUPoolStatus(_Model):
    """Observed state of a pool, written by the controller."""

    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = None
    """The spec generation the controller last acted on."""
    current_replicas: int | None = None
    """The Deployment's replicas as last seen."""
    ready_replicas: int | None = None
    """Ready replicas as last seen."""
    desired_replicas: int | None = None
    """What the last decision asked for."""
    active_window: Annotated[str | None, Field(max_length=63)] = None
    """The schedule window open now; empty outside windows."""
    next_change: NextChange | None = None
    """The schedule's next boundary."""
    last_decision: LastDecision | None = None
    """The last decision and its reason."""
    last_scale_time: dt.datetime | None = None
    """When the controller last changed the replicas."""
    gpu_hours_today: float | None = None
    """Billed GPU-hours of the current local day; empty when unknown."""
    fallback_usd_today: float | None = None
    """Fallback spend of the current local day; empty when unknown."""
    fallback_open: bool | None = None
    """False once today's fallback spend reached budget.maxFallbackUsdPerDay (or cannot be checked while a
    cap is set): the gateway then stops sending requests to the fallback. Empty means open."""
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Ready, MetricsAvailable, ScalingActive and BudgetExceeded."""
    policy_state: Annotated[str | None, Field(max_length=65536)] = None
    """The policy's memory (idle grace, burst memory, scale-down delay), versioned JSON, so a restart keeps it."""
    ledger: PoolLedger | None = None
    """What today's usage was counted from (restart-safe, nothing in local files)."""
