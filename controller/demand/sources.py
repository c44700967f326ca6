"""The one table of demand sources, and how a pool's spec picks and builds its engine source.

Every source reads asynchronously through an injected httpx client within its own timeout, never
raises, and reports a failure as NoData (the pods source per pod), never as zeros; one contract test
(tests/test_demand_sources.py) runs over every entry of SOURCES.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

from controller.demand.gateway import GatewaySource
from controller.demand.pods import PodsSource, pod_metrics_urls
from controller.demand.prometheus import PrometheusSource, render_queries
from controller.kube.pods import PodInfo
from controller.ports import NoData, PoolRef
from policies.spec import GPUPoolSpec, MetricsSourceKind

__all__ = ["SOURCES", "EngineSource", "build_engine_source", "secret_key"]

EngineSource = PodsSource | PrometheusSource
"""A source of the engines' queue (the spec's metrics.source)."""

SOURCES: Mapping[str, type[GatewaySource] | type[PodsSource] | type[PrometheusSource]] = MappingProxyType(
    {
        GatewaySource.kind: GatewaySource,
        PodsSource.kind: PodsSource,
        PrometheusSource.kind: PrometheusSource,
    }
)
"""Every demand source by its kind, sorted; `pods` and `prometheus` are the spec's metrics.source values."""


def secret_key(name: str, key: str) -> str:
    """How a Secret's value is keyed in the `secrets` mapping the daemon passes in: 'name/key'."""
    return f"{name}/{key}"


def build_engine_source(
    pool: PoolRef, spec: GPUPoolSpec, pods: Sequence[PodInfo], secrets: Mapping[str, str] | None = None
) -> EngineSource | NoData:
    """The pool's engine source as its spec says, or NoData saying what is missing to build it."""
    metrics = spec.metrics
    if metrics.source is MetricsSourceKind.PODS:
        return PodsSource(
            pod_metrics_urls(spec, pods), timeout=metrics.scrape_timeout_seconds, model_name=spec.served_model
        )
    prom = metrics.prometheus
    if prom is None:  # the spec's validator refuses this; kept for a spec built without validation
        return NoData("metrics.source is prometheus but metrics.prometheus is missing")
    token = None
    ref = prom.bearer_token_secret_ref
    if ref is not None:
        token = (secrets or {}).get(secret_key(ref.name, ref.key))
        if not token:
            return NoData(f"bearer token Secret {pool.namespace}/{ref.name} key {ref.key!r} not available")
    return PrometheusSource(
        prom.url,
        render_queries(prom.queries, pool),
        timeout=metrics.scrape_timeout_seconds,
        max_age_seconds=spec.demand.metric_max_age_seconds,
        bearer_token=token,
    )
