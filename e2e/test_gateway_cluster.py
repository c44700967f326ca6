"""Cluster mode on the real e2e cluster: the gateway reads its pool from the GPUPool and follows
the target Deployment's Ready pods as it scales up and down, with the provider key from a Secret
and the fallback closed when the pool's status says so."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from kubernetes import client

from controller.crd import crd_manifest
from e2e.cluster import GPU_RESOURCE, K8sCluster, cold_start
from gateway.cluster import ClusterFollower
from gateway.directory import PoolDirectory
from policies.spec import API_GROUP, API_VERSION, PLURAL

pytestmark = pytest.mark.e2e

_T = TypeVar("_T")
PORT = 8000
COLD_START_SECONDS = 2.0


def _wait_for(what: str, check: Callable[[], _T], timeout: float = 30.0, interval: float = 0.1) -> _T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last: {result!r})")
        time.sleep(interval)


def apply_crd(api: client.ApiClient) -> None:
    """Create (or replace) the GPUPool CRD from the code's own manifest and wait until it is served."""
    custom = client.CustomObjectsApi(api)
    group, version, plural = "apiextensions.k8s.io", "v1", "customresourcedefinitions"
    body = crd_manifest()
    name = body["metadata"]["name"]
    for served in body["spec"]["versions"]:
        # status.fallbackOpen is the controller's to write; until its status model carries the field,
        # add it here so the API server does not prune it (a no-op once it is there).
        status = served["schema"]["openAPIV3Schema"]["properties"]["status"].setdefault("properties", {})
        status.setdefault("fallbackOpen", {"type": "boolean"})
    try:
        custom.create_cluster_custom_object(group, version, plural, body)
    except client.ApiException as e:
        if e.status != 409:
            raise
        current = custom.get_cluster_custom_object(group, version, plural, name)
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        custom.replace_cluster_custom_object(group, version, plural, name, body)
    ext = client.ApiextensionsV1Api(api)
    _wait_for(
        "the GPUPool CRD to be established",
        lambda: any(
            c.type == "Established" and c.status == "True"
            for c in (ext.read_custom_resource_definition(name).status.conditions or [])
        ),
    )


def deployment(name: str, node: str, replicas: int) -> dict[str, Any]:
    """A one-GPU-per-replica Deployment pinned to ``node``, Ready COLD_START_SECONDS after start."""
    labels = {"app": name}
    container = {"name": "vllm", "image": "vllm/vllm-openai:latest", "resources": {"limits": {GPU_RESOURCE: "1"}}}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": {**labels, "tier": "gpu"}, "annotations": cold_start(COLD_START_SECONDS)},
                "spec": {"nodeSelector": {"kubernetes.io/hostname": node}, "containers": [container]},
            },
        },
    }


def gpupool(name: str, target: str, provider_url: str) -> dict[str, Any]:
    """A GPUPool for ``target`` with one fallback provider keyed by the Secret ``fallback-key``."""
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "GPUPool",
        "metadata": {"name": name},
        "spec": {
            "models": ["tide-model"],
            "target": {"deployment": target, "port": PORT, "minReplicas": 0, "maxReplicas": 4},
            "coldStartSeconds": 30,
            "fallback": {
                "providers": [
                    {
                        "name": "paid",
                        "baseUrl": provider_url,
                        "model": "paid-model",
                        "apiKeySecretRef": {"name": "fallback-key", "key": "api-key"},
                    }
                ]
            },
        },
    }


class LoopThread:
    """An asyncio loop in a daemon thread, for running the follower beside blocking test code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, _T], timeout: float = 30.0) -> _T:
        """Run ``coro`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        """Stop the loop and its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


def _view(directory: PoolDirectory, namespace: str, name: str) -> dict[str, Any] | None:
    state = directory.pools.get((namespace, name))
    if state is None:
        return None
    return {
        "synced": directory.synced,
        "endpoints": sorted(state.endpoints),
        "starting": len(state.starting_etas),
        "fallback_open": state.fallback_open,
        "keys": {p.name: p.api_key for p in state.providers},
        "models": sorted(directory.by_model),
    }


@pytest.fixture
def follower(k8s_cluster: K8sCluster, namespace: str) -> Iterator[Callable[[], dict[str, Any] | None]]:
    """A ClusterFollower of ``namespace`` on its own loop; yields a function returning the pool's view."""
    apply_crd(k8s_cluster.api_client)
    runner = LoopThread()

    async def start() -> tuple[PoolDirectory, asyncio.Task[None]]:
        directory = PoolDirectory()
        follow = ClusterFollower(directory, k8s_cluster.api_client, namespace, watch_seconds=5,
                                 secret_refresh_seconds=1.0)  # fmt: skip
        return directory, asyncio.create_task(follow.run())

    directory, task = runner.call(start())

    async def view() -> dict[str, Any] | None:
        if task.done():
            task.result()  # raises what stopped it
        return _view(directory, namespace, "chat")

    try:
        yield lambda: runner.call(view())
    finally:

        async def stop() -> None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        runner.call(stop())
        runner.close()


def _pod_ips(core: client.CoreV1Api, namespace: str, *, ready: bool) -> list[str]:
    out = []
    for pod in core.list_namespaced_pod(namespace, label_selector="app=vllm-chat").items:
        is_ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
        if pod.status.pod_ip and is_ready == ready and pod.metadata.deletion_timestamp is None:
            out.append(f"{pod.status.pod_ip}:{PORT}")
    return sorted(out)


def test_follower_tracks_pool_pods_secret_and_fallback_status(
    k8s_cluster: K8sCluster,
    namespace: str,
    gpu_node: Callable[..., client.V1Node],
    follower: Callable[[], dict[str, Any] | None],
) -> None:
    api = k8s_cluster.api_client
    core, apps, custom = client.CoreV1Api(api), client.AppsV1Api(api), client.CustomObjectsApi(api)
    node = gpu_node(f"gpu-{namespace}"[:63], gpus=4).metadata.name
    secret = {"metadata": {"name": "fallback-key"}, "data": {"api-key": base64.b64encode(b"sk-one").decode()}}
    core.create_namespaced_secret(namespace, secret)
    apps.create_namespaced_deployment(namespace, deployment("vllm-chat", node, replicas=1))
    # A second Deployment in the namespace whose pods must not be taken for the pool's.
    apps.create_namespaced_deployment(namespace, deployment("other", node, replicas=1))
    custom.create_namespaced_custom_object(
        API_GROUP, API_VERSION, namespace, PLURAL, gpupool("chat", "vllm-chat", "http://127.0.0.1:9/v1")
    )

    view = _wait_for("the pool with its one Ready pod", lambda: (v := follower()) and len(v["endpoints"]) == 1 and v)
    assert view["synced"] and view["models"] == ["tide-model"]
    assert view["keys"] == {"paid": "sk-one"}
    assert view["fallback_open"] is True
    assert view["endpoints"] == _pod_ips(core, namespace, ready=True)

    # Scale up: the new pods are "starting" until their cold start ends, then endpoints.
    apps.patch_namespaced_deployment_scale(namespace=namespace, name="vllm-chat", body={"spec": {"replicas": 3}})
    seen_starting = _wait_for("two starting pods", lambda: (v := follower()) is not None and v["starting"] == 2, 15)
    assert seen_starting
    view = _wait_for("three Ready endpoints", lambda: (v := follower()) and len(v["endpoints"]) == 3 and v)
    assert view["starting"] == 0
    assert view["endpoints"] == _pod_ips(core, namespace, ready=True)

    # The controller closes the fallback in the pool's status; the key is rotated in the Secret.
    custom.patch_namespaced_custom_object_status(
        API_GROUP, API_VERSION, namespace, PLURAL, "chat", {"status": {"fallbackOpen": False}}
    )
    _wait_for("the fallback closed", lambda: (v := follower()) is not None and v["fallback_open"] is False)
    core.patch_namespaced_secret("fallback-key", namespace, {"data": {"api-key": base64.b64encode(b"sk-two").decode()}})
    _wait_for("the rotated key", lambda: (v := follower()) is not None and v["keys"] == {"paid": "sk-two"}, 15)

    # Scale down to zero: no endpoint left.
    apps.patch_namespaced_deployment_scale(namespace=namespace, name="vllm-chat", body={"spec": {"replicas": 0}})
    view = _wait_for("no endpoint", lambda: (v := follower()) is not None and v["endpoints"] == [] and v)
    assert view["fallback_open"] is False

    custom.delete_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, "chat")
    _wait_for("the pool removed", lambda: follower() is None)
