"""manifests/rbac/ on the real API server, exercised with each ServiceAccount's own token.

The manifests are applied with their namespace moved to the test's namespace and the cluster-wide names
suffixed (the cluster is shared by the session). A TokenRequest gives a real bound ServiceAccount token; a
client built from it makes the calls the controller and the gateway make (allowed) and the writes they
must never make (403). A SelfSubjectAccessReview per rule, with the same token, checks every verb of
README.md's tables, including the ones a single call does not show (watch, update).
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from kubernetes import client

from controller.kube.client import MERGE_PATCH, ApiException, format_time, request_json
from e2e.cluster import K8sCluster
from e2e.manifests import RBAC_DIR, REPO, apply, install_crds, object_path, read_manifests

pytestmark = pytest.mark.e2e

MANIFEST_NAMESPACE = "ebbtide-system"
LEASE = "ebbtide-controller"


@dataclass(frozen=True)
class Setup:
    system: str
    """Where the ServiceAccounts, the Lease and its Role live (the manifests' ebbtide-system)."""
    workload: str
    """A namespace holding a pool, its Deployment, a pod and a Secret."""
    suffix: str
    controller: client.ApiClient
    gateway: client.ApiClient


def _localise(bodies: list[dict[str, Any]], namespace: str, suffix: str) -> list[dict[str, Any]]:
    """The manifests with ebbtide-system replaced by ``namespace`` and cluster-wide names suffixed."""
    out = []
    for original in bodies:
        body = copy.deepcopy(original)
        meta = body["metadata"]
        if meta.get("namespace") == MANIFEST_NAMESPACE:
            meta["namespace"] = namespace
        if body["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            meta["name"] += suffix
        if "roleRef" in body and body["roleRef"]["kind"] == "ClusterRole":
            body["roleRef"]["name"] += suffix
        for subject in body.get("subjects", []):
            if subject.get("namespace") == MANIFEST_NAMESPACE:
                subject["namespace"] = namespace
        out.append(body)
    return out


def _token_client(k8s_cluster: K8sCluster, namespace: str, account: str) -> client.ApiClient:
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 900}}
    answer = request_json(
        k8s_cluster.api_client,
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
        body=request,
    )
    admin = k8s_cluster.api_client.configuration
    configuration = client.Configuration()
    configuration.host = admin.host
    configuration.ssl_ca_cert = admin.ssl_ca_cert  # trust the cluster's CA, but present no client certificate
    configuration.api_key = {"BearerToken": answer["status"]["token"]}
    configuration.api_key_prefix = {"BearerToken": "Bearer"}
    return client.ApiClient(configuration)


@pytest.fixture
def setup(k8s_cluster: K8sCluster, namespace: str) -> Iterator[Setup]:
    admin = k8s_cluster.api_client
    install_crds(admin)
    suffix = f"-{namespace}"
    objects = _localise(read_manifests(RBAC_DIR), namespace, suffix)
    workload = f"{namespace[:50]}-w"
    request_json(admin, "POST", "/api/v1/namespaces", body={"metadata": {"name": workload}})
    try:
        apply(admin, objects)
        pool = yaml.safe_load((REPO / "examples" / "gpupool.yaml").read_text())
        pool["metadata"] = {"name": "chat", "namespace": workload}
        request_json(admin, "POST", f"/apis/ebbtide.dev/v1alpha1/namespaces/{workload}/gpupools", body=pool)
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "vllm-llama-8b"},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "vllm"}},
                "template": {
                    "metadata": {"labels": {"app": "vllm"}},
                    "spec": {"containers": [{"name": "vllm", "image": "vllm"}]},
                },
            },
        }
        request_json(admin, "POST", f"/apis/apps/v1/namespaces/{workload}/deployments", body=deployment)
        # A bare pod (no node: it stays Pending) is enough to annotate.
        pod = {
            "metadata": {"name": "vllm-0", "labels": {"app": "vllm"}},
            "spec": {"containers": [{"name": "vllm", "image": "vllm"}]},
        }
        request_json(admin, "POST", f"/api/v1/namespaces/{workload}/pods", body=pod)
        secret = {"metadata": {"name": "prom-token"}, "stringData": {"token": "s3cret"}}
        for ns in (workload, namespace):
            request_json(admin, "POST", f"/api/v1/namespaces/{ns}/secrets", body=secret)
        yield Setup(
            namespace,
            workload,
            suffix,
            _token_client(k8s_cluster, namespace, "ebbtide-controller"),
            _token_client(k8s_cluster, namespace, "ebbtide-gateway"),
        )
    finally:
        for body in objects:
            if body["kind"] in ("ClusterRole", "ClusterRoleBinding"):
                try:
                    request_json(admin, "DELETE", object_path(body))
                except ApiException as e:
                    if e.status != 404:
                        raise
        request_json(admin, "DELETE", f"/api/v1/namespaces/{workload}")


def _forbidden(api: client.ApiClient, method: str, path: str, account: str, **kwargs: Any) -> None:
    with pytest.raises(ApiException) as refused:
        request_json(api, method, path, **kwargs)
    assert refused.value.status == 403, f"{method} {path}: {refused.value.status} {refused.value.body}"
    assert "system:serviceaccount:" in str(refused.value.body) and account in str(refused.value.body)


def _allowed(
    api: client.ApiClient,
    *,
    verb: str,
    resource: str,
    group: str = "",
    namespace: str | None = None,
    subresource: str = "",
    name: str = "",
) -> bool:
    attributes: dict[str, str] = {"verb": verb, "resource": resource, "group": group}
    if namespace is not None:
        attributes["namespace"] = namespace
    if subresource:
        attributes["subresource"] = subresource
    if name:
        attributes["name"] = name
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": attributes},
    }
    answer = request_json(api, "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body=review)
    return bool(answer["status"].get("allowed"))


# (verb, group, resource, subresource) the controller needs anywhere (README.md's table).
CONTROLLER_ANYWHERE = [
    *((v, "ebbtide.dev", "gpupools", "") for v in ("get", "list", "watch")),
    *((v, "ebbtide.dev", "gpupools", "status") for v in ("update", "patch")),
    *((v, "apps", "deployments", "") for v in ("get", "list", "watch")),
    *((v, "apps", "deployments", "scale") for v in ("get", "patch")),
    *((v, "", "pods", "") for v in ("list", "watch", "patch")),
    *((v, "autoscaling", "horizontalpodautoscalers", "") for v in ("list", "watch")),
    *((v, "", "events", "") for v in ("create", "patch")),
]
CONTROLLER_NEVER = [
    ("update", "ebbtide.dev", "gpupools", ""),
    ("patch", "ebbtide.dev", "gpupools", ""),
    ("delete", "ebbtide.dev", "gpupools", ""),
    ("create", "apps", "deployments", ""),
    ("update", "apps", "deployments", ""),
    ("patch", "apps", "deployments", ""),
    ("delete", "apps", "deployments", ""),
    ("update", "apps", "deployments", "scale"),
    ("delete", "", "pods", ""),
    ("create", "", "pods", ""),
    ("update", "", "pods", ""),
    ("get", "", "secrets", ""),
    ("list", "", "secrets", ""),
    ("create", "autoscaling", "horizontalpodautoscalers", ""),
    ("delete", "", "events", ""),
    ("create", "coordination.k8s.io", "leases", ""),
]
GATEWAY_ANYWHERE = [
    (v, g, r, "")
    for v in ("get", "list", "watch")
    for g, r in (("ebbtide.dev", "gpupools"), ("apps", "deployments"), ("", "pods"))
]
GATEWAY_NEVER = [
    ("patch", "apps", "deployments", "scale"),
    ("patch", "ebbtide.dev", "gpupools", "status"),
    ("patch", "ebbtide.dev", "gpupools", ""),
    ("patch", "", "pods", ""),
    ("create", "", "events", ""),
    ("get", "", "secrets", ""),
    ("get", "coordination.k8s.io", "leases", ""),
]


def test_controller_rules_match_the_readme_exactly(setup: Setup) -> None:
    api = setup.controller
    for verb, group, resource, sub in CONTROLLER_ANYWHERE:
        for ns in (setup.workload, "some-other-namespace"):
            assert _allowed(api, verb=verb, group=group, resource=resource, subresource=sub, namespace=ns), (
                verb,
                group,
                resource,
                sub,
                ns,
            )
    for verb, group, resource, sub in CONTROLLER_NEVER:
        assert not _allowed(
            api, verb=verb, group=group, resource=resource, subresource=sub, namespace=setup.workload
        ), (verb, group, resource, sub)
    lease = {"group": "coordination.k8s.io", "resource": "leases"}
    assert _allowed(api, verb="create", namespace=setup.system, **lease)
    for verb in ("get", "update"):
        assert _allowed(api, verb=verb, namespace=setup.system, name=LEASE, **lease)
        assert not _allowed(api, verb=verb, namespace=setup.system, name="someone-elses-lease", **lease)
        assert not _allowed(api, verb=verb, namespace=setup.workload, name=LEASE, **lease)
    assert not _allowed(api, verb="delete", namespace=setup.system, name=LEASE, **lease)


def test_controller_calls_work_with_its_own_token(setup: Setup) -> None:
    api, ws = setup.controller, setup.workload
    pools = request_json(api, "GET", "/apis/ebbtide.dev/v1alpha1/gpupools")
    assert [p["metadata"]["name"] for p in pools["items"] if p["metadata"]["namespace"] == ws] == ["chat"]
    # A watch: a 403 would raise; the stream's content (events, if any) does not matter here.
    with contextlib.suppress(ValueError):
        request_json(
            api,
            "GET",
            "/apis/ebbtide.dev/v1alpha1/gpupools",
            query={"watch": True, "timeoutSeconds": 1, "resourceVersion": pools["metadata"]["resourceVersion"]},
        )
    request_json(
        api,
        "PATCH",
        f"/apis/ebbtide.dev/v1alpha1/namespaces/{ws}/gpupools/chat/status",
        body={"status": {"desiredReplicas": 1}},
        content_type=MERGE_PATCH,
    )
    request_json(api, "GET", "/apis/apps/v1/deployments")
    scale_path = f"/apis/apps/v1/namespaces/{ws}/deployments/vllm-llama-8b/scale"
    request_json(api, "GET", scale_path)
    scaled = request_json(
        api,
        "PATCH",
        scale_path,
        body={"spec": {"replicas": 1}},
        content_type=MERGE_PATCH,
        query={"fieldManager": "ebbtide"},
    )
    assert scaled["spec"]["replicas"] == 1
    request_json(api, "GET", "/api/v1/pods", query={"labelSelector": "app=vllm"})
    request_json(
        api,
        "PATCH",
        f"/api/v1/namespaces/{ws}/pods/vllm-0",
        content_type=MERGE_PATCH,
        body={"metadata": {"annotations": {"controller.kubernetes.io/pod-deletion-cost": "-100"}}},
    )
    request_json(api, "GET", "/apis/autoscaling/v2/horizontalpodautoscalers")
    event = request_json(
        api,
        "POST",
        f"/api/v1/namespaces/{ws}/events",
        body={
            "metadata": {"name": f"chat.{uuid.uuid4().hex}"},
            "involvedObject": {
                "apiVersion": "ebbtide.dev/v1alpha1",
                "kind": "GPUPool",
                "name": "chat",
                "namespace": ws,
            },
            "reason": "ScaledUp",
            "message": "rbac check",
            "type": "Normal",
            "count": 1,
            "firstTimestamp": "2026-12-01T09:00:00Z",
            "lastTimestamp": "2026-12-01T09:00:00Z",
        },
    )
    request_json(
        api,
        "PATCH",
        f"/api/v1/namespaces/{ws}/events/{event['metadata']['name']}",
        body={"count": 2},
        content_type=MERGE_PATCH,
    )
    leases = f"/apis/coordination.k8s.io/v1/namespaces/{setup.system}/leases"
    lease = request_json(api, "POST", leases, body={"metadata": {"name": LEASE}, "spec": {"holderIdentity": "a"}})
    lease["spec"]["holderIdentity"] = "b"
    request_json(api, "PUT", f"{leases}/{LEASE}", body=lease)
    assert request_json(api, "GET", f"{leases}/{LEASE}")["spec"]["holderIdentity"] == "b"


def test_controller_is_refused_what_it_must_never_do(setup: Setup) -> None:
    api, ws, who = setup.controller, setup.workload, "ebbtide-controller"
    _forbidden(api, "DELETE", f"/apis/apps/v1/namespaces/{ws}/deployments/vllm-llama-8b", who)
    _forbidden(
        api,
        "PATCH",
        f"/apis/apps/v1/namespaces/{ws}/deployments/vllm-llama-8b",
        who,
        body={"spec": {"replicas": 5}},
        content_type=MERGE_PATCH,
    )
    _forbidden(
        api,
        "PATCH",
        f"/apis/ebbtide.dev/v1alpha1/namespaces/{ws}/gpupools/chat",
        who,
        body={"spec": {"target": {"maxReplicas": 99}}},
        content_type=MERGE_PATCH,
    )
    _forbidden(api, "DELETE", f"/api/v1/namespaces/{ws}/pods/vllm-0", who)
    _forbidden(api, "GET", f"/api/v1/namespaces/{ws}/secrets/prom-token", who)
    _forbidden(api, "GET", "/api/v1/secrets", who)
    _forbidden(
        api,
        "POST",
        f"/apis/coordination.k8s.io/v1/namespaces/{ws}/leases",
        who,
        body={"metadata": {"name": LEASE}, "spec": {}},
    )


def test_secrets_are_readable_only_where_bound(k8s_cluster: K8sCluster, setup: Setup) -> None:
    ws, system = setup.workload, setup.system
    for account, api in (("ebbtide-controller", setup.controller), ("ebbtide-gateway", setup.gateway)):
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": f"{account}-secrets", "namespace": ws},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": f"{account}-secrets{setup.suffix}",
            },
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": system}],
        }
        _forbidden(api, "GET", f"/api/v1/namespaces/{ws}/secrets/prom-token", account)
        apply(k8s_cluster.api_client, [binding])
        secret = _eventually_readable(api, f"/api/v1/namespaces/{ws}/secrets/prom-token")
        assert secret["data"]["token"] == "czNjcmV0"  # base64 of s3cret
        # Bound in the pool's namespace only: another namespace's Secrets stay closed, and so does listing.
        _forbidden(api, "GET", f"/api/v1/namespaces/{system}/secrets/prom-token", account)
        _forbidden(api, "GET", f"/api/v1/namespaces/{ws}/secrets", account)


def _eventually_readable(api: client.ApiClient, path: str) -> dict[str, Any]:
    # RBAC changes reach the authorizer through an informer: allow it a moment.
    deadline = time.monotonic() + 10
    while True:
        try:
            found: dict[str, Any] = request_json(api, "GET", path)
            return found
        except ApiException as e:
            if e.status != 403 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_gateway_reads_and_may_write_nothing(setup: Setup) -> None:
    api, ws, who = setup.gateway, setup.workload, "ebbtide-gateway"
    for verb, group, resource, sub in GATEWAY_ANYWHERE:
        assert _allowed(api, verb=verb, group=group, resource=resource, subresource=sub, namespace=ws)
    for verb, group, resource, sub in GATEWAY_NEVER:
        assert not _allowed(api, verb=verb, group=group, resource=resource, subresource=sub, namespace=ws), (
            verb,
            group,
            resource,
            sub,
        )
    assert request_json(api, "GET", f"/apis/ebbtide.dev/v1alpha1/namespaces/{ws}/gpupools/chat")["metadata"]
    request_json(api, "GET", "/apis/ebbtide.dev/v1alpha1/gpupools")
    request_json(api, "GET", "/apis/apps/v1/deployments")
    request_json(api, "GET", f"/api/v1/namespaces/{ws}/pods/vllm-0")
    _forbidden(
        api,
        "PATCH",
        f"/apis/apps/v1/namespaces/{ws}/deployments/vllm-llama-8b/scale",
        who,
        body={"spec": {"replicas": 3}},
        content_type=MERGE_PATCH,
    )
    _forbidden(
        api,
        "PATCH",
        f"/apis/ebbtide.dev/v1alpha1/namespaces/{ws}/gpupools/chat/status",
        who,
        body={"status": {"fallbackOpen": False}},
        content_type=MERGE_PATCH,
    )
    _forbidden(
        api,
        "POST",
        f"/api/v1/namespaces/{ws}/events",
        who,
        body={
            "metadata": {"name": "x.1"},
            "involvedObject": {"kind": "GPUPool", "name": "chat", "namespace": ws},
            "reason": "X",
            "message": "x",
            "firstTimestamp": format_time_now(),
            "lastTimestamp": format_time_now(),
        },
    )


def format_time_now() -> str:
    return format_time(dt.datetime.now(dt.UTC))
