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
        scaled = eventually(lambda: [d for d in controller.decisions("chat") if d.get("applied")], 5, "the log line")
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
        # The log line of the patch comes a moment after the patch itself.
        applied = eventually(
            lambda: [d for d in controller.decisions("chat") if d.get("applied") and d["to"] == 0], 5, "the log line"
        )
        assert applied[-1]["reason"] == "idle-to-zero"
        assert "idle-grace" in [d["reason"] for d in controller.decisions("chat")]
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
    """Stopped (SIGTERM) 8 s into a 14 s grace, a new controller still waits out only the rest of it: it reads
    the policy state back from the status, so it neither scales down before the grace ends nor starts the
    grace afresh (which would take it a whole grace from its own start)."""
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
        time.sleep(max(0.0, 8 - (time.monotonic() - idle_since)))
    finally:
        assert first.stop() == 0
    assert deployment_replicas(api, namespace) == 1
    persisted = pool_status(api, namespace, "chat").get("policyState")
    restarted = time.monotonic()
    with Controller(k8s_cluster.kubeconfig, namespace, tick=1.0) as second:
        eventually(lambda: deployment_replicas(api, namespace) == 0, grace + 10, f"idle to zero\n{second.tail()}")
        done = time.monotonic()
        idle, after_restart = done - idle_since, done - restarted
        context = f"{persisted}\n{second.tail(60)}"
        # Not before the grace ended (the slack is the poll and tick between the queue emptying and the
        # policy seeing it) ...
        assert idle >= grace - 1.5, f"to zero {idle:.1f} s after the queue emptied (grace {grace} s)\n{context}"
        # ... and well before a whole grace from the restart: what was left of it, or the new process's own
        # start-up when the old one took that long to stop on a loaded machine.
        assert after_restart <= grace - 3, f"to zero {after_restart:.1f} s after the restart\n{context}"
        print(
            f"restarted {restarted - idle_since:.1f} s into a {grace} s grace; to zero {idle:.1f} s after the "
            f"queue emptied, {after_restart:.1f} s after the restart"
        )


def test_a_hung_pod_does_not_stall_another_pool(
    k8s_cluster: K8sCluster, namespace: str, gpu_node: Any, standin_pods: Any
) -> None:
    """Pool A's pod accepts the scrape and never answers; pool B's queue burst is still acted on within a
    tick, and A holds (no data) rather than reading as idle."""
    from e2e.standin import MetricsFault

    api = k8s_cluster.api_client
    install_crds(api)
    node = gpu_node(f"gpu-{namespace}"[:63], 8)
    followers = {}
    for name in ("vllm-a", "vllm-b"):
        create_deployment(api, namespace, name, replicas=1, node=node.metadata.name)
        followers[name] = standin_pods(deployment=name, port=8000)
        followers[name].wait_for(1)
        spec = _spec(idleGraceSeconds=2)
        # A may go to zero (so holding it means something); B keeps one for the burst.
        spec["target"] = {**spec["target"], "deployment": name, "minReplicas": 0 if name == "vllm-a" else 1}
        spec["metrics"] = {"scrapeTimeoutSeconds": 1.5}
        create_pool(api, namespace, name.replace("vllm", "pool"), spec)
    (hung,) = followers["vllm-a"].replicas().values()
    (busy,) = followers["vllm-b"].replicas().values()
    hung.fail_metrics(MetricsFault.HANG)
    with Controller(k8s_cluster.kubeconfig, namespace, tick=TICK) as controller:
        eventually(
            lambda: (
                (c := condition(pool_status(api, namespace, "pool-b"), "MetricsAvailable")) and c["status"] == "True"
            ),
            20,
            f"pool B read\n{controller.tail()}",
        )
        busy.report(waiting=10, running=2)
        burst = time.monotonic()
        eventually(
            lambda: deployment_replicas(api, namespace, "vllm-b") == 3,
            TICK + POLL + 5,
            f"B scaled\n{controller.tail()}",
        )
        took = time.monotonic() - burst
        assert took <= TICK + POLL + 2.0, f"pool B took {took:.1f} s beside a hung pod"
        a = pool_status(api, namespace, "pool-a")
        assert condition(a, "MetricsAvailable")["status"] == "False", a
        assert deployment_replicas(api, namespace, "vllm-a") == 1  # held: a hung scrape is not an idle pool
        print(f"burst beside a hung pod: {took:.2f} s")
