"""The live-pool table and its refusals, and the deletion costs a scale-down writes (pure parts)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from controller.daemon.cluster import deletion_costs
from controller.daemon.pooltable import PoolTable, refusal_of, scaling_owner, spec_problem
from controller.daemon.snapshots import DeploymentInfo, HpaInfo, deployment_info, hpa_info, is_paused
from controller.kube.pods import PodInfo
from policies.spec import Billing
from policies.types import PolicyState

UTC = dt.UTC
NOW = dt.datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def _decode(text: str | None, now: dt.datetime) -> tuple[PolicyState, str]:
    if text == "restored":
        return PolicyState(started_at=now - dt.timedelta(hours=1)), ""
    return PolicyState(), "no state persisted"


def _pool(
    name: str, deployment: str = "vllm", *, created: str = "2026-12-01T09:00:00Z", generation: int = 1, **extra: Any
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "llm",
        "uid": f"uid-{name}",
        "generation": generation,
        "creationTimestamp": created,
    }
    meta.update(extra.pop("meta", {}))
    return {
        "metadata": meta,
        "spec": {"target": {"deployment": deployment, "maxReplicas": 2}, **extra.pop("spec", {})},
        **extra,
    }


def _deployment(name: str = "vllm", namespace: str = "llm", replicas: int = 1) -> DeploymentInfo:
    return deployment_info(
        {
            "metadata": {"name": name, "namespace": namespace, "uid": "d1", "resourceVersion": "7"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}},
            "status": {"readyReplicas": replicas},
        }
    )


def test_new_pools_are_added_with_their_persisted_state_and_removed_when_gone() -> None:
    table = PoolTable(_decode)
    changed = table.sync(
        {("llm", "a"): _pool("a", status={"policyState": "restored"}), ("llm", "b"): _pool("b", "other")}, NOW
    )
    assert sorted(changed) == [("llm", "a"), ("llm", "b")]
    a = table.pools[("llm", "a")]
    assert a.state.started_at == NOW - dt.timedelta(hours=1) and a.state_note == ""
    assert table.pools[("llm", "b")].state == PolicyState() and table.pools[("llm", "b")].state_note
    assert a.ref.deployment == "vllm" and a.ref.deployment_namespace == "llm"
    table.sync({("llm", "a"): _pool("a")}, NOW)
    assert list(table.pools) == [("llm", "a")]


def test_a_status_echo_changes_nothing_and_a_spec_edit_keeps_the_state() -> None:
    table = PoolTable(_decode)
    table.sync({("llm", "a"): _pool("a")}, NOW)
    table.pools[("llm", "a")].state = PolicyState(started_at=NOW)
    assert table.sync({("llm", "a"): _pool("a", status={"desiredReplicas": 1})}, NOW) == []
    edited = _pool("a", generation=2, spec={"coldStartSeconds": 5})
    assert table.sync({("llm", "a"): edited}, NOW) == [("llm", "a")]
    pool = table.pools[("llm", "a")]
    assert pool.generation == 2 and pool.spec is not None and pool.spec.cold_start_seconds == 5
    assert pool.state == PolicyState(started_at=NOW)


def test_pause_annotation_counts_as_a_change() -> None:
    table = PoolTable(_decode)
    table.sync({("llm", "a"): _pool("a")}, NOW)
    paused = _pool("a", meta={"annotations": {"ebbtide.dev/paused": "true"}})
    assert table.sync({("llm", "a"): paused}, NOW) == [("llm", "a")]
    assert table.pools[("llm", "a")].paused
    assert is_paused({"metadata": {"annotations": {"ebbtide.dev/paused": " True "}}})
    assert not is_paused({"metadata": {"annotations": {"ebbtide.dev/paused": "yes"}}})


def test_an_invalid_spec_is_refused_with_its_field_path() -> None:
    spec, problem = spec_problem({"target": {"deployment": "vllm", "minReplicas": 3, "maxReplicas": 2}})
    assert (
        spec is None and problem.startswith("spec.target") and "minReplicas (3) must be <= maxReplicas (2)" in problem
    )
    table = PoolTable(_decode)
    table.sync({("llm", "bad"): _pool("bad", spec={"coldStartSeconds": -1})}, NOW)
    table.refresh_refusals({("llm", "vllm"): _deployment()})
    refusal = table.pools[("llm", "bad")].refusal
    assert refusal is not None and refusal.reason == "InvalidSpec" and "spec.coldStartSeconds" in refusal.message


def test_missing_deployment_and_second_pool_on_one_deployment_are_refused() -> None:
    table = PoolTable(_decode)
    table.sync(
        {
            ("llm", "first"): _pool("first", created="2026-12-01T08:00:00Z"),
            ("llm", "second"): _pool("second", created="2026-12-01T09:00:00Z"),
            ("llm", "lonely"): _pool("lonely", "gone"),
        },
        NOW,
    )
    table.refresh_refusals({("llm", "vllm"): _deployment()})
    assert table.pools[("llm", "first")].refusal is None
    second = table.pools[("llm", "second")].refusal
    assert second is not None and second.reason == "DeploymentClaimed" and "GPUPool llm/first" in second.message
    lonely = table.pools[("llm", "lonely")].refusal
    assert lonely is not None and lonely.reason == "DeploymentMissing" and "llm/gone" in lonely.message
    # The older pool keeps the Deployment even while it is missing: the claim is about the target.
    pools = list(table.pools.values())
    assert refusal_of(table.pools[("llm", "first")], pools, {}) is not None


def test_an_hpa_on_the_deployment_is_named_as_its_owner() -> None:
    deployment = _deployment()
    other = hpa_info(
        {
            "metadata": {"name": "x", "namespace": "llm"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}},
        }
    )
    mine = hpa_info(
        {
            "metadata": {"name": "cpu", "namespace": "llm"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "vllm"}},
        }
    )
    elsewhere = HpaInfo("cpu", "prod", "Deployment", "vllm")
    assert scaling_owner(deployment, [other, elsewhere]) is None
    assert scaling_owner(deployment, [other, mine]) == "HorizontalPodAutoscaler llm/cpu"


def _running(name: str, started: dt.datetime | None, *, ready: bool = True, deleting: bool = False) -> PodInfo:
    return PodInfo(
        name=name,
        namespace="llm",
        uid=name,
        labels={},
        ip="127.0.0.9",
        ready=ready,
        scheduled_at=started,
        created_at=started or NOW,
        deleting=deleting,
        node="gpu-a" if started else None,
        deletion_cost=None,
        phase="Running" if started else "Pending",
    )


def test_hourly_billing_removes_the_pod_whose_paid_hour_ends_first() -> None:
    hourly = Billing(granularity="hour")
    pods = [
        _running("young", NOW - dt.timedelta(minutes=5)),  # paid until 10:55
        _running("old", NOW - dt.timedelta(minutes=50)),  # paid until 10:10: goes first
        _running("middle", NOW - dt.timedelta(minutes=30)),  # paid until 10:30
    ]
    costs = deletion_costs(pods, NOW, hourly)
    assert sorted(costs, key=costs.__getitem__) == ["old", "middle", "young"]


def test_not_ready_and_pending_pods_go_before_any_serving_one_and_terminating_ones_are_left_out() -> None:
    pods = [
        _running("serving", NOW - dt.timedelta(minutes=50)),
        _running("warming", NOW - dt.timedelta(minutes=1), ready=False),
        _running("pending", None, ready=False),
        _running("leaving", NOW - dt.timedelta(minutes=20), deleting=True),
    ]
    costs = deletion_costs(pods, NOW, Billing(granularity="hour"))
    assert set(costs) == {"serving", "warming", "pending"}
    assert costs["serving"] == max(costs.values())


def test_per_second_billing_removes_the_newest_first() -> None:
    pods = [_running("old", NOW - dt.timedelta(minutes=50)), _running("new", NOW - dt.timedelta(minutes=10))]
    costs = deletion_costs(pods, NOW, Billing(granularity="second", minimum_billed_seconds=60))
    assert costs["new"] < costs["old"]
