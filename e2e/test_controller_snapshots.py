"""The daemon's list+watch snapshots against the real API server: adds, updates, deletes, relist after
the watch's version expired, and a clean stop."""

from __future__ import annotations

import asyncio
import time

import pytest
from kubernetes.client import ApiClient

from controller.daemon.snapshots import Snapshots
from controller.kube.client import request_json
from e2e.cluster import K8sCluster
from e2e.controller_harness import create_deployment, create_pool, set_replicas
from e2e.manifests import install_crds

pytestmark = pytest.mark.e2e


async def _until(check: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("snapshot did not catch up in time")
        await asyncio.sleep(0.05)


def test_snapshots_follow_the_cluster(k8s_cluster: K8sCluster, namespace: str) -> None:
    api: ApiClient = k8s_cluster.api_client
    install_crds(api)
    create_deployment(api, namespace, replicas=0)

    async def main() -> None:
        changes: list[tuple[str, str, tuple[str, str]]] = []
        snapshots = Snapshots(api, namespace=namespace, on_change=lambda k, e, key: changes.append((k, e, key)))
        stop = asyncio.Event()
        task = asyncio.create_task(snapshots.run(stop))
        assert await snapshots.wait_synced(20), snapshots.errors()
        assert (namespace, "vllm") in snapshots.deployments.items
        assert snapshots.deployments.items[(namespace, "vllm")].replicas == 0

        await asyncio.to_thread(create_pool, api, namespace, "chat", {"target": {"deployment": "vllm"}})
        await _until(lambda: (namespace, "chat") in snapshots.pools.items)
        assert ("gpupools", "ADDED", (namespace, "chat")) in changes

        await asyncio.to_thread(set_replicas, api, namespace, 3)
        await _until(lambda: snapshots.deployments.items[(namespace, "vllm")].replicas == 3)
        # The pods exist (pending: no node in this test) and the selector finds them.
        await _until(lambda: len(snapshots.pods_of(snapshots.deployments.items[(namespace, "vllm")])) == 3)

        hpa = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "cpu", "namespace": namespace},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "vllm"},
                "minReplicas": 1,
                "maxReplicas": 2,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}},
                    }
                ],
            },
        }
        path = f"/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers"
        await asyncio.to_thread(request_json, api, "POST", path, body=hpa)
        await _until(lambda: (namespace, "cpu") in snapshots.hpas.items)
        assert snapshots.hpas.items[(namespace, "cpu")].target_name == "vllm"

        # Restart the watch from an old version: the server replays from it or answers 410 Gone (then the
        # watcher relists); either way the snapshot must stay right.
        snapshots.pods._resource_version = "1"
        snapshots.pods.shutdown()  # end the current watch so the next one starts from the stale version
        snapshots.pods._stopping = False
        await asyncio.to_thread(
            request_json, api, "DELETE", f"/apis/ebbtide.dev/v1alpha1/namespaces/{namespace}/gpupools/chat"
        )
        await _until(lambda: (namespace, "chat") not in snapshots.pools.items)
        await asyncio.to_thread(set_replicas, api, namespace, 1)
        await _until(lambda: len(snapshots.pods_of(snapshots.deployments.items[(namespace, "vllm")])) <= 3)

        started = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, 10)
        assert time.monotonic() - started < 5, "stopping waited for a watch to time out"

    asyncio.run(main())


def test_secret_cache_reads_only_the_named_key(k8s_cluster: K8sCluster, namespace: str) -> None:
    import base64

    from controller.daemon.secrets import SecretCache

    api: ApiClient = k8s_cluster.api_client
    token = base64.b64encode(b"s3cret-token\n").decode()
    body = {"metadata": {"name": "prom"}, "data": {"token": token}}
    request_json(api, "POST", f"/api/v1/namespaces/{namespace}/secrets", body=body)

    async def main() -> dict[str, str]:
        cache = SecretCache(api)
        refs = [(namespace, "prom", "token"), (namespace, "prom", "absent"), (namespace, "missing", "token")]
        cache.want(refs)
        await cache.refresh()
        return cache.values(refs)

    assert asyncio.run(main()) == {"prom/token": "s3cret-token"}
