"""Running the real `ebbtide controller` against the e2e cluster, and the objects its tests create.

The controller runs as a subprocess (`python -m controller.cli controller ...`), scoped to the test's
namespace so tests sharing the session's cluster never see each other's pools; its JSON log lines are
collected by a reader thread. Objects go to the API server as raw JSON, so the server (not the client's
models) judges them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from kubernetes.client import ApiClient, ApiException

from controller.kube.client import MERGE_PATCH, request_json
from e2e.cluster import GPU_RESOURCE
from e2e.cluster import cold_start as cold_start_annotations
from e2e.system_support import LocalProcess, parse_line

__all__ = [
    "NO_METRICS",
    "Controller",
    "create_deployment",
    "create_pool",
    "deployment_replicas",
    "events_of",
    "eventually",
    "pods_of",
    "pool_status",
    "run_once",
    "set_replicas",
]

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")

NO_METRICS: dict[str, Any] = {"source": "prometheus", "prometheus": {"url": "http://127.0.0.1:9"}}
"""A metrics section whose reads always fail on loopback (port 9 refuses): no data, and no traffic anywhere else."""


def _args(kubeconfig: Path, namespace: str, *flags: str) -> list[str]:
    """`ebbtide controller` arguments for a namespace of the test cluster."""
    return [
        "controller",
        "--kubeconfig",
        str(kubeconfig),
        "--namespace",
        namespace,
        "--metrics-addr",
        "127.0.0.1:0",
        *flags,
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(REPO)
    return env


def run_once(kubeconfig: Path, namespace: str, *flags: str, timeout: float = 90.0) -> tuple[int, list[dict[str, Any]]]:
    """`ebbtide controller --once` (no leader election unless flags say so): exit code and JSON log lines."""
    election = () if "--leader-elect" in flags else ("--no-leader-elect",)
    args = [sys.executable, "-m", "controller.cli", *_args(kubeconfig, namespace, "--once", *election, "--log-level",
                                                           "debug", *flags)]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=REPO, check=False)
    lines = [parse_line(line) for line in done.stdout.splitlines() if line.strip()]
    if done.stderr.strip():
        lines.append({"stderr": done.stderr})
    return done.returncode, lines


class Controller(LocalProcess):
    """A long-running controller process; `lines` holds its log lines as they come."""

    def __init__(self, kubeconfig: Path, namespace: str, *flags: str, tick: float = 1.0) -> None:
        args = _args(kubeconfig, namespace, "--tick", str(tick), "--log-level", "debug", *flags)
        if "--leader-elect" not in flags:
            args.append("--no-leader-elect")
        super().__init__(args, "controller")

    def decisions(self, pool: str) -> list[dict[str, Any]]:
        """The decision log lines of one pool so far."""
        return [line for line in list(self.lines) if line.get("pool") == pool and "reason" in line]

    def health_url(self, timeout: float = 15.0) -> str:
        """Base URL of the process's /metrics, /healthz and /readyz (from its start-up log line)."""

        def find() -> str | None:
            for line in list(self.lines):
                message = str(line.get("message", ""))
                if message.startswith("serving /metrics"):
                    return "http://" + message.rsplit(" ", 1)[-1]
            return None

        return eventually(find, timeout, "the health server's address")

    def kill(self) -> None:
        """SIGKILL: a crash, nothing released."""
        self._proc.kill()
        self._proc.wait(10)
        self._reader.join(5)

    def __enter__(self) -> Controller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def eventually(check: Callable[[], T | None], timeout: float, what: str, *, every: float = 0.2) -> T:
    """Poll `check` until it returns a truthy value; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def create_deployment(
    api: ApiClient,
    namespace: str,
    name: str = "vllm",
    *,
    replicas: int = 0,
    node: str | None = None,
    cold_start: float = 0.0,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A vLLM-like Deployment of GPU pods (1 GPU each) with a kwok cold start (seconds until Ready)."""
    template_annotations = cold_start_annotations(cold_start) if cold_start else {}
    pod_spec: dict[str, Any] = {
        "containers": [{"name": "vllm", "image": "vllm/vllm-openai", "resources": {"limits": {GPU_RESOURCE: "1"}}}],
        "terminationGracePeriodSeconds": 0,
    }
    if node is not None:
        pod_spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": template_annotations},
                "spec": pod_spec,
            },
        },
    }
    result: dict[str, Any] = request_json(api, "POST", f"/apis/apps/v1/namespaces/{namespace}/deployments", body=body)
    return result


def create_pool(
    api: ApiClient, namespace: str, name: str, spec: dict[str, Any], *, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    """Create a GPUPool (raises ApiException with the server's message when it is refused)."""
    body = {
        "apiVersion": "ebbtide.dev/v1alpha1",
        "kind": "GPUPool",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
        "spec": spec,
    }
    result: dict[str, Any] = request_json(
        api, "POST", f"/apis/ebbtide.dev/v1alpha1/namespaces/{namespace}/gpupools", body=body
    )
    return result


def patch_pool(api: ApiClient, namespace: str, name: str, patch: dict[str, Any]) -> None:
    """Merge-patch a GPUPool (metadata or spec)."""
    request_json(
        api,
        "PATCH",
        f"/apis/ebbtide.dev/v1alpha1/namespaces/{namespace}/gpupools/{name}",
        body=patch,
        content_type=MERGE_PATCH,
    )


def pool_status(api: ApiClient, namespace: str, name: str) -> dict[str, Any]:
    """The GPUPool's status ({} before the first write)."""
    obj = request_json(api, "GET", f"/apis/ebbtide.dev/v1alpha1/namespaces/{namespace}/gpupools/{name}")
    status: dict[str, Any] = obj.get("status") or {}
    return status


def condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """One condition of a status, by type."""
    for item in status.get("conditions") or ():
        if item.get("type") == kind:
            found: dict[str, Any] = item
            return found
    return None


def deployment_replicas(api: ApiClient, namespace: str, name: str = "vllm") -> int:
    """The Deployment's spec.replicas."""
    obj = request_json(api, "GET", f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
    return int(obj["spec"].get("replicas") or 0)


def deployment_generation(api: ApiClient, namespace: str, name: str = "vllm") -> tuple[int, list[str]]:
    """(metadata.generation, field managers): the same as long as nobody wrote the Deployment's spec, and
    `ebbtide` among the managers once Ebbtide has (the controller-manager's status writes change neither)."""
    obj = request_json(api, "GET", f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
    managers = sorted({m.get("manager", "") for m in obj["metadata"].get("managedFields") or ()})
    return int(obj["metadata"]["generation"]), managers


def set_replicas(api: ApiClient, namespace: str, replicas: int, name: str = "vllm") -> None:
    """Scale the Deployment by hand (as `kubectl scale` does), with another field manager."""
    request_json(
        api,
        "PATCH",
        f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale",
        query={"fieldManager": "kubectl"},
        body={"spec": {"replicas": replicas}},
        content_type=MERGE_PATCH,
    )


def pods_of(api: ApiClient, namespace: str, app: str = "vllm") -> list[dict[str, Any]]:
    """The Deployment's pods (terminating ones included), by name."""
    body = request_json(api, "GET", f"/api/v1/namespaces/{namespace}/pods", query={"labelSelector": f"app={app}"})
    return sorted(body.get("items") or [], key=lambda p: p["metadata"]["name"])


def ready_pods(api: ApiClient, namespace: str, app: str = "vllm") -> list[dict[str, Any]]:
    """Pods that are Ready and not terminating."""
    out = []
    for pod in pods_of(api, namespace, app):
        if pod["metadata"].get("deletionTimestamp"):
            continue
        conditions = (pod.get("status") or {}).get("conditions") or []
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            out.append(pod)
    return out


def events_of(api: ApiClient, namespace: str, name: str, kind: str = "GPUPool") -> list[dict[str, Any]]:
    """core/v1 Events about one object."""
    body = request_json(
        api,
        "GET",
        f"/api/v1/namespaces/{namespace}/events",
        query={"fieldSelector": f"involvedObject.kind={kind},involvedObject.name={name}"},
    )
    items: list[dict[str, Any]] = body.get("items") or []
    return items


def refused(call: Callable[[], object]) -> ApiException:
    """Run a call the API server must refuse; its ApiException."""
    try:
        call()
    except ApiException as exc:
        return exc
    raise AssertionError("the API server accepted what it should refuse")


def flags(*extra: str) -> Sequence[str]:
    """Flags as a tuple (readability in tests)."""
    return tuple(extra)
