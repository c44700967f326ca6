"""Fake GPU nodes and pod timing for the e2e cluster.

A node that carries the annotation ``kwok.x-k8s.io/node: fake`` is played by
kwok: it turns Ready, heartbeats, and walks the pods bound to it through
create → ready → delete following ``kwok-stages.yaml``. No container runs.
"""

from __future__ import annotations

import time
from typing import Any

from kubernetes import client

__all__ = [
    "COLD_START_ANNOTATION",
    "FAKE_NODE_ANNOTATION",
    "GPU_RESOURCE",
    "SHUTDOWN_ANNOTATION",
    "cold_start",
    "create_gpu_node",
    "gpu_node_manifest",
    "wait_node_ready",
]

FAKE_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
GPU_RESOURCE = "nvidia.com/gpu"
# Per-pod delay between the pod starting on its node and turning Ready: the
# model server's cold start (weights loaded, CUDA graphs captured). A Go duration.
COLD_START_ANNOTATION = "pod-ready.stage.kwok.x-k8s.io/delay"
# Per-pod delay between a pod being deleted and it disappearing (graceful drain).
SHUTDOWN_ANNOTATION = "pod-delete.stage.kwok.x-k8s.io/delay"


def cold_start(seconds: float) -> dict[str, str]:
    """Pod-template annotations that make kwok report the pod Ready ``seconds`` after it starts."""
    return {COLD_START_ANNOTATION: f"{int(seconds * 1000)}ms"}


def gpu_node_manifest(
    name: str,
    gpus: int,
    *,
    gpu_product: str = "NVIDIA-L4",
    cpu: str = "32",
    memory: str = "128Gi",
    pods: int = 110,
    labels: dict[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """A Node body with ``gpus`` × ``nvidia.com/gpu`` in capacity and allocatable, managed by kwok.

    Labels follow what NVIDIA's GPU feature discovery puts on real nodes, so
    selectors written for a real cluster work here too.
    """
    resources = {"cpu": cpu, "memory": memory, "pods": str(pods), GPU_RESOURCE: str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {FAKE_NODE_ANNOTATION[0]: FAKE_NODE_ANNOTATION[1]},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": gpu_product,
                "nvidia.com/gpu.count": str(gpus),
                **(labels or {}),
            },
        },
        "spec": {"taints": taints or []},
        # The API server keeps a Node's status on create; kwok's node-initialize
        # stage then copies capacity and allocatable and marks the node Ready.
        "status": {"capacity": dict(resources), "allocatable": dict(resources)},
    }


def wait_node_ready(api: client.ApiClient, name: str, timeout: float = 30.0) -> client.V1Node:
    """Wait until kwok has marked the node Ready; return it."""
    core = client.CoreV1Api(api)
    deadline = time.monotonic() + timeout
    while True:
        node = core.read_node(name)
        conditions = node.status.conditions or []
        if any(c.type == "Ready" and c.status == "True" for c in conditions):
            return node
        if time.monotonic() > deadline:
            raise TimeoutError(f"node {name} not Ready after {timeout:.0f}s (is kwok running?)")
        time.sleep(0.2)


def create_gpu_node(api: client.ApiClient, name: str, gpus: int, **kwargs: Any) -> client.V1Node:
    """Create a fake GPU node (see :func:`gpu_node_manifest` for options) and wait until it is Ready."""
    client.CoreV1Api(api).create_node(gpu_node_manifest(name, gpus, **kwargs))
    return wait_node_ready(api, name)
