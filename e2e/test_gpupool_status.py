"""The GPUPool status against the real API server: what `build_status` writes is accepted and kept as is
(nothing pruned, conditions valid), a later write removes what went, and the printer columns show it."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest
from kubernetes.client import ApiClient, ApiException

from controller.daemon.ledger import CarriedHours, CarriedUsd, ledger_to_status
from controller.daemon.status import build_status, status_changed, status_patch
from controller.kube.client import MERGE_PATCH, request_json
from controller.ports import PoolRef, StepReport, Usage
from e2e.cluster import K8sCluster
from e2e.manifests import gpupool_table, install_crds
from policies.scaling import decide
from policies.spec import API_GROUP, API_VERSION, PLURAL, GPUPoolSpec
from policies.types import DemandSample, Observation, PolicyState

pytestmark = pytest.mark.e2e

T0 = dt.datetime(2026, 12, 1, 10, 0, 0, 123_456, tzinfo=dt.UTC)
SPEC_BODY = {
    "target": {"deployment": "vllm", "maxReplicas": 4},
    "budget": {"maxGpuHoursPerDay": 10, "maxFallbackUsdPerDay": 5},
}
SPEC = GPUPoolSpec.model_validate(SPEC_BODY)


def _path(namespace: str, name: str, sub: str = "") -> str:
    return f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{namespace}/{PLURAL}/{name}{sub}"


def _status_of(api: ApiClient, namespace: str, name: str) -> dict[str, Any]:
    return dict(request_json(api, "GET", _path(namespace, name)).get("status") or {})


def _write(api: ApiClient, namespace: str, name: str, patch: dict[str, Any]) -> None:
    try:
        request_json(api, "PATCH", _path(namespace, name, "/status"), body={"status": patch}, content_type=MERGE_PATCH)
    except ApiException as e:
        raise AssertionError(f"the API server rejected the status: {e.body}") from e


def _stored(status: dict[str, Any]) -> dict[str, Any]:
    def prune(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: prune(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [prune(v) for v in value]
        return value

    return dict(prune(status))


def _step(now: dt.datetime, queue: float | None, current: int) -> tuple[StepReport, PolicyState]:
    pool = PoolRef("chat", "x", "vllm", "x")
    demand = DemandSample(now, waiting=0.0, running=queue) if queue is not None else None
    obs = Observation(current, current, demand, no_data_reason="" if demand else "pod vllm-0: connection refused")
    decision, state = decide(SPEC, obs, PolicyState(started_at=now - dt.timedelta(hours=1)), now)
    return StepReport(pool, now, 1, obs, decision, False, current), state


def test_the_status_is_accepted_kept_and_shown(k8s_cluster: K8sCluster, namespace: str) -> None:
    api = k8s_cluster.api_client
    install_crds(api)
    body = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "GPUPool",
        "metadata": {"name": "chat"},
        "spec": SPEC_BODY,
    }
    request_json(api, "POST", f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{namespace}/{PLURAL}", body=body)

    step, state = _step(T0, 8.0, 1)
    hours = CarriedHours(dt.date(2026, 12, 1), 3600.0, {"uid-a": T0, "uid-b": T0 - dt.timedelta(hours=2)})
    usd = CarriedUsd(dt.date(2026, 12, 1), 1.25, {"http://127.0.0.1:8080/metrics": 7.5, "": 0.5})
    first = build_status(
        step,
        previous=None,
        spec=SPEC,
        state=state,
        usage=Usage(2.5, 1.25),
        active_window="office",
        next_change=(T0 + dt.timedelta(hours=8), "window office closes"),
        ledger=ledger_to_status(hours, usd),
    )
    _write(api, namespace, "chat", first)
    stored = _status_of(api, namespace, "chat")
    assert stored == _stored(first), "the API server pruned or changed part of the status"

    # A later step: metrics lost, a pod gone, usage unknown, outside the window.
    later, state2 = _step(T0 + dt.timedelta(seconds=30), None, 1)
    second = build_status(
        later,
        previous=stored,
        spec=SPEC,
        state=state2,
        usage=Usage(None, 1.25),
        active_window=None,
        next_change=(T0 + dt.timedelta(hours=23), "prewarm for window office"),
        ledger=ledger_to_status(dataclasses.replace(hours, pods={"uid-a": T0}), usd),
    )
    assert status_changed(stored, second)
    _write(api, namespace, "chat", status_patch(stored, second))
    again = _status_of(api, namespace, "chat")
    assert again == _stored(second)
    assert [p["uid"] for p in again["ledger"]["pods"]] == ["uid-a"]
    assert "gpuHoursToday" not in again and "activeWindow" not in again
    conditions = {c["type"]: c for c in again["conditions"]}
    assert conditions["MetricsAvailable"]["status"] == "False"
    assert conditions["BudgetExceeded"]["status"] == "Unknown"
    assert conditions["Ready"]["lastTransitionTime"] == "2026-12-01T10:00:00Z"  # did not flip

    # The whole object as a merge patch (what a writer without a diff sends) gives the same result.
    _write(api, namespace, "chat", first)
    _write(api, namespace, "chat", second)
    assert _status_of(api, namespace, "chat") == _stored(second)

    table = gpupool_table(api, namespace)
    columns = [c["name"] for c in table["columnDefinitions"]]
    assert columns[:6] == ["Name", "Deployment", "Desired", "Ready", "Window", "Reason"]
    assert "Age" in columns
    [row] = table["rows"]
    cells = dict(zip(columns, row["cells"], strict=True))
    assert (cells["Name"], cells["Deployment"], cells["Desired"], cells["Ready"]) == ("chat", "vllm", 1, 1)
    assert cells["Reason"] == "no-data-hold"
    _write(api, namespace, "chat", first)
    [row] = gpupool_table(api, namespace)["rows"]
    assert dict(zip(columns, row["cells"], strict=True))["Window"] == "office"


def test_a_bad_condition_is_refused_by_the_schema(k8s_cluster: K8sCluster, namespace: str) -> None:
    api = k8s_cluster.api_client
    install_crds(api)
    body = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "GPUPool",
        "metadata": {"name": "bad"},
        "spec": SPEC_BODY,
    }
    request_json(api, "POST", f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{namespace}/{PLURAL}", body=body)
    bad = {
        "conditions": [
            {
                "type": "Ready",
                "status": "Maybe",
                "lastTransitionTime": "2026-12-01T10:00:00Z",
                "reason": "not camel case",
                "message": "",
            }
        ]
    }
    with pytest.raises(ApiException) as caught:
        request_json(api, "PATCH", _path(namespace, "bad", "/status"), body={"status": bad}, content_type=MERGE_PATCH)
    assert caught.value.status == 422
    assert "status.conditions[0].status" in str(caught.value.body)
    assert "status.conditions[0].reason" in str(caught.value.body)
