"""The controller against the real cluster where it must hold back: --dry-run and --once change only the
status and the log, a pause is respected, an HPA's Deployment is left alone, a second pool on one
Deployment and a pool without its Deployment are refused while the others go on, and a manual change is
answered with an Event and not fought. None of these need demand: the pools read metrics from a
loopback address that refuses (no data), and the schedule alone moves the replicas."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest

from controller.kube.client import request_json
from e2e.cluster import K8sCluster
from e2e.controller_harness import (
    NO_METRICS,
    Controller,
    condition,
    create_deployment,
    create_pool,
    deployment_generation,
    deployment_replicas,
    events_of,
    eventually,
    patch_pool,
    pool_status,
    run_once,
    set_replicas,
)
from e2e.manifests import install_crds

pytestmark = pytest.mark.e2e

ALL_WEEK = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def _always_open(min_replicas: int = 1, **extra: Any) -> dict[str, Any]:
    """A pool whose window is always open (floor `min_replicas`) and whose metrics never answer."""
    window = {"name": "always", "days": ALL_WEEK, "start": "00:00", "end": "24:00", "minReplicas": min_replicas}
    spec: dict[str, Any] = {
        "target": {"deployment": "vllm", "maxReplicas": 3},
        "metrics": NO_METRICS,
        "schedule": {"windows": [window]},
        "coldStartSeconds": 2,
    }
    spec.update(extra)
    return spec


def _untouched(api: Any, namespace: str, before: tuple[int, list[str]]) -> None:
    """The Deployment's spec was not written since `before`, and never by Ebbtide."""
    generation, managers = deployment_generation(api, namespace)
    assert generation == before[0] and "ebbtide" not in managers, (generation, managers)


@pytest.fixture
def api(k8s_cluster: K8sCluster) -> Any:
    install_crds(k8s_cluster.api_client)
    return k8s_cluster.api_client


def test_once_scales_and_exits_zero(k8s_cluster: K8sCluster, namespace: str, api: Any) -> None:
    create_deployment(api, namespace, replicas=0)
    create_pool(api, namespace, "chat", _always_open())
    code, lines = run_once(k8s_cluster.kubeconfig, namespace)
    assert code == 0, lines
    assert deployment_replicas(api, namespace) == 1
    assert "ebbtide" in deployment_generation(api, namespace)[1]  # the field manager of the scale patch
    (decision,) = [line for line in lines if line.get("pool") == "chat" and line.get("reason")]
    assert decision["from"] == 0 and decision["to"] == 1 and decision["applied"] is True
    assert decision["reason"] == "window-open" and decision["window"] == "always"
    status = eventually(
        lambda: pool_status(api, namespace, "chat").get("lastScaleTime") and pool_status(api, namespace, "chat"),
        10,
        "status",
    )
    assert status["desiredReplicas"] == 1 and status["observedGeneration"] == 1


def test_dry_run_once_changes_only_status_and_log(k8s_cluster: K8sCluster, namespace: str, api: Any) -> None:
    create_deployment(api, namespace, replicas=0)
    create_pool(api, namespace, "chat", _always_open())
    before = deployment_generation(api, namespace)
    code, lines = run_once(k8s_cluster.kubeconfig, namespace, "--dry-run")
    assert code == 0, lines
    (decision,) = [line for line in lines if line.get("pool") == "chat" and line.get("reason")]
    assert decision["to"] == 1 and decision["applied"] is False and decision["dry_run"] is True
    status = eventually(lambda: pool_status(api, namespace, "chat") or None, 10, "status")
    assert status["desiredReplicas"] == 1 and status["currentReplicas"] == 0
    # The Deployment was not written (same generation, no `ebbtide` field manager).
    _untouched(api, namespace, before)
    assert deployment_replicas(api, namespace) == 0


def test_once_exits_one_when_a_pool_cannot_be_read_and_the_others_go_on(
    k8s_cluster: K8sCluster, namespace: str, api: Any
) -> None:
    create_deployment(api, namespace, replicas=0)
    create_pool(api, namespace, "a-first", _always_open())
    time.sleep(1.1)  # creationTimestamp has whole seconds: the second pool must be visibly younger
    create_pool(api, namespace, "b-second", _always_open())
    create_pool(api, namespace, "c-missing", {**_always_open(), "target": {"deployment": "gone", "maxReplicas": 1}})
    code, lines = run_once(k8s_cluster.kubeconfig, namespace)
    assert code == 1, lines
    assert deployment_replicas(api, namespace) == 1  # the first pool acted
    second = eventually(lambda: condition(pool_status(api, namespace, "b-second"), "Ready"), 10, "b-second Ready")
    assert second["status"] == "False" and "a-first" in second["message"], second
    missing = eventually(lambda: condition(pool_status(api, namespace, "c-missing"), "Ready"), 10, "c-missing Ready")
    assert missing["status"] == "False" and "gone" in missing["message"], missing
    warnings = eventually(
        lambda: [e for e in events_of(api, namespace, "c-missing") if e["type"] == "Warning"], 10, "a Warning Event"
    )
    assert "gone" in warnings[0]["message"]


def test_pause_on_the_pool_or_the_deployment_decides_but_never_patches(
    k8s_cluster: K8sCluster, namespace: str, api: Any
) -> None:
    create_deployment(api, namespace, replicas=0, annotations={"ebbtide.dev/paused": "true"})
    create_pool(api, namespace, "chat", _always_open())
    before = deployment_generation(api, namespace)
    code, lines = run_once(k8s_cluster.kubeconfig, namespace)
    assert code == 0, lines
    (decision,) = [line for line in lines if line.get("pool") == "chat" and line.get("reason")]
    assert decision["to"] == 1 and decision["applied"] is False
    scaling = eventually(lambda: condition(pool_status(api, namespace, "chat"), "ScalingActive"), 10, "ScalingActive")
    assert scaling["status"] == "False" and "paused" in scaling["message"].lower(), scaling
    _untouched(api, namespace, before)

    # Unpause the Deployment and pause the pool instead: still nothing patched.
    request_json(
        api,
        "PATCH",
        f"/apis/apps/v1/namespaces/{namespace}/deployments/vllm",
        body={"metadata": {"annotations": {"ebbtide.dev/paused": None}}},
        content_type="application/merge-patch+json",
    )
    patch_pool(api, namespace, "chat", {"metadata": {"annotations": {"ebbtide.dev/paused": "true"}}})
    code, lines = run_once(k8s_cluster.kubeconfig, namespace)
    assert code == 0, lines
    assert deployment_replicas(api, namespace) == 0


def test_an_hpa_on_the_deployment_is_refused_with_the_owner_named(
    k8s_cluster: K8sCluster, namespace: str, api: Any
) -> None:
    create_deployment(api, namespace, replicas=0)
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "cpu", "namespace": namespace},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "vllm"},
            "minReplicas": 1,
            "maxReplicas": 2,
        },
    }
    request_json(api, "POST", f"/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers", body=hpa)
    create_pool(api, namespace, "chat", _always_open())
    before = deployment_generation(api, namespace)
    code, lines = run_once(k8s_cluster.kubeconfig, namespace)
    assert code == 0, lines
    scaling = eventually(lambda: condition(pool_status(api, namespace, "chat"), "ScalingActive"), 10, "ScalingActive")
    assert scaling["status"] == "False" and f"HorizontalPodAutoscaler {namespace}/cpu" in scaling["message"]
    # No kube-controller-manager HPA loop acts without metrics here, so any write would be ours.
    _untouched(api, namespace, before)


def test_a_manual_change_gets_an_event_and_is_not_fought(k8s_cluster: K8sCluster, namespace: str, api: Any) -> None:
    create_deployment(api, namespace, replicas=0)
    delay = 8
    create_pool(api, namespace, "chat", _always_open(demand={"scaleDownDelaySeconds": delay}))
    with Controller(k8s_cluster.kubeconfig, namespace, tick=0.5) as controller:
        eventually(
            lambda: deployment_replicas(api, namespace) == 1, 20, f"the window floor applied\n{controller.tail()}"
        )
        # Someone scales to zero by hand, against the window's floor of one.
        set_replicas(api, namespace, 0)
        changed_at = time.monotonic()
        event = eventually(
            lambda: [e for e in events_of(api, namespace, "chat") if e["reason"] == "ManualScale"],
            10,
            f"a ManualScale Event\n{controller.tail()}",
        )
        assert "changed to 0" in event[0]["message"]
        # Within the scale-down delay Ebbtide does not put it back ...
        while time.monotonic() - changed_at < delay - 2:
            assert deployment_replicas(api, namespace) == 0, controller.tail()
            time.sleep(0.5)
        # ... after it, the floor applies again.
        eventually(lambda: deployment_replicas(api, namespace) == 1, delay + 10, f"the floor back\n{controller.tail()}")
    assert controller.alive() is False


def test_edits_and_deletes_are_picked_up_live(k8s_cluster: K8sCluster, namespace: str, api: Any) -> None:
    create_deployment(api, namespace, replicas=0)
    create_pool(api, namespace, "chat", _always_open())
    with Controller(k8s_cluster.kubeconfig, namespace, tick=30) as controller:
        eventually(lambda: deployment_replicas(api, namespace) == 1, 20, f"first pass\n{controller.tail()}")
        started = dt.datetime.now(dt.UTC)
        # A spec edit wakes the loop at once, well before the 30 s tick.
        patch_pool(
            api, namespace, "chat", {"spec": {"schedule": {"windows": [{**_always_open(2)["schedule"]["windows"][0]}]}}}
        )
        eventually(lambda: deployment_replicas(api, namespace) == 2, 10, f"the edit applied\n{controller.tail()}")
        assert (dt.datetime.now(dt.UTC) - started).total_seconds() < 10
        status = eventually(
            lambda: (s := pool_status(api, namespace, "chat")).get("observedGeneration") == 2 and s, 10, "generation 2"
        )
        assert status["desiredReplicas"] == 2
