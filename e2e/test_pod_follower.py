"""Stand-in vLLM replicas at the e2e cluster's pod IPs: kwok hands out loopback addresses, the follower serves them.

The controller and the gateway discover pods through the API and call ``podIP:port``;
these tests show that on the real control plane those addresses are inside
127.0.0.0/8 and answer like vLLM, and that the replicas follow the Deployment's
Ready pods as it scales and as pods finish their cold start.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from e2e.cluster import GPU_RESOURCE, SHUTDOWN_ANNOTATION, K8sCluster, cold_start
from e2e.standin import LOOPBACK_NETWORK, MetricsFault, PodFollower, PodIPError, StandinConfig

pytestmark = pytest.mark.e2e

PORT = 8000  # vLLM's default port
MODEL = "standin-model"
COLD_START_SECONDS = 4.0
SHUTDOWN_SECONDS = 3.0


def _deployment(node: str, replicas: int, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    labels = {"app": "vllm"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "vllm"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": annotations or {}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "containers": [
                        {
                            "name": "vllm",
                            "image": "vllm/vllm-openai:latest",
                            "ports": [{"name": "http", "containerPort": PORT}],
                            "resources": {"limits": {GPU_RESOURCE: "1"}},
                        }
                    ],
                },
            },
        },
    }


def _pods(api: client.ApiClient, namespace: str) -> list[client.V1Pod]:
    return list(client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector="app=vllm").items)


def _ready(pod: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def _refused(url: str) -> bool:
    try:
        httpx.get(f"{url}/health", timeout=2)
    except httpx.ConnectError:
        return True
    return False


def _sample(url: str, name: str) -> float:
    """One sample's value from a replica's /metrics, parsed as Prometheus text (labels: this replica's only)."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    values = [s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]
    assert len(values) == 1, f"{name}: {values}"
    return float(values[0])


def _scale(api: client.ApiClient, namespace: str, replicas: int) -> None:
    client.AppsV1Api(api).patch_namespaced_deployment_scale("vllm", namespace, {"spec": {"replicas": replicas}})


def test_pods_get_loopback_ips_and_a_replica_answers_like_vllm_at_each(
    k8s_cluster: K8sCluster,
    namespace: str,
    gpu_node: Callable[..., client.V1Node],
    standin_pods: Callable[..., PodFollower],
) -> None:
    """2 replicas: 127.x pod IPs from the cluster's block; /metrics and /v1/completions answer at podIP:port."""
    node = gpu_node(f"gpu-{namespace}"[:63], gpus=4)
    internal = [a.address for a in node.status.addresses or [] if a.type == "InternalIP"]
    assert internal and all(ipaddress.ip_address(a) in LOOPBACK_NETWORK for a in internal), node.status.addresses
    client.AppsV1Api(k8s_cluster.api_client).create_namespaced_deployment(namespace, _deployment(node.metadata.name, 2))
    pods = standin_pods(deployment="vllm", port=PORT)
    assert pods.selector == "app=vllm"

    replicas = pods.wait_for(2)
    api_pods = {p.metadata.name: p for p in _pods(k8s_cluster.api_client, namespace)}
    block = ipaddress.ip_network(k8s_cluster.pod_cidr)
    assert block.subnet_of(LOOPBACK_NETWORK), block
    for replica in replicas:
        pod = api_pods[replica.pod]
        assert replica.ip == pod.status.pod_ip
        assert ipaddress.ip_address(pod.status.pod_ip) in block
        assert ipaddress.ip_address(pod.status.host_ip) in LOOPBACK_NETWORK
        assert replica.url == f"http://{pod.status.pod_ip}:{PORT}"
    assert len({r.ip for r in replicas}) == 2

    for i, replica in enumerate(replicas):
        assert _sample(replica.url, "vllm:num_requests_waiting") == 0
        with openai.OpenAI(base_url=f"{replica.url}/v1", api_key="unused", max_retries=0) as llm:
            completion = llm.completions.create(model=MODEL, prompt=f"hello pod {i}", max_tokens=3)
        assert completion.usage is not None and completion.usage.completion_tokens == 3
    # Each replica saw its own request, and only that one: traffic reached the pod it was sent to.
    for i, replica in enumerate(replicas):
        [seen] = replica.requests("/v1/completions")
        assert seen.status == 200 and seen.body["prompt"] == f"hello pod {i}", seen
        assert [r.status for r in replica.requests("/metrics")] == [200]

    # What the controller's tests need: staged queue gauges and a dead metrics endpoint.
    first, second = replicas
    first.report(waiting=7, running=4)
    assert _sample(first.url, "vllm:num_requests_waiting") == 7
    assert _sample(first.url, "vllm:num_requests_running") == 4
    first.fail_metrics(MetricsFault.ERROR)
    assert httpx.get(f"{first.url}/metrics").status_code == 500
    first.fail_metrics(MetricsFault.HANG)
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{first.url}/metrics", timeout=0.5)
    assert httpx.get(f"{second.url}/metrics").status_code == 200, "a fault on one replica reached another"
    assert httpx.post(f"{first.url}/v1/completions", json={"model": MODEL, "prompt": "x"}).status_code == 200
    first.fail_metrics(MetricsFault.NONE)
    assert httpx.get(f"{first.url}/metrics").status_code == 200
    first.kill()
    assert _refused(first.url) and not first.serving
    assert first.pod in pods.replicas(), "a killed replica's pod is still Ready, so it stays followed"
    assert _sample(second.url, "vllm:generation_tokens_total") == 3
    first.revive(fresh=True)  # a restarted vLLM: counters from zero, what the controller's reset handling sees
    assert _sample(first.url, "vllm:generation_tokens_total") == 0


def test_replicas_follow_the_deployment_as_it_scales_up_and_down(
    k8s_cluster: K8sCluster,
    namespace: str,
    gpu_node: Callable[..., client.V1Node],
    standin_pods: Callable[..., PodFollower],
) -> None:
    """2 → 3 adds a replica at the new pod's IP; 3 → 1 stops the two going (still Terminating) at once; 1 → 2 again."""
    node = gpu_node(f"gpu-{namespace}"[:63], gpus=4)
    api = k8s_cluster.api_client
    # Deleted pods linger Terminating, as while vLLM drains: their replicas must stop at the deletion.
    shutdown = {SHUTDOWN_ANNOTATION: f"{int(SHUTDOWN_SECONDS * 1000)}ms"}
    client.AppsV1Api(api).create_namespaced_deployment(namespace, _deployment(node.metadata.name, 2, shutdown))
    pods = standin_pods(selector="app=vllm", port=PORT, config=StandinConfig(max_num_seqs=2))
    before = {r.pod: r for r in pods.wait_for(2)}

    _scale(api, namespace, 3)
    after = {r.pod: r for r in pods.wait_for(3)}
    [new] = [r for name, r in after.items() if name not in before]
    assert new.ip not in {r.ip for r in before.values()}
    assert httpx.get(f"{new.url}/metrics").status_code == 200
    assert new.engine.config.max_num_seqs == 2

    _scale(api, namespace, 1)
    [survivor] = pods.wait_for(1)
    listed = _pods(api, namespace)
    assert [p.metadata.name for p in listed if p.metadata.deletion_timestamp is None] == [survivor.pod]
    terminating = [p for p in listed if p.metadata.deletion_timestamp is not None]
    assert len(terminating) == 2 and all(_ready(p) for p in terminating), "the test needs them still Terminating"
    for name, replica in after.items():
        if name != survivor.pod:
            assert _refused(replica.url), f"{name} was scaled away but {replica.url} still answers"
    assert httpx.get(f"{survivor.url}/health").status_code == 200
    stopped = {e.pod for e in pods.events if e.action == "stopped"}
    assert stopped == set(after) - {survivor.pod}

    # Once they are gone kwok hands their IPs to the next pods: the new replica must get the address.
    deadline = time.monotonic() + SHUTDOWN_SECONDS + 20
    while len(_pods(api, namespace)) > 1:
        assert time.monotonic() < deadline, "the terminating pods never went away"
        time.sleep(0.2)
    _scale(api, namespace, 2)
    [again] = [r for r in pods.wait_for(2) if r.pod != survivor.pod]
    assert httpx.get(f"{again.url}/health").status_code == 200
    assert [r.path for r in again.requests()] == ["/health"], "a new pod's replica starts with a clean record"
    assert not pods.problems


def test_a_pod_is_served_only_once_ready_after_its_cold_start(
    k8s_cluster: K8sCluster,
    namespace: str,
    gpu_node: Callable[..., client.V1Node],
    standin_pods: Callable[..., PodFollower],
) -> None:
    """A pod that has its IP but is still in its cold start gets no replica; it gets one once it is Ready."""
    node = gpu_node(f"gpu-{namespace}"[:63], gpus=1)
    api = k8s_cluster.api_client
    created = time.time()
    client.AppsV1Api(api).create_namespaced_deployment(
        namespace, _deployment(node.metadata.name, 1, cold_start(COLD_START_SECONDS))
    )
    pods = standin_pods(deployment="vllm", port=PORT)

    checked_cold = False
    deadline = time.monotonic() + COLD_START_SECONDS + 20
    while time.monotonic() < deadline:
        [pod] = _pods(api, namespace) or [None]
        if pod is None or not pod.status.pod_ip:
            time.sleep(0.1)
            continue
        if _ready(pod):
            break
        served = pods.sync()
        refused = _refused(f"http://{pod.status.pod_ip}:{PORT}")
        if not _ready(client.CoreV1Api(api).read_namespaced_pod(pod.metadata.name, namespace)):
            # Still in its cold start after both checks: nothing may have answered at its address.
            assert served == {}, "a replica was started before its pod was Ready"
            assert refused, f"{pod.status.pod_ip}:{PORT} answered before the pod was Ready"
            checked_cold = True
        time.sleep(0.2)
    assert checked_cold, "never saw the pod with an IP before it was Ready: the cold start did not hold it"

    [replica] = pods.wait_for(1, timeout=10)
    assert replica.ip == pod.status.pod_ip
    [started] = [e for e in pods.events if e.action == "started"]
    assert started.at - created >= COLD_START_SECONDS - 0.5, f"served {started.at - created:.1f}s after creation"
    assert httpx.get(f"{replica.url}/health").status_code == 200


def test_a_pod_ip_outside_loopback_is_refused_and_never_served(
    k8s_cluster: K8sCluster, namespace: str, standin_pods: Callable[..., PodFollower]
) -> None:
    """A Ready pod whose IP is not in 127.0.0.0/8 makes the follower raise, naming the pod; nothing listens.

    (And following a Deployment that does not exist fails at once, naming it.)
    """
    core = client.CoreV1Api(k8s_cluster.api_client)
    # Bound to a node no kwok plays, so only this test writes its status.
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "elsewhere", "labels": {"app": "elsewhere"}},
            "spec": {"nodeName": f"no-such-node-{namespace}"[:63], "containers": [{"name": "c", "image": "x"}]},
        },
    )
    now = "2026-01-01T00:00:00Z"
    core.patch_namespaced_pod_status(
        "elsewhere",
        namespace,
        {
            "status": {
                "phase": "Running",
                "podIP": "10.1.2.3",
                "podIPs": [{"ip": "10.1.2.3"}],
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
            }
        },
    )
    with pytest.raises(PodIPError, match=r"pod elsewhere has IP 10\.1\.2\.3, outside 127\.0\.0\.0/8"):
        standin_pods(selector="app=elsewhere", port=PORT)
    with pytest.raises(LookupError, match=rf"Deployment {namespace}/nope not found"):
        standin_pods(deployment="nope", port=PORT)


def test_api_server_accepts_loopback_pod_and_service_ips_but_refuses_them_in_endpoint_slices(
    k8s_cluster: K8sCluster, namespace: str
) -> None:
    """Why consumers discover pods, not endpoints: loopback is fine in pod status, refused in an EndpointSlice."""
    core = client.CoreV1Api(k8s_cluster.api_client)
    service = core.create_namespaced_service(
        namespace, {"metadata": {"name": "vllm"}, "spec": {"selector": {"app": "vllm"}, "ports": [{"port": PORT}]}}
    )
    assert ipaddress.ip_address(service.spec.cluster_ip) in LOOPBACK_NETWORK, service.spec.cluster_ip
    discovery = client.DiscoveryV1Api(k8s_cluster.api_client)
    with pytest.raises(client.ApiException) as info:
        discovery.create_namespaced_endpoint_slice(
            namespace,
            {
                "metadata": {"name": "vllm-manual"},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["127.100.0.7"]}],
                "ports": [{"port": PORT}],
            },
        )
    assert info.value.status == 422
    assert "may not be in the loopback range" in info.value.body


def test_an_address_in_use_is_reported_and_retried_until_free(
    k8s_cluster: K8sCluster,
    namespace: str,
    gpu_node: Callable[..., client.V1Node],
    standin_pods: Callable[..., PodFollower],
) -> None:
    """Someone else listening at podIP:port is a problem, not a crash; the replica starts once the address frees."""
    node = gpu_node(f"gpu-{namespace}"[:63], gpus=1)
    api = k8s_cluster.api_client
    client.AppsV1Api(api).create_namespaced_deployment(
        namespace, _deployment(node.metadata.name, 1, cold_start(COLD_START_SECONDS))
    )
    deadline = time.monotonic() + 20
    while not (listed := _pods(api, namespace)) or not listed[0].status.pod_ip:
        assert time.monotonic() < deadline, "the pod never got an IP"
        time.sleep(0.1)
    [pod] = listed
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind((pod.status.pod_ip, PORT))
    squatter.listen()
    try:
        pods = standin_pods(deployment="vllm", port=PORT)
        problem = f"cannot listen at {pod.status.pod_ip}:{PORT} for pod {pod.metadata.name}"
        deadline = time.monotonic() + COLD_START_SECONDS + 20
        while not any(problem in p for p in pods.problems.values()):
            assert time.monotonic() < deadline, f"no problem reported: {pods.problems}"
            time.sleep(0.1)
        assert pods.replicas() == {}
    finally:
        squatter.close()
    [replica] = pods.wait_for(1, timeout=5)
    assert httpx.get(f"{replica.url}/health").status_code == 200
    assert pods.problems == {}
