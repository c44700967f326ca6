"""Where the control-plane binaries built by ``e2e/cluster/ensure.sh`` live."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CONTROL_PLANE", "BinariesMissingError", "bin_dir", "find_binaries", "k8s_version"]

CLUSTER_DIR = Path(__file__).resolve().parent
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


class BinariesMissingError(RuntimeError):
    """A binary the e2e cluster needs has not been built."""


def k8s_version() -> str:
    """The Kubernetes version pinned in ``versions.env`` (the cache is keyed by it)."""
    for line in (CLUSTER_DIR / "versions.env").read_text().splitlines():
        if line.startswith("K8S_VERSION="):
            return line.split("=", 1)[1].strip()
    raise RuntimeError(f"no K8S_VERSION in {CLUSTER_DIR / 'versions.env'}")


def bin_dir() -> Path:
    """``$EBBTIDE_K8S_BIN_DIR``, else the per-version cache directory (computed as build.sh does)."""
    override = os.environ.get("EBBTIDE_K8S_BIN_DIR")
    if override:
        return Path(override)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "ebbtide" / f"k8s-{k8s_version()}"


def find_binaries(names: tuple[str, ...] = CONTROL_PLANE) -> dict[str, Path]:
    """Paths of ``names`` in :func:`bin_dir`; raises :class:`BinariesMissingError` naming the fix."""
    directory = bin_dir()
    found = {name: directory / name for name in names}
    missing = [name for name, path in found.items() if not os.access(path, os.X_OK)]
    if missing:
        raise BinariesMissingError(
            f"e2e cluster binaries missing from {directory}: {', '.join(missing)}. "
            "Build them with `bash e2e/cluster/ensure.sh` (a cold build takes a while, see "
            "e2e/cluster/README.md), or point EBBTIDE_K8S_BIN_DIR at a directory that has them."
        )
    return found
