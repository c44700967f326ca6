"""Cluster mode on the real e2e cluster: the gateway reads its pool from the GPUPool and follows
the target Deployment's Ready pods as it scales up and down, with the provider key from a Secret
and the fallback closed when the pool's status says so."""

from __future__ import annotations

import asyncio
import base64
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
import pytest
from kubernetes import client

from controller.crd import crd_manifest
from e2e.cluster import GPU_RESOURCE, K8sCluster, cold_start
from e2e.standin import StandinConfig
from e2e.standin.follow import PodFollower
from e2e.standin.provider import BackgroundProvider, ProviderConfig
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
    body: Any = crd_manifest()
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
        current: Any = custom.get_cluster_custom_object(group, version, plural, name)
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        custom.replace_cluster_custom_object(group, version, plural, name, body)
    ext: Any = client.ApiextensionsV1Api(api)
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


def _apis(api: client.ApiClient) -> tuple[Any, Any, Any]:
    """Core, apps and custom-objects APIs, loosely typed: the tests send plain dicts, not the client's models."""
    return client.CoreV1Api(api), client.AppsV1Api(api), client.CustomObjectsApi(api)


def _view_when(follower: Callable[[], dict[str, Any] | None], check: Callable[[dict[str, Any]], bool], what: str,
               timeout: float = 30.0) -> dict[str, Any]:  # fmt: skip
    """Poll the follower's view of the pool until ``check`` holds; return that view."""
    found: list[dict[str, Any]] = []

    def probe() -> bool:
        view = follower()
        if view is not None and check(view):
            found.append(view)
            return True
        return False

    _wait_for(what, probe, timeout)
    return found[-1]


def _pod_ips(core: Any, namespace: str, *, ready: bool) -> list[str]:
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
    core, apps, custom = _apis(api)
    node = f"gpu-{namespace}"[:63]
    gpu_node(node, gpus=4)
    # The pool first, before its Deployment and its Secret exist: served, with no endpoint and no key.
    custom.create_namespaced_custom_object(
        API_GROUP, API_VERSION, namespace, PLURAL, gpupool("chat", "vllm-chat", "http://127.0.0.1:9/v1")
    )
    view = _view_when(follower, lambda v: v["synced"], "the pool")
    assert view["endpoints"] == [] and view["keys"] == {"paid": None}
    assert view["models"] == ["tide-model"]

    secret = {"metadata": {"name": "fallback-key"}, "data": {"api-key": base64.b64encode(b"sk-one").decode()}}
    core.create_namespaced_secret(namespace, secret)
    apps.create_namespaced_deployment(namespace, deployment("vllm-chat", node, replicas=1))
    # A second Deployment in the namespace whose pods must not be taken for the pool's.
    apps.create_namespaced_deployment(namespace, deployment("other", node, replicas=1))

    view = _view_when(follower, lambda v: len(v["endpoints"]) == 1, "the pool with its one Ready pod")
    view = _view_when(follower, lambda v: v["keys"] == {"paid": "sk-one"}, "the key from the new Secret")
    assert view["fallback_open"] is True
    assert view["endpoints"] == _pod_ips(core, namespace, ready=True)

    # Scale up: the new pods are "starting" until their cold start ends, then endpoints.
    apps.patch_namespaced_deployment_scale(namespace=namespace, name="vllm-chat", body={"spec": {"replicas": 3}})
    _view_when(follower, lambda v: v["starting"] == 2, "two starting pods", 15)
    view = _view_when(follower, lambda v: len(v["endpoints"]) == 3, "three Ready endpoints")
    assert view["starting"] == 0
    assert view["endpoints"] == _pod_ips(core, namespace, ready=True)

    # The controller closes the fallback in the pool's status; the key is rotated in the Secret.
    custom.patch_namespaced_custom_object_status(
        API_GROUP, API_VERSION, namespace, PLURAL, "chat", {"status": {"fallbackOpen": False}}
    )
    _view_when(follower, lambda v: v["fallback_open"] is False, "the fallback closed")
    core.patch_namespaced_secret("fallback-key", namespace, {"data": {"api-key": base64.b64encode(b"sk-two").decode()}})
    _view_when(follower, lambda v: v["keys"] == {"paid": "sk-two"}, "the rotated key", 15)

    # Scale down to zero: no endpoint left.
    apps.patch_namespaced_deployment_scale(namespace=namespace, name="vllm-chat", body={"spec": {"replicas": 0}})
    view = _view_when(follower, lambda v: v["endpoints"] == [], "no endpoint")
    assert view["fallback_open"] is False

    custom.delete_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, "chat")
    _wait_for("the pool removed", lambda: follower() is None)


# -- the gateway process in cluster mode, with stand-in replicas at the pods' loopback IPs --------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def gateway_process(kubeconfig: str, namespace: str) -> Iterator[str]:
    """``ebbtide gateway --kubeconfig ... --namespace ...`` on a free loopback port; yields its /v1 URL."""
    port = _free_port()
    ebbtide = Path(sys.executable).parent / "ebbtide"
    cmd = [str(ebbtide), "gateway", "--kubeconfig", kubeconfig, "--namespace", namespace,
           "--listen", f"127.0.0.1:{port}", "--max-hold-seconds", "1", "--log-level", "WARNING"]  # fmt: skip
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:

            def ready() -> bool:
                if proc.poll() is not None:
                    log.seek(0)
                    pytest.fail(f"the gateway exited with {proc.returncode}: {log.read().decode()[-2000:]}")
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            _wait_for("the gateway to be ready", ready, 30)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.seek(0)
            text = log.read().decode(errors="replace")
            assert "Traceback" not in text, text[-3000:]


def _ask(client: openai.OpenAI) -> str:
    """One chat completion; the route the gateway took (x-ebbtide-route)."""
    raw = client.chat.completions.with_raw_response.create(model="tide-model", messages=_MESSAGES, max_tokens=4)
    raw.parse()
    return str(raw.headers.get("x-ebbtide-route"))


_MESSAGES: Any = [{"role": "user", "content": "when is high tide"}]


def test_gateway_follows_the_deployment_as_it_scales(
    k8s_cluster: K8sCluster,
    namespace: str,
    gpu_node: Callable[..., client.V1Node],
    standin_pods: Callable[..., PodFollower],
) -> None:
    api = k8s_cluster.api_client
    core, apps, custom = _apis(api)
    apply_crd(api)
    node = f"gpu-{namespace}"[:63]
    gpu_node(node, gpus=3)
    key = "sk-from-the-secret"
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "fallback-key"}, "data": {"api-key": base64.b64encode(key.encode()).decode()}}
    )
    apps.create_namespaced_deployment(namespace, deployment("vllm-chat", node, replicas=1))

    def scale(replicas: int) -> None:
        apps.patch_namespaced_deployment_scale(
            namespace=namespace, name="vllm-chat", body={"spec": {"replicas": replicas}}
        )

    # Slow enough (about 0.2 s a request) that concurrent requests overlap and least-in-flight spreads them.
    config = StandinConfig(tokens_per_second=20, output_tokens=4)
    pods = standin_pods(deployment="vllm-chat", port=PORT, config=config)
    [first] = pods.wait_for(1)

    with BackgroundProvider(ProviderConfig(api_key=key)) as paid:
        pool = gpupool("chat", "vllm-chat", paid.base_url)
        pool["spec"]["target"]["servedModel"] = config.model_name
        pool["spec"]["objective"] = {"ttftSeconds": 2}
        custom.create_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, pool)
        with (
            gateway_process(str(k8s_cluster.kubeconfig), namespace) as base_url,
            openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=10) as gw,
        ):
            routes = [_ask(gw) for _ in range(3)]
            assert routes == ["gpu"] * 3
            assert len(first.requests("/v1/chat/completions")) == 3
            assert paid.requests == []

            # Scale up: the new pod's replica gets requests once it is Ready.
            apps.patch_namespaced_deployment_scale(
                namespace=namespace, name="vllm-chat", body={"spec": {"replicas": 2}}
            )
            replicas = pods.wait_for(2)

            def both_serve() -> bool:
                with ThreadPoolExecutor(6) as pool_:
                    assert set(pool_.map(lambda _: _ask(gw), range(6))) == {"gpu"}
                return all(r.requests("/v1/chat/completions") for r in replicas)

            _wait_for("requests on both replicas", both_serve, 30, interval=0.2)

            # Down to zero: no replica, a 30 s cold start against a 2 s objective: the fallback, at once,
            # with the key from the Secret and the provider's model name.
            apps.patch_namespaced_deployment_scale(
                namespace=namespace, name="vllm-chat", body={"spec": {"replicas": 0}}
            )
            pods.wait_for(0)
            _wait_for("requests routed to the fallback", lambda: _ask(gw) == "fallback", 30, interval=0.2)
            sent = paid.requests[-1]
            assert sent.headers["Authorization"] == f"Bearer {key}"
            assert sent.body["model"] == "paid-model"

            # The controller closes the fallback (daily cap): the gateway stops sending it requests.
            custom.patch_namespaced_custom_object_status(
                API_GROUP, API_VERSION, namespace, PLURAL, "chat", {"status": {"fallbackOpen": False}}
            )

            def refused() -> bool:
                try:
                    _ask(gw)
                except openai.APIStatusError as err:
                    return err.status_code >= 400
                return False

            _wait_for("requests refused with the fallback closed", refused, 30, interval=0.2)
            seen = len(paid.requests)
            assert refused()
            assert len(paid.requests) == seen

            # Back to one replica: the GPU again.
            apps.patch_namespaced_deployment_scale(
                namespace=namespace, name="vllm-chat", body={"spec": {"replicas": 1}}
            )
            [again] = pods.wait_for(1)
            _wait_for("requests back on the GPU", lambda: _ask(gw) == "gpu", 30, interval=0.2)
            assert again.requests("/v1/chat/completions")
