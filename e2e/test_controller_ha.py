"""Two controllers on one Lease: exactly one acts; killed without releasing, the other acts within the
lease duration; stopped with SIGTERM (which releases the Lease), the other acts within a few seconds."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from controller.kube.client import request_json
from e2e.cluster import K8sCluster
from e2e.controller_harness import (
    NO_METRICS,
    Controller,
    create_deployment,
    create_pool,
    deployment_replicas,
    eventually,
    patch_pool,
)
from e2e.manifests import install_crds

pytestmark = pytest.mark.e2e

LEASE_SECONDS = 15  # client-go's default, which the controller uses
WEEK = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def _spec(floor: int) -> dict[str, Any]:
    window = {"name": "always", "days": WEEK, "start": "00:00", "end": "24:00", "minReplicas": floor}
    return {
        "target": {"deployment": "vllm", "maxReplicas": 3},
        "metrics": NO_METRICS,
        "schedule": {"windows": [window]},
    }


def _holder(api: Any, namespace: str) -> str | None:
    lease = request_json(api, "GET", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/ebbtide-controller")
    holder: str | None = lease["spec"].get("holderIdentity")
    return holder


def _pair(k8s_cluster: K8sCluster, namespace: str) -> dict[str, Controller]:
    flags = ("--leader-elect", "--lease-namespace", namespace)
    return {
        name: Controller(k8s_cluster.kubeconfig, namespace, *flags, "--identity", name, tick=0.5) for name in ("a", "b")
    }


@pytest.mark.parametrize("how", ["killed", "terminated"])
def test_one_acts_and_the_other_takes_over(k8s_cluster: K8sCluster, namespace: str, how: str) -> None:
    api = k8s_cluster.api_client
    install_crds(api)
    create_deployment(api, namespace, replicas=0)
    create_pool(api, namespace, "chat", _spec(1))
    controllers = _pair(k8s_cluster, namespace)
    try:
        eventually(lambda: deployment_replicas(api, namespace) == 1, 30, "the leader's first scale")
        leader = eventually(lambda: _holder(api, namespace), 10, "a lease holder")
        follower = "b" if leader == "a" else "a"
        time.sleep(2)  # a few more ticks: the follower must stay silent
        assert controllers[leader].decisions("chat"), controllers[leader].tail()
        assert not controllers[follower].decisions("chat"), controllers[follower].tail()
        # /readyz tells them apart; both are alive.
        leading = httpx.get(controllers[leader].health_url() + "/readyz", timeout=5)
        assert leading.status_code == 200, leading.text
        # The follower names the holder once its own lease loop has read the Lease: within a retry
        # period (2 s, jittered) of its last attempt, which may have come just before the leader's.
        standing = eventually(
            lambda: (
                (r := httpx.get(controllers[follower].health_url() + "/readyz", timeout=5)).status_code == 503
                and f"holder: {leader}" in r.text
                and r
            ),
            10,
            "the follower's /readyz naming the holder",
        )
        assert standing.status_code == 503, standing.text
        assert httpx.get(controllers[follower].health_url() + "/healthz", timeout=5).status_code == 200
        metrics = httpx.get(controllers[leader].health_url() + "/metrics", timeout=5).text
        assert "ebbtide_controller_leader 1.0" in metrics and "ebbtide_controller_ticks_total" in metrics

        if how == "killed":
            controllers[leader].kill()  # no release: the follower waits out the lease
        else:
            assert controllers[leader].stop() == 0  # SIGTERM releases the Lease
        gone = time.monotonic()
        patch_pool(api, namespace, "chat", {"spec": _spec(2)})
        # Killed: the standby judges expiry from when it last saw the record change (up to one jittered 2 s
        # retry late), waits out the 15 s lease, acquires on its next jittered retry, then ticks.
        limit = LEASE_SECONDS + 8 if how == "killed" else 8
        eventually(
            lambda: deployment_replicas(api, namespace) == 2,
            limit,
            f"the follower acting\n{controllers[follower].tail()}",
        )
        took = time.monotonic() - gone
        assert _holder(api, namespace) == follower
        print(f"takeover after the leader was {how}: {took:.1f} s")
    finally:
        for controller in controllers.values():
            controller.stop()
