"""Pod views and selector matching (controller/kube/pods.py), on pod JSON as the API server serves it."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from controller.kube.pods import (
    DELETION_COST_ANNOTATION,
    PodInfo,
    parse_time,
    pod_info,
    ready_endpoints,
    selector_matches,
)

UTC = dt.UTC


def _pod(
    name: str = "vllm-abc",
    *,
    ready: bool | None = True,
    scheduled: str | None = "2026-12-01T10:00:00Z",
    node: str | None = "gpu-a",
    ip: str | None = "127.0.10.4",
    deleting: bool = False,
    annotations: dict[str, str] | None = None,
    start_time: str | None = None,
    phase: str = "Running",
) -> dict[str, Any]:
    conditions: list[dict[str, Any]] = []
    if scheduled is not None:
        conditions.append({"type": "PodScheduled", "status": "True", "lastTransitionTime": scheduled})
    if ready is not None:
        conditions.append({"type": "Ready", "status": "True" if ready else "False"})
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "llm",
        "uid": f"uid-{name}",
        "labels": {"app": "vllm", "tier": "gpu"},
        "creationTimestamp": "2026-12-01T09:59:58Z",
    }
    if annotations is not None:
        meta["annotations"] = annotations
    if deleting:
        meta["deletionTimestamp"] = "2026-12-01T11:00:00Z"
    status: dict[str, Any] = {"phase": phase, "conditions": conditions}
    if ip is not None:
        status["podIP"] = ip
    if start_time is not None:
        status["startTime"] = start_time
    spec: dict[str, Any] = {"containers": [{"name": "vllm"}]}
    if node is not None:
        spec["nodeName"] = node
    return {"metadata": meta, "spec": spec, "status": status}


def test_a_ready_scheduled_pod_reads_whole() -> None:
    info = pod_info(_pod(annotations={DELETION_COST_ANNOTATION: "-5"}))
    assert info == PodInfo(
        name="vllm-abc",
        namespace="llm",
        uid="uid-vllm-abc",
        labels={"app": "vllm", "tier": "gpu"},
        ip="127.0.10.4",
        ready=True,
        scheduled_at=dt.datetime(2026, 12, 1, 10, 0, tzinfo=UTC),
        created_at=dt.datetime(2026, 12, 1, 9, 59, 58, tzinfo=UTC),
        deleting=False,
        node="gpu-a",
        deletion_cost=-5,
        phase="Running",
    )


def test_a_terminating_pod_is_not_ready_even_if_its_condition_says_so() -> None:
    info = pod_info(_pod(deleting=True))
    assert info.deleting and not info.ready


def test_ready_false_and_missing_ready_condition_are_not_ready() -> None:
    assert not pod_info(_pod(ready=False)).ready
    assert not pod_info(_pod(ready=None)).ready


def test_a_pending_pod_has_no_billing_start() -> None:
    info = pod_info(_pod(scheduled=None, node=None, ip=None, ready=False, phase="Pending"))
    assert info.scheduled_at is None and info.node is None and info.ip is None and info.phase == "Pending"


def test_an_unscheduled_condition_is_no_billing_start() -> None:
    obj = _pod(scheduled=None, node=None, ready=False)
    obj["status"]["conditions"].append(
        {"type": "PodScheduled", "status": "False", "lastTransitionTime": "2026-12-01T10:00:00Z"}
    )
    assert pod_info(obj).scheduled_at is None


def test_bound_without_condition_time_falls_back_to_start_then_creation() -> None:
    started = pod_info(_pod(scheduled=None, start_time="2026-12-01T10:00:05Z"))
    assert started.scheduled_at == dt.datetime(2026, 12, 1, 10, 0, 5, tzinfo=UTC)
    created = pod_info(_pod(scheduled=None))
    assert created.scheduled_at == dt.datetime(2026, 12, 1, 9, 59, 58, tzinfo=UTC)


@pytest.mark.parametrize("text", ["cheap", "1.5", ""])
def test_a_deletion_cost_that_is_not_an_integer_reads_as_none(text: str) -> None:
    assert pod_info(_pod(annotations={DELETION_COST_ANNOTATION: text})).deletion_cost is None


def test_an_empty_object_reads_without_raising() -> None:
    info = pod_info({})
    assert info.name == "" and not info.ready and info.scheduled_at is None and info.labels == {}


def test_parse_time_forms() -> None:
    assert parse_time("2026-12-01T10:00:00Z") == dt.datetime(2026, 12, 1, 10, tzinfo=UTC)
    assert parse_time("2026-12-01T10:00:00.250000Z") == dt.datetime(2026, 12, 1, 10, 0, 0, 250000, tzinfo=UTC)
    assert parse_time("2026-12-01T11:00:00+01:00") == dt.datetime(2026, 12, 1, 10, tzinfo=UTC)
    # A naive time (never written by the API server) is taken as UTC rather than local.
    assert parse_time("2026-12-01T10:00:00") == dt.datetime(2026, 12, 1, 10, tzinfo=UTC)
    for bad in (None, "", "yesterday", 1733047200):
        assert parse_time(bad) is None


LABELS = {"app": "vllm", "tier": "gpu"}


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ({"matchLabels": {"app": "vllm"}}, True),
        ({"matchLabels": {"app": "vllm", "tier": "gpu"}}, True),
        ({"matchLabels": {"app": "other"}}, False),
        ({"matchLabels": {"missing": "x"}}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["gpu", "cpu"]}]}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["cpu"]}]}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["cpu"]}]}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["gpu"]}]}, False),
        ({"matchExpressions": [{"key": "absent", "operator": "NotIn", "values": ["x"]}]}, True),
        ({"matchExpressions": [{"key": "app", "operator": "Exists"}]}, True),
        ({"matchExpressions": [{"key": "absent", "operator": "Exists"}]}, False),
        ({"matchExpressions": [{"key": "absent", "operator": "DoesNotExist"}]}, True),
        ({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, False),
        ({"matchExpressions": [{"key": "app", "operator": "Gt", "values": ["1"]}]}, False),
        (
            {
                "matchLabels": {"app": "vllm"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["cpu"]}],
            },
            False,
        ),
    ],
)
def test_selector_matching(selector: dict[str, Any], matches: bool) -> None:
    assert selector_matches(selector, LABELS) is matches


@pytest.mark.parametrize("selector", [None, {}, {"matchLabels": {}}, {"matchLabels": {}, "matchExpressions": []}])
def test_an_empty_selector_matches_nothing(selector: dict[str, Any] | None) -> None:
    assert not selector_matches(selector, LABELS)


def test_ready_endpoints_are_ready_pods_with_ips_sorted_by_name() -> None:
    pods = [
        pod_info(_pod("vllm-c", ip="127.0.10.3")),
        pod_info(_pod("vllm-a", ip="127.0.10.1")),
        pod_info(_pod("vllm-b", ip="127.0.10.2", ready=False)),
        pod_info(_pod("vllm-d", ip=None)),
        pod_info(_pod("vllm-e", ip="127.0.10.5", deleting=True)),
    ]
    assert ready_endpoints(pods, 8000) == [("vllm-a", "127.0.10.1:8000"), ("vllm-c", "127.0.10.3:8000")]
    assert ready_endpoints([], 8000) == []
