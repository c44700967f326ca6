"""What the ``k8s_cluster`` fixture hands a test."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kubernetes import client

from e2e.cluster.binaries import find_binaries

__all__ = ["K8sCluster"]


@dataclass(frozen=True)
class K8sCluster:
    """What the ``k8s_cluster`` fixture gives a test."""

    kubeconfig: Path
    """Kubeconfig of a cluster-admin user; pass it to the controller or helm."""
    api_client: client.ApiClient
    """Client for ``kubernetes.client.*Api(api_client)``."""
    external: bool
    """True when running against ``EBBTIDE_E2E_KUBECONFIG`` rather than the local control plane."""
    log_dir: Path
    """Component logs (kwok's only, for an external cluster)."""
    bin_dir: Path
    """Where the built binaries are (helm among them when it was built)."""
    pod_cidr: str = "127.0.0.0/8"
    """The block kwok takes pod IPs from (inside 127.0.0.0/8; drawn per cluster)."""

    def binary(self, name: str) -> Path:
        """Path of a built binary such as ``helm``; fails the test with the fix if it is missing."""
        return find_binaries((name,))[name]
