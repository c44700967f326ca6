"""The GPUPool spec as a whole, and the object that carries it."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from policies.spec.base import _DNS1123, _Model
from policies.spec.fallback import Fallback
from policies.spec.metrics import Metrics
from policies.spec.schedule import Schedule
from policies.spec.serving import Billing, Budget, Demand, Objective, Target

__all__ = ["GPUPool", "GPUPoolSpec", "ObjectMeta"]


class GPUPoolSpec(_Model):
    """Desired behaviour of one pool of vLLM replicas."""

    target: Target
    """The Deployment to scale and its limits."""
    models: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(default_factory=list, max_length=32)
    """Model names clients send for this pool; the gateway routes requests by them (each name belongs to
    one pool)."""
    metrics: Metrics = Field(default_factory=Metrics)
    """Where demand is read from."""
    schedule: Schedule = Field(default_factory=Schedule)
    """Business-hour windows, holidays and overrides."""
    demand: Demand = Field(default_factory=Demand)
    """Queue-depth scaling."""
    cold_start_seconds: Annotated[int, Field(ge=0, le=7200)] = 180
    """Expected seconds from scale-up to Ready (image pull, weights load, CUDA graphs)."""
    billing: Billing = Field(default_factory=Billing)
    """GPU pricing and billing granularity."""
    fallback: Fallback = Field(default_factory=Fallback)
    """The paid API for overflow."""
    budget: Budget = Field(default_factory=Budget)
    """Daily caps."""
    objective: Objective = Field(default_factory=Objective)
    """The latency objective and late-request handling."""

    @property
    def replica_usd_per_hour(self) -> float:
        """What one replica costs per hour: the GPU's price times the GPUs it holds."""
        return self.billing.gpu_hourly_usd * self.target.gpus_per_replica

    @property
    def served_model(self) -> str | None:
        """The model name to send to the vLLM replicas (target.servedModel, else the first model)."""
        return self.target.served_model or (self.models[0] if self.models else None)

    @property
    def routes_late_requests(self) -> bool:
        """Whether the gateway tells requests that would miss the objective from those that make it: to
        defer them to the late lane (`objective.deferLateRequests`) or send them to the fallback
        (`fallback.takeLateRequests`, with a fallback)."""
        return self.objective.defer_late_requests or self.sends_long_prompts_away

    @property
    def sends_long_prompts_away(self) -> bool:
        """Whether a prompt whose own prefill is longer than the objective goes to the fallback whatever
        the replicas (`fallback.takeLateRequests` with a provider): its tokens are no demand for the GPUs."""
        return self.fallback.take_late_requests and bool(self.fallback.providers)

    def beyond_objective(self, prompt_tokens: float) -> bool:
        """Whether a request with this prompt is late on any number of replicas: its own prefill, at the
        pool's replica speeds, is longer than `objective.ttftSeconds`."""
        return self.demand.prefill_seconds(prompt_tokens) > self.objective.ttft_seconds

    @model_validator(mode="after")
    def _unique_models(self) -> GPUPoolSpec:
        repeated = sorted({m for m in self.models if self.models.count(m) > 1})
        if repeated:
            raise ValueError(f"models must not repeat a name (repeated: {', '.join(repeated)})")
        return self

    @model_validator(mode="after")
    def _windows_within_pool(self) -> GPUPoolSpec:
        for window in self.schedule.windows:
            if window.min_replicas > self.target.max_replicas:
                raise ValueError(
                    f"window {window.name!r}: minReplicas ({window.min_replicas}) exceeds the pool's "
                    f"maxReplicas ({self.target.max_replicas})"
                )
        return self


class ObjectMeta(_Model):
    """The part of Kubernetes object metadata a pool needs."""

    model_config = ConfigDict(extra="ignore")

    name: Annotated[str, Field(min_length=1, max_length=253, pattern=_DNS1123)]
    """Pool name."""
    namespace: Annotated[str, Field(max_length=63, pattern=_DNS1123)] = "default"
    """Pool namespace."""


class GPUPool(_Model):
    """A GPUPool object as written in YAML or read from the cluster."""

    model_config = ConfigDict(extra="ignore")

    api_version: Literal["ebbtide.dev/v1alpha1"] = Field(alias="apiVersion")
    """Must be ebbtide.dev/v1alpha1."""
    kind: Literal["GPUPool"]
    """Must be GPUPool."""
    metadata: ObjectMeta
    """Name and namespace."""
    spec: GPUPoolSpec
    """The pool's desired behaviour."""

    @property
    def deployment_namespace(self) -> str:
        """Namespace of the scaled Deployment."""
        return self.spec.target.namespace or self.metadata.namespace
