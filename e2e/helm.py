"""Running the `helm` the e2e cluster build makes, on the chart in charts/ebbtide (tests' helper)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster.binaries import BinariesMissingError, find_binaries

__all__ = ["CHART", "ROOT", "HelmError", "helm", "helm_binary", "render"]

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "ebbtide"
_ENSURE = ROOT / "e2e" / "cluster" / "ensure.sh"


class HelmError(RuntimeError):
    """helm exited non-zero; the message holds its stderr."""


def helm_binary() -> Path:
    """The built helm; builds it (or waits for a build in progress) with ensure.sh when it is missing."""
    try:
        return find_binaries(("helm",))["helm"]
    except BinariesMissingError:
        done = subprocess.run(["bash", str(_ENSURE), "helm"], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise HelmError(f"building helm with {_ENSURE} failed:\n{done.stderr[-4000:]}") from None
        return Path(done.stdout.strip().splitlines()[-1]) / "helm"


def helm(*args: str, kubeconfig: Path | None = None, timeout: float = 120.0) -> str:
    """Run helm with `args`; its stdout, or HelmError with its stderr."""
    command = [str(helm_binary()), *args]
    if kubeconfig is not None:
        command += ["--kubeconfig", str(kubeconfig)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise HelmError(f"helm {' '.join(args)}: exit {done.returncode}\n{done.stderr}")
    return done.stdout


def render(
    *,
    release: str = "ebbtide",
    namespace: str = "ebbtide-system",
    values: Sequence[Path] = (),
    sets: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """`helm template` of the chart as a list of objects (CRDs not included)."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    for path in values:
        args += ["--values", str(path)]
    for item in sets:
        args += ["--set", item]
    return [doc for doc in yaml.safe_load_all(helm(*args)) if doc]
