"""The controller scaling on demand read from the pods themselves, on the real cluster.

kwok gives the pods loopback IPs and the stand-in follower (e2e/standin/follow.py) keeps a vLLM stand-in
listening at each Ready pod's IP:8000, so the controller finds the pods through the API and scrapes
their /metrics as it would in production. Queues are staged with the stand-in's `report` (the gauges
vLLM exports), time moves by short delays and graces, never real hours."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import pytest

from e2e.cluster import K8sCluster
from e2e.controller_harness import (
    Controller,
    condition,
    create_deployment,
    create_pool,
    deployment_replicas,
    events_of,
    eventually,
    pool_status,
)
from e2e.manifests import install_crds
from e2e.standin import PodFollower

pytestmark = pytest.mark.e2e

TICK = 2.0
POLL = 1.0  # the demand poller's period


def _spec(**demand: Any) -> dict[str, Any]:
    return {
        "target": {"deployment": "vllm", "minReplicas": 0, "maxReplicas": 4},
        "demand": {"targetQueuePerReplica": 4, "scaleDownDelaySeconds": 2, "idleGraceSeconds": 6, **demand},
        "billing": {"granularity": "second", "minimumBilledSeconds": 0},
        "coldStartSeconds": 1,
    }


def _setup(
    k8s_cluster: K8sCluster,
    namespace: str,
    gpu_node: Callable[..., Any],
    standin_pods: Callable[..., PodFollower],
    replicas: int,
    spec: dict[str, Any],
) -> PodFollower:
    api = k8s_cluster.api_client
    install_crds(api)
    node = gpu_node(f"gpu-{namespace}"[:63], 6)
    create_deployment(api, namespace, replicas=replicas, node=node.metadata.name)
    pods = standin_pods(deployment="vllm", port=8000)
    pods.wait_for(replicas)
    create_pool(api, namespace, "chat", spec)
    return pods


def test_a_queue_burst_scales_up_within_one_tick(
    k8s_cluster: K8sCluster, namespace: str, gpu_node: Any, standin_pods: Any
) -> None:
    api = k8s_cluster.api_client
    pods = _setup(k8s_cluster, namespace, gpu_node, standin_pods, 1, _spec(idleGraceSeconds=600))
    with Controller(k8s_cluster.kubeconfig, namespace, tick=TICK) as controller:
        eventually(
            lambda: condition(pool_status(api, namespace, "chat"), "MetricsAvailable"),
            20,
            f"the first status\n{controller.tail()}",
        )
        assert deployment_replicas(api, namespace) == 1
        (replica,) = pods.replicas().values()
        replica.report(waiting=10, running=2)  # 12 requests at 4 per replica: 3 replicas
        burst = time.monotonic()
        eventually(lambda: deployment_replicas(api, namespace) == 3, TICK + POLL + 5, f"scale-up\n{controller.tail()}")
        took = time.monotonic() - burst
        assert took <= TICK + POLL + 1.5, f"took {took:.1f} s for a tick of {TICK} s"
        scaled = [d for d in controller.decisions("chat") if d.get("applied")]
        assert scaled[-1]["reason"] == "queue-high" and scaled[-1]["queue"] == 12, scaled[-1]
        # The new pods come up and are scraped too: all three are read, the queue is still 12.
        pods.wait_for(3)
        status = eventually(
            lambda: (s := pool_status(api, namespace, "chat")).get("readyReplicas") == 3 and s, 20, "3 Ready"
        )
        assert condition(status, "MetricsAvailable")["status"] == "True"
        print(f"queue burst to scale patch: {took:.2f} s (tick {TICK} s, poll {POLL} s)")


def test_idle_goes_to_zero_after_the_grace_and_not_before(
    k8s_cluster: K8sCluster, namespace: str, gpu_node: Any, standin_pods: Any
) -> None:
    api = k8s_cluster.api_client
    grace = 8
    pods = _setup(k8s_cluster, namespace, gpu_node, standin_pods, 1, _spec(idleGraceSeconds=grace))
    (replica,) = pods.replicas().values()
    replica.report(waiting=2, running=1)  # busy
    with Controller(k8s_cluster.kubeconfig, namespace, tick=1.0) as controller:
        eventually(lambda: any(d.get("queue") == 3 for d in controller.decisions("chat")), 20, "the busy queue read")
        replica.report(waiting=0, running=0)
        idle_since = time.monotonic()
        eventually(lambda: deployment_replicas(api, namespace) == 0, grace + 8, f"idle to zero\n{controller.tail()}")
        idle = time.monotonic() - idle_since
        assert grace - 1.5 <= idle <= grace + 4, f"went to zero after {idle:.1f} s idle (grace {grace} s)"
        reasons = [d["reason"] for d in controller.decisions("chat")]
        assert "idle-grace" in reasons and reasons[-1] in ("idle-to-zero", "steady", "pool-min"), reasons
        applied = [d for d in controller.decisions("chat") if d.get("applied")]
        assert applied[-1]["reason"] == "idle-to-zero" and applied[-1]["to"] == 0
        print(f"idle to zero after {idle:.1f} s (grace {grace} s)")


def test_metrics_endpoint_killed_holds_with_metrics_unavailable(
    k8s_cluster: K8sCluster, namespace: str, gpu_node: Any, standin_pods: Any
) -> None:
    api = k8s_cluster.api_client
    pods = _setup(k8s_cluster, namespace, gpu_node, standin_pods, 2, _spec(idleGraceSeconds=2))
    first, second = sorted(pods.replicas().values(), key=lambda r: r.pod)
    first.report(waiting=6, running=2)  # 8 at 4 per replica: the 2 running are right
    with Controller(k8s_cluster.kubeconfig, namespace, tick=1.0) as controller:
        eventually(
            lambda: (c := condition(pool_status(api, namespace, "chat"), "MetricsAvailable")) and c["status"] == "True",
            20,
            f"metrics read\n{controller.tail()}",
        )
        # The queue empties but one pod's metrics endpoint dies: a partial read is no data, never a
        # smaller queue, so nothing scales down however long the grace and the delay have passed.
        first.report(waiting=0, running=0)
        second.kill()
        killed = dt.datetime.now(dt.UTC)
        unavailable = eventually(
            lambda: (
                (c := condition(pool_status(api, namespace, "chat"), "MetricsAvailable"))
                and c["status"] == "False"
                and c
            ),
            10,
            f"MetricsAvailable=False\n{controller.tail()}",
        )
        assert unavailable["reason"] == "NoData", unavailable
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            assert deployment_replicas(api, namespace) == 2, controller.tail()
            time.sleep(0.5)
        status = pool_status(api, namespace, "chat")
        assert status["lastDecision"]["reason"] == "no-data-hold", status
        warnings = [e for e in events_of(api, namespace, "chat") if e["type"] == "Warning"]
        assert any(e["reason"] == "NoDataHold" for e in warnings), warnings
        assert (dt.datetime.now(dt.UTC) - killed).total_seconds() > 8

        # Healed: the queue is really empty now, and the pool shrinks.
        second.revive()
        eventually(
            lambda: deployment_replicas(api, namespace) < 2, 20, f"scale-down after healing\n{controller.tail()}"
        )


def test_a_restart_keeps_the_idle_grace(
    k8s_cluster: K8sCluster, namespace: str, gpu_node: Any, standin_pods: Any
) -> None:
    """Stopped (SIGTERM) 5 s into a 14 s grace, a new controller still waits out the rest of it: it reads the
    policy state back from the status, so it neither scales down at once nor starts the grace afresh."""
    api = k8s_cluster.api_client
    grace = 14
    pods = _setup(k8s_cluster, namespace, gpu_node, standin_pods, 1, _spec(idleGraceSeconds=grace))
    (replica,) = pods.replicas().values()
    replica.report(waiting=1, running=1)
    first = Controller(k8s_cluster.kubeconfig, namespace, tick=1.0)
    try:
        eventually(lambda: any(d.get("queue") == 2 for d in first.decisions("chat")), 20, "the busy queue read")
        replica.report(waiting=0, running=0)
        idle_since = time.monotonic()
        eventually(lambda: any(d.get("reason") == "idle-grace" for d in first.decisions("chat")), 10, "idle grace")
        time.sleep(max(0.0, 5 - (time.monotonic() - idle_since)))
    finally:
        assert first.stop() == 0
    assert deployment_replicas(api, namespace) == 1
    with Controller(k8s_cluster.kubeconfig, namespace, tick=1.0) as second:
        eventually(lambda: deployment_replicas(api, namespace) == 0, grace + 10, f"idle to zero\n{second.tail()}")
        idle = time.monotonic() - idle_since
        # Kept: to zero at the end of the first grace (not at restart, not a whole grace after it).
        assert grace - 1.5 <= idle <= grace + 4, f"to zero {idle:.1f} s after the queue emptied (grace {grace} s)"
        print(f"restarted 5 s into the grace; to zero {idle:.1f} s after the queue emptied (grace {grace} s)")
