"""What the API server itself says about GPUPools: bad fields refused with the field named, and the
printer columns `kubectl get gpupools` shows (read as the API's Table view, which is what kubectl prints)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes.client import ApiClient, ApiException

from controller.kube.client import request_json
from e2e.cluster import K8sCluster
from e2e.controller_harness import (
    NO_METRICS,
    create_deployment,
    create_pool,
    eventually,
    pool_status,
    refused,
    run_once,
)
from e2e.manifests import gpupool_table, install_crds

pytestmark = pytest.mark.e2e


def _post_strict(api: ApiClient, namespace: str, spec: dict[str, Any]) -> None:
    # kubectl (>= 1.27) sends fieldValidation=Strict: an unknown field is an error, not silently pruned.
    body = {"apiVersion": "ebbtide.dev/v1alpha1", "kind": "GPUPool", "metadata": {"name": "bad"}, "spec": spec}
    request_json(
        api,
        "POST",
        f"/apis/ebbtide.dev/v1alpha1/namespaces/{namespace}/gpupools",
        query={"fieldValidation": "Strict"},
        body=body,
    )


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ({"target": {"deployment": "vllm", "minReplicas": 3, "maxReplicas": 2}}, ["spec.target", "minReplicas"]),
        ({"target": {"deployment": "vllm"}, "coldStartSeconds": -5}, ["spec.coldStartSeconds"]),
        ({"target": {"deployment": "Not_A_Name"}}, ["spec.target.deployment"]),
        (
            {
                "target": {"deployment": "vllm"},
                "schedule": {"windows": [{"days": ["mon"], "start": "25:00", "end": "26:00"}]},
            },
            ["spec.schedule.windows[0].start"],
        ),
        ({"target": {"deployment": "vllm"}, "demand": {"targetQueuePerReplicas": 4}}, ["targetQueuePerReplicas"]),
        ({"target": {"deployment": "vllm"}, "billing": {"granularity": "fortnight"}}, ["spec.billing.granularity"]),
    ],
    ids=["min-above-max", "negative-cold-start", "bad-deployment-name", "bad-window-time", "unknown-field", "bad-enum"],
)
def test_a_bad_field_is_refused_with_the_field_named(
    k8s_cluster: K8sCluster, namespace: str, spec: dict[str, Any], named: list[str]
) -> None:
    api = k8s_cluster.api_client
    install_crds(api)
    error = refused(lambda: _post_strict(api, namespace, spec))
    assert error.status in (400, 422), error.body
    message = json.loads(error.body)["message"]
    for part in named:
        assert part in message, message


def test_kubectl_get_shows_desired_ready_window_reason_and_age(k8s_cluster: K8sCluster, namespace: str) -> None:
    api = k8s_cluster.api_client
    install_crds(api)
    create_deployment(api, namespace, replicas=0)
    always = {
        "name": "always",
        "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
        "start": "00:00",
        "end": "24:00",
    }
    spec = {
        "target": {"deployment": "vllm", "maxReplicas": 2},
        "metrics": NO_METRICS,
        "schedule": {"windows": [always]},
    }
    create_pool(api, namespace, "chat", spec)
    code, lines = run_once(k8s_cluster.kubeconfig, namespace, "--dry-run")
    assert code == 0, lines
    eventually(lambda: pool_status(api, namespace, "chat").get("desiredReplicas") == 1, 15, "the status write")

    table = gpupool_table(api, namespace)
    columns = [c["name"] for c in table["columnDefinitions"]]
    for wanted in ("Name", "Desired", "Ready", "Window", "Reason", "Age"):
        assert wanted in columns, columns
    (row,) = table["rows"]
    cells = dict(zip(columns, row["cells"], strict=True))
    assert cells["Name"] == "chat"
    assert cells["Desired"] == 1
    assert cells["Ready"] == 0
    assert cells["Window"] == "always"
    assert cells["Reason"] == "window-open"


def test_an_unknown_field_is_pruned_without_strict_validation(k8s_cluster: K8sCluster, namespace: str) -> None:
    """Without Strict (old clients) the server drops unknown fields; the daemon then sees a clean spec."""
    api = k8s_cluster.api_client
    install_crds(api)
    created = create_pool(api, namespace, "loose", {"target": {"deployment": "vllm"}, "mystery": 1})
    assert "mystery" not in created["spec"]
    try:
        request_json(api, "DELETE", f"/apis/ebbtide.dev/v1alpha1/namespaces/{namespace}/gpupools/loose")
    except ApiException as exc:  # pragma: no cover - namespace teardown removes it anyway
        assert exc.status == 404
