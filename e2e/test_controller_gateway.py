"""The gateway's counters through the daemon: `--gateway-url` is scraped, today's fallback dollars land
in the status, and once they reach `budget.maxFallbackUsdPerDay` the status says `fallbackOpen: false`
(which the gateway obeys) with BudgetExceeded=True.

The gateway here is a real Prometheus exposition of the gateway's series (controller/demand/series.py)
served by prometheus_client on loopback; the engines are stand-ins at the pods' own IPs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server

from controller.demand import series
from e2e.cluster import K8sCluster
from e2e.controller_harness import Controller, condition, create_deployment, create_pool, eventually, pool_status
from e2e.manifests import install_crds

pytestmark = pytest.mark.e2e


@pytest.fixture
def gateway() -> Iterator[tuple[str, Any]]:
    registry = CollectorRegistry()
    spend = Counter(
        series.FALLBACK_USD.removesuffix("_total"),
        "fallback dollars",
        ["namespace", "pool", "provider"],
        registry=registry,
    )
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"http://127.0.0.1:{server.server_port}", spend
    finally:
        server.shutdown()
        thread.join(5)


def test_fallback_spend_reaches_the_status_and_closes_the_fallback_at_the_cap(
    k8s_cluster: K8sCluster, namespace: str, gpu_node: Any, standin_pods: Any, gateway: tuple[str, Any]
) -> None:
    url, spend = gateway
    api = k8s_cluster.api_client
    install_crds(api)
    node = gpu_node(f"gpu-{namespace}"[:63], 2)
    create_deployment(api, namespace, replicas=1, node=node.metadata.name)
    standin_pods(deployment="vllm", port=8000).wait_for(1)
    spend.labels(namespace=namespace, pool="chat", provider="mid-tier").inc(1.25)
    spec = {
        "target": {"deployment": "vllm", "minReplicas": 1, "maxReplicas": 2},
        "budget": {"maxFallbackUsdPerDay": 5},
    }
    create_pool(api, namespace, "chat", spec)
    with Controller(k8s_cluster.kubeconfig, namespace, "--gateway-url", url, tick=1.0) as controller:
        status = eventually(
            lambda: (s := pool_status(api, namespace, "chat")).get("fallbackUsdToday") is not None and s,
            20,
            f"fallback dollars in the status\n{controller.tail()}",
        )
        assert status["fallbackUsdToday"] == pytest.approx(1.25)
        assert status["fallbackOpen"] is True
        assert condition(status, "BudgetExceeded")["status"] == "False"

        spend.labels(namespace=namespace, pool="chat", provider="mid-tier").inc(4.0)
        closed = eventually(
            lambda: (s := pool_status(api, namespace, "chat")).get("fallbackOpen") is False and s,
            20,
            f"the fallback closed\n{controller.tail()}",
        )
        assert closed["fallbackUsdToday"] == pytest.approx(5.25)
        budget = condition(closed, "BudgetExceeded")
        assert budget["status"] == "True" and budget["reason"] == "FallbackUsdCap", budget
