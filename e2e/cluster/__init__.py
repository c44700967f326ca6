"""A real Kubernetes control plane for Ebbtide's e2e tests, built from source and run without Docker.

See e2e/cluster/README.md. Tests normally use the fixtures in e2e/conftest.py
(``k8s_cluster``, ``namespace``, ``gpu_node``); this package holds what they
are made of.
"""

from e2e.cluster.binaries import BinariesMissingError, bin_dir, find_binaries, k8s_version
from e2e.cluster.handle import K8sCluster
from e2e.cluster.local import ClusterStartError, LocalCluster
from e2e.cluster.nodes import (
    COLD_START_ANNOTATION,
    FAKE_NODE_ANNOTATION,
    GPU_RESOURCE,
    SHUTDOWN_ANNOTATION,
    cold_start,
    create_gpu_node,
    gpu_node_manifest,
)

__all__ = [
    "COLD_START_ANNOTATION",
    "FAKE_NODE_ANNOTATION",
    "GPU_RESOURCE",
    "SHUTDOWN_ANNOTATION",
    "BinariesMissingError",
    "ClusterStartError",
    "K8sCluster",
    "LocalCluster",
    "bin_dir",
    "cold_start",
    "create_gpu_node",
    "find_binaries",
    "gpu_node_manifest",
    "k8s_version",
]
