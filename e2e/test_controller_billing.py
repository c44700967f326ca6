"""Billing-aware scale-down on the real cluster: the ReplicaSet deletes the pod whose paid billing period
ends first (left alone it deletes the newest, whose fresh hour is paid), because the controller set
pod-deletion-cost on the pods before patching the scale."""

from __future__ import annotations

import time
from typing import Any

import pytest

from controller.kube.pods import DELETION_COST_ANNOTATION
from e2e.cluster import K8sCluster
from e2e.controller_harness import (
    NO_METRICS,
    create_deployment,
    create_pool,
    deployment_replicas,
    eventually,
    pods_of,
    ready_pods,
    run_once,
    set_replicas,
)
from e2e.manifests import install_crds

pytestmark = pytest.mark.e2e


def _live_names(api: Any, namespace: str) -> list[str]:
    return [p["metadata"]["name"] for p in pods_of(api, namespace) if not p["metadata"].get("deletionTimestamp")]


def test_scale_down_deletes_the_pod_whose_paid_hour_ends_first(
    k8s_cluster: K8sCluster, namespace: str, gpu_node: Any
) -> None:
    api = k8s_cluster.api_client
    install_crds(api)
    node = gpu_node(f"gpu-{namespace}", 4)
    create_deployment(api, namespace, replicas=1, node=node.metadata.name)
    # Three pods started a few seconds apart (scheduled times have whole seconds), oldest first.
    started: list[str] = []
    for count in (1, 2, 3):
        set_replicas(api, namespace, count)
        pods = eventually(
            lambda c=count: len(ready_pods(api, namespace)) == c and ready_pods(api, namespace), 20, "pods"
        )
        started += [p["metadata"]["name"] for p in pods if p["metadata"]["name"] not in started]
        time.sleep(1.2)
    _oldest, middle, newest = started

    # Hourly billing: every pod's hour is paid, the oldest's ends first. The release margin covers the
    # whole hour, so the billing hold lets each go; the pool's maximum of 2 forces one out.
    spec = {
        "target": {"deployment": "vllm", "maxReplicas": 2},
        "metrics": NO_METRICS,
        "billing": {"granularity": "hour", "releaseMarginSeconds": 3600},
    }
    create_pool(api, namespace, "chat", spec)
    code, lines = run_once(k8s_cluster.kubeconfig, namespace)
    assert code == 0, lines
    assert deployment_replicas(api, namespace) == 2
    eventually(lambda: len(_live_names(api, namespace)) == 2, 20, "one pod deleted")
    assert _live_names(api, namespace) == sorted([middle, newest]), (started, _live_names(api, namespace))

    costs = {
        p["metadata"]["name"]: p["metadata"].get("annotations", {}).get(DELETION_COST_ANNOTATION)
        for p in pods_of(api, namespace)
    }
    assert int(costs[middle]) < int(costs[newest]), costs  # and the oldest had the lowest of all


def test_per_second_billing_lets_the_newest_go(k8s_cluster: K8sCluster, namespace: str, gpu_node: Any) -> None:
    """With nothing paid ahead, the least warmed-up pod goes, as the ReplicaSet would choose itself."""
    api = k8s_cluster.api_client
    install_crds(api)
    node = gpu_node(f"gpu-{namespace}", 4)
    create_deployment(api, namespace, replicas=1, node=node.metadata.name)
    started: list[str] = []
    for count in (1, 2):
        set_replicas(api, namespace, count)
        pods = eventually(
            lambda c=count: len(ready_pods(api, namespace)) == c and ready_pods(api, namespace), 20, "pods"
        )
        started += [p["metadata"]["name"] for p in pods if p["metadata"]["name"] not in started]
        time.sleep(1.2)
    spec = {
        "target": {"deployment": "vllm", "maxReplicas": 1},
        "metrics": NO_METRICS,
        "billing": {"granularity": "second", "minimumBilledSeconds": 0},
    }
    create_pool(api, namespace, "chat", spec)
    code, lines = run_once(k8s_cluster.kubeconfig, namespace)
    assert code == 0, lines
    eventually(lambda: len(_live_names(api, namespace)) == 1, 20, "one pod deleted")
    assert _live_names(api, namespace) == [started[0]]
