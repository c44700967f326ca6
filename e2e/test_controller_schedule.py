"""The schedule moves replicas on the real cluster at its own boundaries: a window opening at T is
pre-warmed at T - cold start (the daemon wakes then, not at its next tick) and the pod is Ready by T.

Windows are written in whole minutes, so the test picks the next minute boundary at least a few
seconds ahead; kwok makes the pod Ready a few seconds after it starts (the cold start), and the
controller's tick is long (30 s) so only the boundary wakeup can explain a scale-up on time."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest

from controller.kube.pods import parse_time
from e2e.cluster import K8sCluster
from e2e.controller_harness import (
    NO_METRICS,
    Controller,
    create_deployment,
    create_pool,
    deployment_replicas,
    eventually,
    pool_status,
    ready_pods,
)
from e2e.manifests import install_crds

pytestmark = pytest.mark.e2e

COLD_START = 6  # seconds the pool expects (its pre-warm lead)
POD_COLD_START = 4.0  # seconds kwok takes to make the pod Ready (the real model server is a bit faster)
WEEKDAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def _next_opening(margin: float) -> dt.datetime:
    """The next whole minute at least `margin` seconds away (UTC)."""
    now = dt.datetime.now(dt.UTC)
    opening = now.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    if (opening - now).total_seconds() < margin:
        opening += dt.timedelta(minutes=1)
    return opening


def _window(opens: dt.datetime, minutes: int = 3) -> dict[str, Any]:
    closes = opens + dt.timedelta(minutes=minutes)
    return {
        "name": "office",
        "days": [WEEKDAYS[opens.weekday()]],
        "start": opens.strftime("%H:%M"),
        "end": closes.strftime("%H:%M") if closes.date() == opens.date() else "24:00",
        "minReplicas": 1,
    }


def test_a_window_is_prewarmed_one_cold_start_ahead_and_ready_when_it_opens(
    k8s_cluster: K8sCluster, namespace: str, gpu_node: Any
) -> None:
    api = k8s_cluster.api_client
    install_crds(api)
    node = gpu_node(f"gpu-{namespace}", 2)
    create_deployment(api, namespace, replicas=0, node=node.metadata.name, cold_start=POD_COLD_START)
    opens = _next_opening(COLD_START + 8)
    spec = {
        "target": {"deployment": "vllm", "maxReplicas": 2},
        "metrics": NO_METRICS,
        "coldStartSeconds": COLD_START,
        "schedule": {"timezone": "UTC", "windows": [_window(opens)]},
    }
    create_pool(api, namespace, "office", spec)
    prewarm_at = opens - dt.timedelta(seconds=COLD_START)
    with Controller(k8s_cluster.kubeconfig, namespace, tick=30) as controller:
        status = eventually(lambda: pool_status(api, namespace, "office") or None, 15, "the first status")
        assert status["nextChange"]["what"] == "pre-warm for window 'office'", status
        assert parse_time(status["nextChange"]["time"]) == prewarm_at
        assert deployment_replicas(api, namespace) == 0
        timeout = (prewarm_at - dt.datetime.now(dt.UTC)).total_seconds() + 10
        eventually(lambda: deployment_replicas(api, namespace) == 1, timeout, f"the pre-warm\n{controller.tail()}")
        scaled = eventually(lambda: [d for d in controller.decisions("office") if d.get("applied")], 5, "the log line")
        assert scaled[0]["reason"] == "prewarm", controller.tail()
        applied_at = parse_time(scaled[0]["time"])
        assert applied_at is not None
        lateness = (applied_at - prewarm_at).total_seconds()
        assert 0 <= lateness < 1.0, f"pre-warm applied {lateness:.3f} s after {prewarm_at}"

        pods = eventually(lambda: ready_pods(api, namespace), POD_COLD_START + 10, "the pod Ready")
        ready = next(c for c in pods[0]["status"]["conditions"] if c["type"] == "Ready")
        ready_at = parse_time(ready["lastTransitionTime"])
        assert ready_at is not None and ready_at <= opens, f"Ready at {ready_at}, window opens {opens}"

        # At the opening the daemon wakes again: the window is open, one replica serves (the reason is the
        # metrics' absence: the floor is met and nothing else is known).
        eventually(
            lambda: pool_status(api, namespace, "office").get("activeWindow") == "office",
            (opens - dt.datetime.now(dt.UTC)).total_seconds() + 5,
            f"the window open in the status\n{controller.tail()}",
        )
        # The Deployment counts the pod Ready a moment after the pod itself is: the status written at the
        # opening can still read 0 Ready, and the next one (within a tick) reads 1.
        status = eventually(
            lambda: _with_one_ready(pool_status(api, namespace, "office")),
            35,
            f"one replica Ready in the status\n{controller.tail()}",
        )
        assert status["desiredReplicas"] == 1, status
        assert status["nextChange"]["what"] == "window 'office' closes"


def _with_one_ready(status: dict[str, Any]) -> dict[str, Any] | None:
    """The pool's status once it reports one replica Ready, else None (to wait for)."""
    return status if status.get("readyReplicas") == 1 else None


def test_a_window_within_one_cold_start_of_the_last_keeps_its_replica(
    k8s_cluster: K8sCluster, namespace: str, gpu_node: Any, standin_pods: Any
) -> None:
    """Window A closes at M, window B opens one minute later, the cold start is 90 s: the idle replica
    stays through the gap (releasing it would mean starting it again before it could be useful)."""
    api = k8s_cluster.api_client
    install_crds(api)
    node = gpu_node(f"gpu-{namespace}"[:63], 2)
    create_deployment(api, namespace, replicas=1, node=node.metadata.name)
    standin_pods(deployment="vllm", port=8000).wait_for(1)  # the queue is read (and empty)
    closes = _next_opening(15)
    first = {**_window(closes - dt.timedelta(minutes=2), minutes=2), "name": "morning"}
    second = {**_window(closes + dt.timedelta(minutes=1), minutes=2), "name": "afternoon"}
    spec = {
        "target": {"deployment": "vllm", "maxReplicas": 2},
        "coldStartSeconds": 90,
        "demand": {"idleGraceSeconds": 0, "scaleDownDelaySeconds": 1},
        "billing": {"granularity": "second", "minimumBilledSeconds": 0},
        "schedule": {"timezone": "UTC", "windows": [first, second]},
    }
    create_pool(api, namespace, "office", spec)
    with Controller(k8s_cluster.kubeconfig, namespace, tick=1.0) as controller:
        eventually(
            lambda: pool_status(api, namespace, "office").get("activeWindow") == "morning",
            15,
            f"the first window open\n{controller.tail()}",
        )
        wait = (closes - dt.datetime.now(dt.UTC)).total_seconds()
        eventually(
            lambda: pool_status(api, namespace, "office").get("activeWindow") is None,
            wait + 5,
            f"the first window closed\n{controller.tail()}",
        )
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            assert deployment_replicas(api, namespace) == 1, controller.tail()
            time.sleep(0.5)
        status = pool_status(api, namespace, "office")
        assert status["lastDecision"]["reason"] == "prewarm", status
        assert "afternoon" in status["lastDecision"]["message"]
