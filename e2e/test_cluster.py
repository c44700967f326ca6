"""Acceptance test of the e2e cluster: GPU scheduling, cold starts, scale subresource, CRD validation.

These run against a real kube-apiserver, controller-manager and scheduler; kwok
plays the kubelet of fake GPU nodes (see e2e/cluster/README.md).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from e2e.cluster import (
    COLD_START_ANNOTATION,
    GPU_RESOURCE,
    BinariesMissingError,
    K8sCluster,
    cold_start,
    find_binaries,
    k8s_version,
)
from e2e.cluster.binaries import CLUSTER_DIR

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
CRD_DIR = REPO / "manifests" / "crds"
GPUPOOL_EXAMPLE = REPO / "examples" / "gpupool.yaml"
COLD_START_SECONDS = 10.0


def _wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _is_ready(pod: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def _unschedulable_message(pod: client.V1Pod) -> str | None:
    for c in pod.status.conditions or []:
        if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable":
            return str(c.message)
    return None


def test_version_is_stamped(k8s_cluster: K8sCluster) -> None:
    """/version reports the real release (Helm's kubeVersion checks depend on it)."""
    info = client.VersionApi(k8s_cluster.api_client).get_code()
    assert info.git_version.startswith("v1.")
    assert "master" not in info.git_version
    if not k8s_cluster.external:
        assert info.git_version == k8s_version()


def test_gpu_pods_schedule_by_gpu_count_turn_ready_after_cold_start_and_scale_to_zero(
    k8s_cluster: K8sCluster, namespace: str, gpu_node: Callable[..., client.V1Node]
) -> None:
    """3 one-GPU replicas on a 2-GPU node: 2 Ready after the cold start, 1 Pending; scaling to 0 empties."""
    node = gpu_node(f"gpu-{namespace}"[:63], gpus=2)
    assert node.status.allocatable[GPU_RESOURCE] == "2"

    apps = client.AppsV1Api(k8s_cluster.api_client)
    core = client.CoreV1Api(k8s_cluster.api_client)
    labels = {"app": "vllm"}
    apps.create_namespaced_deployment(
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "vllm"},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels, "annotations": cold_start(COLD_START_SECONDS)},
                    "spec": {
                        # Pin to this test's node: on a shared (kind) cluster other
                        # nodes may also advertise GPUs.
                        "nodeSelector": {"kubernetes.io/hostname": node.metadata.name},
                        "containers": [
                            {
                                "name": "vllm",
                                "image": "vllm/vllm-openai:latest",
                                "resources": {"limits": {GPU_RESOURCE: "1"}},
                            }
                        ],
                    },
                },
            },
        },
    )
    created = time.monotonic()

    def pods() -> list[client.V1Pod]:
        return list(core.list_namespaced_pod(namespace, label_selector="app=vllm").items)

    def two_bound_one_unschedulable() -> list[client.V1Pod] | None:
        current = pods()
        bound = [p for p in current if p.spec.node_name == node.metadata.name]
        pending = [p for p in current if _unschedulable_message(p)]
        return current if len(bound) == 2 and len(pending) == 1 else None

    current = _wait_for("2 pods bound to the node and 1 unschedulable", two_bound_one_unschedulable, 20)
    if time.monotonic() - created < COLD_START_SECONDS - 1:
        assert not any(_is_ready(p) for p in current), "a pod turned Ready before its cold start ended"

    def two_ready() -> list[client.V1Pod] | None:
        current = pods()
        return current if sum(_is_ready(p) for p in current) == 2 else None

    current = _wait_for("2 pods Ready", two_ready, COLD_START_SECONDS + 20)
    elapsed = time.monotonic() - created
    assert elapsed >= COLD_START_SECONDS, f"pods Ready after {elapsed:.1f}s, before the {COLD_START_SECONDS}s delay"
    assert len(current) == 3
    [pending] = [p for p in current if not _is_ready(p)]
    assert pending.status.phase == "Pending"
    assert pending.spec.node_name is None
    message = _unschedulable_message(pending)
    assert message is not None and f"Insufficient {GPU_RESOURCE}" in message, message

    scale = apps.read_namespaced_deployment_scale("vllm", namespace)
    assert scale.spec.replicas == 3
    apps.patch_namespaced_deployment_scale("vllm", namespace, {"spec": {"replicas": 0}})
    _wait_for("all pods gone after scaling to 0", lambda: not pods(), 30)
    assert not apps.read_namespaced_deployment_scale("vllm", namespace).spec.replicas  # 0 is omitted


def test_leases_and_events_the_controller_writes_are_served(k8s_cluster: K8sCluster, namespace: str) -> None:
    """Leader election takes a coordination.k8s.io Lease; decisions are reported as events.k8s.io Events."""
    coordination = client.CoordinationV1Api(k8s_cluster.api_client)
    coordination.create_namespaced_lease(
        namespace,
        {"metadata": {"name": "ebbtide-leader"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}},
    )
    lease = coordination.read_namespaced_lease("ebbtide-leader", namespace)
    assert lease.spec.holder_identity == "a"

    events = client.EventsV1Api(k8s_cluster.api_client)
    events.create_namespaced_event(
        namespace,
        {
            "metadata": {"generateName": "vllm-"},  # 1.37 validates generateName itself: no "vllm."
            # The client re-serialises eventTime through datetime.isoformat(),
            # which drops the fraction when microseconds are 0, and the API
            # server's MicroTime then refuses it ("cannot parse ... as
            # .000000"): a writer of Events must send non-zero microseconds or
            # raw JSON.
            "eventTime": "2026-01-01T00:00:00.000001Z",
            "reportingController": "ebbtide.dev/controller",
            "reportingInstance": "ebbtide-0",
            "action": "Scale",
            "reason": "QueueHigh",
            "note": "3 -> 4 replicas: queue above target",
            "type": "Normal",
            "regarding": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "vllm", "namespace": namespace},
        },
    )
    [event] = events.list_namespaced_event(namespace).items
    assert event.reason == "QueueHigh"


# -- CRDs -------------------------------------------------------------------------------------------


def _crd_documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(CRD_DIR.glob("*.y*ml")):
        docs.extend(
            d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "CustomResourceDefinition"
        )
    return docs


def _apply_crd(api: client.ApiClient, body: dict[str, Any]) -> None:
    """Create or replace a CRD exactly as written: the server, not the client's models, judges it."""
    # CustomObjectsApi sends the body untouched; ApiextensionsV1Api would first
    # validate it against the client's own models.
    custom = client.CustomObjectsApi(api)
    group, version, plural = "apiextensions.k8s.io", "v1", "customresourcedefinitions"
    name = body["metadata"]["name"]
    try:
        custom.create_cluster_custom_object(group, version, plural, body)
    except client.ApiException as e:
        if e.status != 409:
            raise AssertionError(f"the API server rejected CRD {name}: {e.body}") from e
        current = custom.get_cluster_custom_object(group, version, plural, name)
        body = {**body, "metadata": {**body["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}}
        custom.replace_cluster_custom_object(group, version, plural, name, body)


def _established(ext: client.ApiextensionsV1Api, name: str) -> bool:
    crd = ext.read_custom_resource_definition(name)
    return any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or []))


def _min_max_rule(crd: dict[str, Any], version: str) -> str:
    """The message the API server gives when the CRD's ``minReplicas <= maxReplicas`` CEL rule fails."""
    [schema] = [v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"] if v["name"] == version]
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for rule in node.get("x-kubernetes-validations", []):
                if "minReplicas" in rule.get("rule", "") and "maxReplicas" in rule.get("rule", ""):
                    found.append(rule)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    assert found, "the GPUPool CRD has no CEL rule relating minReplicas and maxReplicas"
    rule = found[0]
    return str(rule.get("message") or f"failed rule: {rule['rule']}")


def _valid_gpupool(name: str) -> dict[str, Any]:
    if GPUPOOL_EXAMPLE.exists():
        for doc in yaml.safe_load_all(GPUPOOL_EXAMPLE.read_text()):
            if doc and doc.get("kind") == "GPUPool":
                body = copy.deepcopy(doc)
                body["metadata"] = {"name": name}
                return body
    return {
        "apiVersion": "ebbtide.dev/v1alpha1",
        "kind": "GPUPool",
        "metadata": {"name": name},
        "spec": {"target": {"deployment": "vllm", "minReplicas": 0, "maxReplicas": 2}},
    }


def test_crds_from_manifests_are_served_and_reject_invalid_objects(k8s_cluster: K8sCluster, namespace: str) -> None:
    """Every CRD in manifests/crds/ is established; GPUPool's schema and CEL rule reject bad bounds."""
    crds = _crd_documents()
    assert crds, f"no CustomResourceDefinition in {CRD_DIR}"
    ext = client.ApiextensionsV1Api(k8s_cluster.api_client)
    for crd in crds:
        _apply_crd(k8s_cluster.api_client, crd)
    for crd in crds:
        name = crd["metadata"]["name"]
        _wait_for(f"CRD {name} Established", lambda name=name: _established(ext, name), 30)

    [gpupool] = [c for c in crds if c["spec"]["group"] == "ebbtide.dev" and c["spec"]["names"]["kind"] == "GPUPool"]
    plural = gpupool["spec"]["names"]["plural"]
    [version] = [v["name"] for v in gpupool["spec"]["versions"] if v.get("storage")]
    custom = client.CustomObjectsApi(k8s_cluster.api_client)
    namespaced = gpupool["spec"]["scope"] == "Namespaced"

    def create(body: dict[str, Any]) -> Any:
        if namespaced:
            return custom.create_namespaced_custom_object("ebbtide.dev", version, namespace, plural, body)
        return custom.create_cluster_custom_object("ebbtide.dev", version, plural, body)

    # The CRD may take a moment to be served after it is Established.
    valid = _valid_gpupool(f"pool-{namespace}"[:63])
    _wait_for("GPUPool to be served", lambda: _try_create(create, valid), 30)

    negative = _valid_gpupool("negative-max")
    negative["spec"]["target"]["maxReplicas"] = -1
    negative["spec"]["target"]["minReplicas"] = 0
    message = _rejection(create, negative)
    assert "spec.target.maxReplicas" in message, message
    assert "greater than or equal to 0" in message, message

    inverted = _valid_gpupool("inverted-bounds")
    inverted["spec"]["target"]["minReplicas"] = 3
    inverted["spec"]["target"]["maxReplicas"] = 2
    message = _rejection(create, inverted)
    assert _min_max_rule(gpupool, version) in message, message

    # The mean's headroom sizes under a replica's capacity; the capacity's default is applied before the
    # rule runs, so leaving it out compares with 6000.
    for name, demand in (("mean-over-capacity", {"replicaTokensPerSecond": 2000}), ("mean-over-default", {})):
        over = _valid_gpupool(name)
        over["spec"]["demand"] = {**demand, "replicaMeanTokensPerSecond": 7000}
        message = _rejection(create, over)
        assert "replicaMeanTokensPerSecond must be <= replicaTokensPerSecond" in message, message

    # The replica's two speeds go together: one alone is no model of a replica.
    for name, demand in (("prefill-only", {"replicaPrefillTokensPerSecond": 10000}),
                         ("decode-only", {"replicaDecodeTokensPerSecond": 2500})):  # fmt: skip
        half = _valid_gpupool(name)
        half["spec"]["demand"] = demand
        message = _rejection(create, half)
        assert "replicaPrefillTokensPerSecond and replicaDecodeTokensPerSecond go together" in message, message


def _try_create(create: Callable[[dict[str, Any]], Any], body: dict[str, Any]) -> bool:
    try:
        create(body)
    except client.ApiException as e:
        if e.status == 404:  # not served yet
            return False
        raise AssertionError(f"a valid GPUPool was rejected: {e.body}") from e
    return True


def _rejection(create: Callable[[dict[str, Any]], Any], body: dict[str, Any]) -> str:
    with pytest.raises(client.ApiException) as info:
        create(body)
    assert info.value.status == 422, info.value.body
    # The Status message, decoded: the raw body escapes "<" as \u003c.
    return str(json.loads(info.value.body)["message"])


# -- harness checks that need no cluster ---------------------------------------------------------


def test_missing_binaries_fail_with_the_command_that_builds_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without binaries the fixtures must fail, naming the fix, rather than skip (a skip reads as a pass)."""
    monkeypatch.setenv("EBBTIDE_K8S_BIN_DIR", str(tmp_path))
    with pytest.raises(BinariesMissingError, match=r"kube-apiserver.*e2e/cluster/ensure\.sh"):
        find_binaries()


def test_kwok_stages_cover_the_whole_pod_lifecycle_without_random_delays() -> None:
    """Any pod Stage replaces all of kwok's defaults, so ours must include ready and delete."""
    stages = [d for d in yaml.safe_load_all((CLUSTER_DIR / "kwok-stages.yaml").read_text()) if d]
    names = {s["metadata"]["name"] for s in stages}
    assert {"node-initialize", "pod-create", "pod-ready", "pod-delete"} <= names
    for stage in stages:
        if stage["spec"]["resourceRef"]["kind"] == "Pod":
            delay = stage["spec"]["delay"]
            assert delay["durationMilliseconds"] == 0, stage["metadata"]["name"]
            assert "jitterDurationMilliseconds" not in delay, stage["metadata"]["name"]
    [ready] = [s for s in stages if s["metadata"]["name"] == "pod-ready"]
    assert COLD_START_ANNOTATION in ready["spec"]["delay"]["durationFrom"]["expressionFrom"]
