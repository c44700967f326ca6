"""The real controller under its own ServiceAccount (manifests/rbac/, a TokenRequest token in a kubeconfig):
one pass with leader election scales the Deployment, writes the status and an Event, and meets no 403.
If the manifests missed a permission the daemon needs, this is where it shows."""

from __future__ import annotations

import contextlib
import copy
import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.kube.client import ApiException, request_json
from e2e.cluster import K8sCluster
from e2e.controller_harness import (
    NO_METRICS,
    create_deployment,
    create_pool,
    deployment_replicas,
    events_of,
    eventually,
    pool_status,
    run_once,
)
from e2e.manifests import RBAC_DIR, apply, install_crds, object_path, read_manifests

pytestmark = pytest.mark.e2e

SYSTEM = "ebbtide-system"


def _controller_manifests(system: str, suffix: str) -> list[dict[str, Any]]:
    """The controller's RBAC with ebbtide-system moved to `system` and cluster-wide names suffixed."""
    out = []
    for original in read_manifests(RBAC_DIR):
        if not original["metadata"]["name"].startswith("ebbtide-controller"):
            continue
        body = copy.deepcopy(original)
        if body["metadata"].get("namespace") == SYSTEM:
            body["metadata"]["namespace"] = system
        if body["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            body["metadata"]["name"] += suffix
        if body.get("roleRef", {}).get("kind") == "ClusterRole":
            body["roleRef"]["name"] += suffix
        for subject in body.get("subjects", []):
            if subject.get("namespace") == SYSTEM:
                subject["namespace"] = system
        out.append(body)
    return out


def _kubeconfig(k8s_cluster: K8sCluster, system: str, path: Path, account: str = "ebbtide-controller") -> Path:
    answer = request_json(
        k8s_cluster.api_client,
        "POST",
        f"/api/v1/namespaces/{system}/serviceaccounts/{account}/token",
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 900}},
    )
    admin = k8s_cluster.api_client.configuration
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {"server": admin.host, "certificate-authority": admin.ssl_ca_cert}}],
        "users": [{"name": "controller", "user": {"token": answer["status"]["token"]}}],
        "contexts": [{"name": "controller", "context": {"cluster": "e2e", "user": "controller"}}],
        "current-context": "controller",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_controller_works_with_exactly_its_rbac(k8s_cluster: K8sCluster, namespace: str, tmp_path: Path) -> None:
    api = k8s_cluster.api_client
    install_crds(api)
    suffix = f"-{uuid.uuid4().hex[:6]}"
    system = f"{namespace[:50]}-sys"
    request_json(api, "POST", "/api/v1/namespaces", body={"metadata": {"name": system}})
    manifests = _controller_manifests(system, suffix)
    apply(api, manifests)
    try:
        kubeconfig = _kubeconfig(k8s_cluster, system, tmp_path / "controller.kubeconfig")
        create_deployment(api, namespace, replicas=0)
        window = {
            "name": "always",
            "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
            "start": "00:00",
            "end": "24:00",
        }
        create_pool(
            api,
            namespace,
            "chat",
            {"target": {"deployment": "vllm"}, "metrics": NO_METRICS, "schedule": {"windows": [window]}},
        )
        args = ("--leader-elect", "--lease-namespace", system, "--identity", "rbac-test")
        code, lines = run_once(kubeconfig, namespace, *args)
        text = json.dumps(lines)
        assert code == 0, text
        # A whole-word 403 (a port such as 34403 is not one) or "Forbidden" anywhere means a missing verb.
        assert not re.search(r"\b403\b|orbidden", text), text
        assert not [line for line in lines if line.get("level") == "error"], text
        assert deployment_replicas(api, namespace) == 1
        eventually(lambda: pool_status(api, namespace, "chat").get("desiredReplicas") == 1, 10, "the status")
        eventually(lambda: [e for e in events_of(api, namespace, "chat") if e["reason"] == "ScaledUp"], 10, "an Event")
        lease = request_json(api, "GET", f"/apis/coordination.k8s.io/v1/namespaces/{system}/leases/ebbtide-controller")
        # Released on exit: nobody holds it, so a real controller takes over at once.
        assert not lease["spec"].get("holderIdentity"), lease["spec"]
    finally:
        for body in manifests:
            if body["kind"] in ("ClusterRole", "ClusterRoleBinding"):
                with contextlib.suppress(ApiException):
                    request_json(api, "DELETE", object_path(body))
        request_json(api, "DELETE", f"/api/v1/namespaces/{system}")


def test_without_permissions_once_fails_fast_naming_what_it_may_not_do(
    k8s_cluster: K8sCluster, namespace: str, tmp_path: Path
) -> None:
    """The namespace's `default` ServiceAccount may do nothing: --once exits 1 at once, saying so."""
    install_crds(k8s_cluster.api_client)
    kubeconfig = _kubeconfig(k8s_cluster, namespace, tmp_path / "nobody.kubeconfig", account="default")
    started = time.monotonic()
    code, lines = run_once(kubeconfig, namespace)
    took = time.monotonic() - started
    assert code == 1, lines
    errors = [line["message"] for line in lines if line.get("level") == "error"]
    # Every refused kind is named at once, not just whichever list was refused first.
    for kind in ("gpupools", "deployments", "pods", "horizontalpodautoscalers"):
        assert any("HTTP 403" in e and f"list {kind}:" in e and "manifests/rbac/" in e for e in errors), (kind, errors)
    assert took < 20, f"took {took:.0f} s to give up on a 403"
