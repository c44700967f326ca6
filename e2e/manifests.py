"""Applying the repository's manifests (CRDs, RBAC) to the e2e cluster as raw JSON.

The API server, not the client's models, judges each object: bodies go out untouched through
``controller.kube.client.request_json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from kubernetes.client import ApiClient, ApiException

from controller.kube.client import request_json
from policies.spec import API_GROUP, API_VERSION, PLURAL

__all__ = ["CRD_DIR", "RBAC_DIR", "REPO", "apply", "gpupool_table", "install_crds", "object_path", "read_manifests"]

REPO = Path(__file__).resolve().parent.parent
CRD_DIR = REPO / "manifests" / "crds"
RBAC_DIR = REPO / "manifests" / "rbac"

_CORE = {"ServiceAccount": "serviceaccounts", "Secret": "secrets", "Namespace": "namespaces"}
_RBAC = {
    "ClusterRole": ("clusterroles", False),
    "ClusterRoleBinding": ("clusterrolebindings", False),
    "Role": ("roles", True),
    "RoleBinding": ("rolebindings", True),
}


def read_manifests(directory: Path) -> list[dict[str, Any]]:
    """Every object in the YAML files of ``directory``, in file-name order."""
    docs: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.y*ml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def object_path(body: dict[str, Any], *, collection: bool = False) -> str:
    """The API path of ``body`` (or of its collection) for the kinds the manifests hold."""
    kind = body["kind"]
    meta = body["metadata"]
    if kind == "CustomResourceDefinition":
        base = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    elif kind in _RBAC:
        plural, namespaced = _RBAC[kind]
        scope = f"/namespaces/{meta['namespace']}" if namespaced else ""
        base = f"/apis/rbac.authorization.k8s.io/v1{scope}/{plural}"
    elif kind in _CORE:
        scope = "" if kind == "Namespace" else f"/namespaces/{meta['namespace']}"
        base = f"/api/v1{scope}/{_CORE[kind]}"
    else:
        raise ValueError(f"no API path known for kind {kind}")
    return base if collection else f"{base}/{meta['name']}"


def apply(api: ApiClient, bodies: Iterable[dict[str, Any]]) -> None:
    """Create each object, or replace it when it exists."""
    for body in bodies:
        try:
            request_json(api, "POST", object_path(body, collection=True), body=body)
        except ApiException as e:
            if e.status != 409:
                raise AssertionError(
                    f"the API server rejected {body['kind']} {body['metadata']['name']}: {e.body}"
                ) from e
            current = request_json(api, "GET", object_path(body))
            meta = {**body["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}
            request_json(api, "PUT", object_path(body), body={**body, "metadata": meta})


def install_crds(api: ApiClient, timeout: float = 30.0) -> None:
    """Apply manifests/crds/ and wait until every CRD is Established and its resource is served."""
    crds = [d for d in read_manifests(CRD_DIR) if d.get("kind") == "CustomResourceDefinition"]
    apply(api, crds)
    deadline = time.monotonic() + timeout
    for crd in crds:
        group = crd["spec"]["group"]
        plural = crd["spec"]["names"]["plural"]
        version = next(v["name"] for v in crd["spec"]["versions"] if v.get("served", True))
        while True:
            current = request_json(api, "GET", object_path(crd))
            conditions = (current.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
                try:
                    request_json(api, "GET", f"/apis/{group}/{version}/{plural}", query={"limit": 1})
                    break
                except ApiException as e:
                    if e.status != 404:
                        raise
            if time.monotonic() > deadline:
                raise AssertionError(f"CRD {crd['metadata']['name']} not served after {timeout} s")
            time.sleep(0.1)


def gpupool_table(api: ApiClient, namespace: str) -> dict[str, Any]:
    """`kubectl get gpupools -o wide` as the API serves it: the Table view with the CRD's printer columns."""
    accept = "application/json;as=Table;v=v1;g=meta.k8s.io"
    method, url, headers, body, post = api.param_serialize(
        "GET",
        f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{namespace}/{PLURAL}",
        header_params={"Accept": accept},
        auth_settings=["BearerToken"],
    )
    response = api.call_api(method, url, headers, body, post, _request_timeout=10)
    data = response.read()
    assert response.status == 200, data
    return dict(json.loads(data))
