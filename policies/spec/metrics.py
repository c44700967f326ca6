"""Where the controller reads demand: the replicas' own /metrics, or Prometheus queries."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import ConfigDict, Field, model_validator

from policies.spec.base import _Model
from policies.spec.fallback import SecretRef

__all__ = ["Metrics", "MetricsSourceKind", "PrometheusQueries", "PrometheusSource"]


class MetricsSourceKind(StrEnum):
    """Where the controller reads the engines' queue from."""

    PODS = "pods"
    """Scrape /metrics of the target Deployment's Ready pods at their IPs (target.port)."""
    PROMETHEUS = "prometheus"
    """Ask a Prometheus server's HTTP API with the queries below."""


class PrometheusQueries(_Model):
    """PromQL for each signal; `$namespace`, `$deployment` and `$pool` are replaced before the query runs.

    Each query but `pods` must return one series (or an empty vector, which is no data). The token
    queries return rates in tokens per second. `pods` names the pods behind the sums: a Ready pod
    missing from it makes the read no data, as a pod the `pods` source cannot scrape does.
    """

    waiting: Annotated[str, Field(min_length=1, max_length=4096)] = (
        'sum(vllm:num_requests_waiting{namespace="$namespace",pod=~"$deployment-.*"})'
    )
    """Requests queued on the engines."""
    running: Annotated[str, Field(min_length=1, max_length=4096)] = (
        'sum(vllm:num_requests_running{namespace="$namespace",pod=~"$deployment-.*"})'
    )
    """Requests in the engines' running batches."""
    kv_cache_usage: Annotated[str | None, Field(max_length=4096)] = (
        'avg(vllm:kv_cache_usage_perc{namespace="$namespace",pod=~"$deployment-.*"})'
    )
    """Mean KV-cache use, 0..1 (optional)."""
    prompt_tokens_per_second: Annotated[str | None, Field(max_length=4096)] = (
        'sum(rate(vllm:prompt_tokens_total{namespace="$namespace",pod=~"$deployment-.*"}[1m]))'
    )
    """Prompt tokens per second served by the engines (optional)."""
    generation_tokens_per_second: Annotated[str | None, Field(max_length=4096)] = (
        'sum(rate(vllm:generation_tokens_total{namespace="$namespace",pod=~"$deployment-.*"}[1m]))'
    )
    """Generated tokens per second (optional)."""
    pods: Annotated[str | None, Field(max_length=4096)] = (
        'count by (pod) (vllm:num_requests_waiting{namespace="$namespace",pod=~"$deployment-.*"})'
    )
    """One series per pod the server has fresh samples of, its name in the `pod` label (optional, but
    without it a Ready pod that stopped being scraped silently leaves the sums: a smaller queue)."""


class PrometheusSource(_Model):
    """A Prometheus server to read the engines' metrics from."""

    url: Annotated[str, Field(max_length=2048, pattern=r"^https?://")]
    """Base URL of the Prometheus server, e.g. http://prometheus.monitoring:9090."""
    bearer_token_secret_ref: SecretRef | None = None
    """Secret (in the pool's namespace) holding a bearer token for the server, if it needs one."""
    queries: PrometheusQueries = Field(default_factory=PrometheusQueries)
    """The PromQL behind each signal."""


class Metrics(_Model):
    """Where demand is read from."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.source) || self.source != 'prometheus' || has(self.prometheus)",
                    "message": "source prometheus needs the prometheus section (its url)",
                }
            ]
        }
    )

    source: MetricsSourceKind = MetricsSourceKind.PODS
    """pods scrapes the replicas directly; prometheus asks a Prometheus server."""
    path: Annotated[str, Field(max_length=256, pattern=r"^/")] = "/metrics"
    """Path of vLLM's metrics on each replica (source pods)."""
    scrape_timeout_seconds: Annotated[float, Field(gt=0, le=30)] = 2.0
    """Budget of one read (one pod, or one query); a slower one is no data, it never stalls other pools."""
    prometheus: PrometheusSource | None = None
    """The Prometheus server (source prometheus)."""
    gateway: bool = True
    """Add the gateway's counters (requests held or sent to the fallback, offered tokens) to the demand,
    when the controller knows where the gateway runs."""

    @model_validator(mode="after")
    def _prometheus_given(self) -> Metrics:
        if self.source is MetricsSourceKind.PROMETHEUS and self.prometheus is None:
            raise ValueError("source prometheus needs the prometheus section (its url)")
        return self
