"""The chart on the real API server: every rendered object accepted by server-side dry-run apply (CRDs
first: the chart's own and prometheus-operator's, so the monitors are judged by their real schemas),
the examples too; then a real `helm install` whose ServiceAccounts' tokens can make the calls the
controller and the gateway need and nothing more, and a `helm uninstall` that leaves only the CRD.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.dynamic import DynamicClient

from controller.kube.client import MERGE_PATCH, ApiException, request_json
from e2e.accounts import service_account_token, token_client
from e2e.cluster import K8sCluster
from e2e.controller_harness import create_deployment
from e2e.helm import CHART, ROOT, HelmError, helm, render

pytestmark = pytest.mark.e2e

FIXTURES = ROOT / "e2e" / "fixtures" / "prometheus-operator"
EXAMPLES = ROOT / "manifests" / "examples"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))


def _crds() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in [*sorted((CHART / "crds").glob("*.yaml")), *sorted(FIXTURES.glob("*.yaml"))]:
        docs += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return docs


def _served(api: client.ApiClient, crd: dict[str, Any], timeout: float = 30.0) -> None:
    group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
    version = next(v["name"] for v in crd["spec"]["versions"] if v.get("served", True))
    deadline = time.monotonic() + timeout
    while True:
        try:
            request_json(api, "GET", f"/apis/{group}/{version}/{plural}", query={"limit": 1})
            return
        except ApiException as e:
            if e.status != 404 or time.monotonic() > deadline:
                raise
        time.sleep(0.1)


@pytest.fixture(scope="module")
def dynamic(k8s_cluster: K8sCluster) -> DynamicClient:
    """A dynamic client with the chart's CRD and prometheus-operator's installed (server-side apply)."""
    api = DynamicClient(k8s_cluster.api_client)
    for crd in _crds():
        resource = api.resources.get(api_version=crd["apiVersion"], kind=crd["kind"])
        api.server_side_apply(resource, body=crd, field_manager="ebbtide-e2e", force_conflicts=True)
    for crd in _crds():
        _served(k8s_cluster.api_client, crd)
    api.resources.invalidate_cache()
    return api


@pytest.fixture(scope="module")
def inference(k8s_cluster: K8sCluster) -> Iterator[str]:
    """The `inference` namespace the examples and the production values name."""
    core = client.CoreV1Api(k8s_cluster.api_client)
    try:
        core.create_namespace({"metadata": {"name": "inference"}})
    except ApiException as e:
        if e.status != 409:
            raise
    yield "inference"
    core.delete_namespace("inference")


def _dry_run_apply(api: DynamicClient, objects: list[dict[str, Any]]) -> list[str]:
    """Server-side apply each object with dryRun=All; the objects the API server refused, with why."""
    refused = []
    for body in objects:
        resource = api.resources.get(api_version=body["apiVersion"], kind=body["kind"])
        try:
            api.server_side_apply(
                resource,
                body=body,
                namespace=body["metadata"].get("namespace"),
                field_manager="ebbtide-e2e",
                dry_run="All",
            )
        except Exception as e:  # the dynamic client wraps ApiException in its own classes
            refused.append(f"{body['kind']}/{body['metadata']['name']}: {getattr(e, 'body', e)}")
    return refused


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: "defaults" if v is None else v.name)
def test_every_rendered_object_is_accepted_by_the_api_server(
    dynamic: DynamicClient, namespace: str, inference: str, values: Path | None
) -> None:
    objects = render(release=f"dry-{uuid.uuid4().hex[:6]}", namespace=namespace, values=[values] if values else [])
    assert len(objects) >= 6
    assert _dry_run_apply(dynamic, objects) == []


def test_a_bad_object_is_refused_so_the_dry_run_can_fail(dynamic: DynamicClient, namespace: str) -> None:
    deployment = next(o for o in render(namespace=namespace) if o["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["drop"] = "ALL"
    refused = _dry_run_apply(dynamic, [deployment])
    assert len(refused) == 1 and "capabilities.drop" in refused[0]


def test_the_examples_are_accepted_by_the_api_server(dynamic: DynamicClient, inference: str) -> None:
    objects = []
    for name in ("vllm.yaml", "gpupool.yaml"):
        objects += [d for d in yaml.safe_load_all((EXAMPLES / name).read_text(encoding="utf-8")) if d]
    assert [o["kind"] for o in objects] == ["PersistentVolumeClaim", "Deployment", "Service", "GPUPool"]
    assert _dry_run_apply(dynamic, objects) == []


# -- a real install ----------------------------------------------------------------------------------------


def _allowed(api: client.ApiClient, **attributes: str) -> bool:
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": attributes},
    }
    answer = request_json(api, "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body=review)
    return bool(answer["status"].get("allowed"))


def _status(api: client.ApiClient, method: str, path: str, **kwargs: Any) -> int:
    try:
        request_json(api, method, path, **kwargs)
    except ApiException as e:
        return int(e.status)
    return 200


def _release_objects(api: client.ApiClient, release: str, namespace: str) -> list[str]:
    selector = {"labelSelector": f"app.kubernetes.io/instance={release}"}
    found = []
    for path in (
        f"/apis/apps/v1/namespaces/{namespace}/deployments",
        f"/api/v1/namespaces/{namespace}/services",
        f"/api/v1/namespaces/{namespace}/serviceaccounts",
        f"/api/v1/namespaces/{namespace}/configmaps",
        f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    ):
        for item in request_json(api, "GET", path, query=selector)["items"]:
            found.append(f"{path.rsplit('/', 1)[1]}/{item['metadata']['name']}")
    return sorted(found)


def test_helm_install_grants_exactly_the_calls_needed_and_uninstall_leaves_the_crd(
    k8s_cluster: K8sCluster, dynamic: DynamicClient, namespace: str
) -> None:
    admin = k8s_cluster.api_client
    release = f"rbac-{uuid.uuid4().hex[:6]}"
    pools = f"{namespace[:50]}-pools"
    request_json(admin, "POST", "/api/v1/namespaces", body={"metadata": {"name": pools}})
    try:
        notes = helm(
            "install",
            release,
            str(CHART),
            "--namespace",
            namespace,
            "--set",
            f"gateway.secretNamespaces={{{pools}}}",
            kubeconfig=k8s_cluster.kubeconfig,
        )
        assert "kubectl get gpupools -A" in notes and "ebbtide validate" in notes
        assert f"http://{release}-ebbtide-gateway.{namespace}.svc:8080/v1" in notes
        installed = _release_objects(admin, release, namespace)
        assert f"deployments/{release}-ebbtide-controller" in installed
        assert f"clusterroles/{release}-ebbtide-gateway" in installed

        secret = {"metadata": {"name": "provider-key"}, "stringData": {"api-key": "sk-test"}}
        for ns in (pools, namespace):
            request_json(admin, "POST", f"/api/v1/namespaces/{ns}/secrets", body=secret)
        controller = token_client(
            k8s_cluster, service_account_token(k8s_cluster, namespace, f"{release}-ebbtide-controller", 600)
        )
        gateway = token_client(
            k8s_cluster, service_account_token(k8s_cluster, namespace, f"{release}-ebbtide-gateway", 600)
        )
        # Real calls with each ServiceAccount's own token.
        assert _status(controller, "GET", "/apis/ebbtide.dev/v1alpha1/gpupools") == 200
        assert _status(controller, "GET", "/apis/apps/v1/deployments") == 200
        assert _status(controller, "GET", f"/apis/autoscaling/v2/namespaces/{pools}/horizontalpodautoscalers") == 200
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "ebbtide-controller"},
            "spec": {"holderIdentity": "e2e"},
        }
        leases = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        assert _status(controller, "POST", leases, body=lease) == 200
        assert _status(controller, "GET", f"{leases}/ebbtide-controller") == 200
        assert _status(controller, "GET", f"{leases}/someone-else") == 403
        assert _status(controller, "GET", f"/api/v1/namespaces/{pools}/secrets/provider-key") == 403
        create_deployment(admin, pools, "vllm")
        scale = f"/apis/apps/v1/namespaces/{pools}/deployments/vllm/scale"
        body = {"spec": {"replicas": 1}}
        assert _status(controller, "PATCH", scale, body=body, content_type=MERGE_PATCH) == 200
        assert _status(controller, "DELETE", f"/apis/apps/v1/namespaces/{pools}/deployments/vllm") == 403
        assert _status(gateway, "PATCH", scale, body=body, content_type=MERGE_PATCH) == 403
        assert _status(gateway, "GET", "/api/v1/pods") == 200
        assert _status(gateway, "GET", f"/api/v1/namespaces/{pools}/secrets/provider-key") == 200
        assert _status(gateway, "GET", f"/api/v1/namespaces/{namespace}/secrets/provider-key") == 403
        assert _status(gateway, "GET", f"/api/v1/namespaces/{pools}/secrets") == 403  # get one, never list
        assert not _allowed(gateway, verb="patch", group="ebbtide.dev", resource="gpupools", namespace=pools)
        assert not _allowed(controller, verb="patch", group="ebbtide.dev", resource="gpupools", namespace=pools)
        assert _allowed(
            controller, verb="patch", group="ebbtide.dev", resource="gpupools", subresource="status", namespace=pools
        )

        helm("uninstall", release, "--namespace", namespace, "--wait", kubeconfig=k8s_cluster.kubeconfig)
        # Helm's convention: everything the release made goes, the CRD (from crds/) stays.
        assert _release_objects(admin, release, namespace) == []
        assert (
            _status(admin, "GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/gpupools.ebbtide.dev") == 200
        )
        assert _status(controller, "GET", "/apis/ebbtide.dev/v1alpha1/gpupools") in (401, 403)
    finally:
        request_json(admin, "DELETE", f"/api/v1/namespaces/{pools}")
        with contextlib.suppress(HelmError):  # already uninstalled above, unless the test failed first
            helm("uninstall", release, "--namespace", namespace, kubeconfig=k8s_cluster.kubeconfig)
