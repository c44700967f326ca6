"""The daemon's pass over the pool table, on snapshots filled by hand and an in-memory Deployment: who may
be scaled, manual changes answered and not fought, refusals reported, status written only on change.

The e2e tests run the same against the real API server; these pin the rules down quickly."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from kubernetes.client import ApiClient

from controller.daemon.decisionlog import DecisionFilter
from controller.daemon.pooltable import PoolTable
from controller.daemon.reconciler import Reconciler
from controller.daemon.snapshots import HpaInfo, Snapshots, deployment_info
from controller.kube.events import ObjectRef
from controller.loop import Ports
from controller.ports import NoData, PoolRef, ReplicaStatus, StepReport, Usage
from policies.types import PolicyState

UTC = dt.UTC
T0 = dt.datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
WEEK = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class Clock:
    def __init__(self) -> None:
        self.at = T0

    def now(self) -> dt.datetime:
        return self.at


class Deployments:
    """The Cluster port over the snapshot's Deployment, scaling in memory (what the API would store)."""

    def __init__(self, snapshots: Snapshots) -> None:
        self.snapshots = snapshots
        self.patches: list[int] = []

    def replicas(self, pool: PoolRef) -> ReplicaStatus:
        deployment = self.snapshots.deployments.items.get((pool.deployment_namespace, pool.deployment))
        if deployment is None:
            raise LookupError("Deployment not found")
        return ReplicaStatus(deployment.replicas, deployment.replicas)

    def scale(self, pool: PoolRef, replicas: int) -> None:
        key = (pool.deployment_namespace, pool.deployment)
        self.patches.append(replicas)
        self.snapshots.deployments.items[key] = dataclasses.replace(
            self.snapshots.deployments.items[key], replicas=replicas
        )


class Silent:
    def sample(self, pool: PoolRef, now: dt.datetime) -> NoData:
        return NoData("no metrics in this test")


class Ledger:
    def usage_today(self, pool: PoolRef, now: dt.datetime) -> Usage:
        return Usage(0.0, 0.0)


class Steps:
    def __init__(self, table: PoolTable) -> None:
        self.steps: list[StepReport] = []
        self.table = table

    def record(self, step: StepReport) -> None:
        self.steps.append(step)
        live = self.table.pools.get((step.pool.namespace, step.pool.name))
        if live is not None:
            live.step = step


class Events:
    def __init__(self) -> None:
        self.emitted: list[tuple[str, str, str]] = []

    def emit(self, ref: ObjectRef, type_: str, reason: str, message: str, now: dt.datetime) -> None:
        self.emitted.append((type_, reason, message))


def _pool(name: str, deployment: str = "vllm", floor: int = 1, **meta: Any) -> dict[str, Any]:
    window = {"name": "always", "days": WEEK, "start": "00:00", "end": "24:00", "minReplicas": floor}
    return {
        "metadata": {
            "name": name,
            "namespace": "llm",
            "uid": name,
            "generation": 1,
            "creationTimestamp": "2026-12-01T09:00:00Z",
            **meta,
        },
        "spec": {
            "target": {"deployment": deployment, "maxReplicas": 3},
            "schedule": {"windows": [window]},
            "demand": {"scaleDownDelaySeconds": 60},
        },
    }


def _deployment(replicas: int, **annotations: str) -> Any:
    return deployment_info(
        {
            "metadata": {
                "name": "vllm",
                "namespace": "llm",
                "uid": "d",
                "resourceVersion": "1",
                "annotations": annotations,
            },
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "vllm"}}},
        }
    )


class World:
    def __init__(self, replicas: int = 0, **annotations: str) -> None:
        self.clock = Clock()
        self.snapshots = Snapshots(ApiClient())  # never connects: the test fills the snapshots itself
        self.snapshots.deployments.items[("llm", "vllm")] = _deployment(replicas, **annotations)
        self.table = PoolTable(lambda text, now: (PolicyState(), "fresh"))
        self.cluster = Deployments(self.snapshots)
        self.steps = Steps(self.table)
        self.events = Events()
        self.statuses: list[tuple[str, dict[str, Any]]] = []
        self.reconciler = Reconciler(
            ports=Ports(self.clock, self.cluster, Silent(), Ledger(), self.steps),
            snapshots=self.snapshots,
            table=self.table,
            events=self.events,  # type: ignore[arg-type]
            recorder=self.steps,
            build_status=self._status,
            submit_status=lambda ns, name, patch: self.statuses.append((name, dict(patch))),
            dry_run=False,
        )

    def _status(self, pool: Any, step: StepReport, now: dt.datetime, blocked: str | None, boundary: Any) -> Any:
        new = {"to": step.decision.desired_replicas if step.decision else None, "blocked": blocked, "error": step.error}
        return None if pool.status == new else (new, new)

    def add(self, raw: dict[str, Any]) -> None:
        self.snapshots.pools.items[("llm", raw["metadata"]["name"])] = raw

    def tick(self, seconds: float = 1.0) -> None:
        self.clock.at += dt.timedelta(seconds=seconds)
        self.reconciler.run_pass(self.clock.at)

    def replicas(self) -> int:
        return self.snapshots.deployments.items[("llm", "vllm")].replicas


def test_the_floor_is_applied_and_the_status_written_only_when_it_changes() -> None:
    world = World()
    world.add(_pool("chat"))
    world.tick()
    assert world.replicas() == 1 and world.cluster.patches == [1]
    world.tick()
    world.tick()
    assert world.cluster.patches == [1]
    assert [name for name, _ in world.statuses] == ["chat"]


def test_a_manual_change_gets_one_event_and_is_left_alone_for_the_delay() -> None:
    world = World()
    world.add(_pool("chat"))
    world.tick()
    world.snapshots.deployments.items[("llm", "vllm")] = _deployment(0)  # someone scaled to zero
    world.tick()
    assert world.replicas() == 0
    manual = [e for e in world.events.emitted if e[1] == "ManualScale"]
    assert len(manual) == 1 and "changed to 0" in manual[0][2] and "last set 1" in manual[0][2]
    assert world.statuses[-1][1]["blocked"].startswith("ManualChange:")
    world.tick(30)
    assert world.replicas() == 0 and len([e for e in world.events.emitted if e[1] == "ManualScale"]) == 1
    world.tick(31)  # past the 60 s scale-down delay
    assert world.replicas() == 1
    assert world.statuses[-1][1]["blocked"] is None


def test_a_paused_deployment_or_pool_decides_but_never_scales() -> None:
    world = World(**{"ebbtide.dev/paused": "true"})
    world.add(_pool("chat"))
    world.tick()
    assert world.cluster.patches == [] and world.steps.steps[-1].decision.desired_replicas == 1
    assert world.steps.steps[-1].dry_run is False and world.steps.steps[-1].applied is False
    assert world.statuses[-1][1]["blocked"].startswith("Paused:")
    # No event for the pause's own baseline: pausing is not a manual change.
    assert not [e for e in world.events.emitted if e[1] == "ManualScale"]

    paused_pool = World()
    paused_pool.add(_pool("chat", annotations={"ebbtide.dev/paused": "true"}))
    paused_pool.tick()
    assert paused_pool.cluster.patches == []


def test_an_hpa_owner_blocks_scaling_and_is_named() -> None:
    world = World()
    world.snapshots.hpas.items[("llm", "cpu")] = HpaInfo("cpu", "llm", "Deployment", "vllm")
    world.add(_pool("chat"))
    world.tick()
    assert world.cluster.patches == []
    assert (
        world.statuses[-1][1]["blocked"] == "ScaledByOther: HorizontalPodAutoscaler llm/cpu scales Deployment llm/vllm"
    )


def test_refused_pools_report_and_the_others_go_on() -> None:
    world = World()
    world.add(_pool("first"))
    second = _pool("second")
    second["metadata"]["creationTimestamp"] = "2026-12-01T09:30:00Z"
    world.add(second)
    world.add(_pool("orphan", deployment="gone"))
    world.add({**_pool("broken"), "spec": {"target": {"deployment": "x", "minReplicas": 2, "maxReplicas": 1}}})
    world.reconciler.run_pass(world.clock.now())
    errors = {s.pool.name: s.error for s in world.steps.steps}
    assert errors["first"] == "" and world.replicas() == 1
    assert errors["second"].startswith("DeploymentClaimed:") and "llm/first" in errors["second"]
    assert errors["orphan"].startswith("DeploymentMissing:")
    assert (
        errors["broken"].startswith("InvalidSpec:") and "minReplicas (2) must be <= maxReplicas (1)" in errors["broken"]
    )
    result = world.reconciler.run_pass(world.clock.now())
    assert sorted(f.split(":")[0] for f in result.failed) == ["llm/broken", "llm/orphan", "llm/second"]


def test_the_decision_filter_sees_one_line_per_change() -> None:
    world = World()
    world.add(_pool("chat"))
    for _ in range(5):
        world.tick()
    log = DecisionFilter()
    assert sum(log.changed(s) for s in world.steps.steps) == 2  # the scale, then the hold after it


def test_stale_caches_act_on_nothing_and_say_why() -> None:
    import time

    world = World()
    world.add(_pool("chat"))
    world.snapshots.pods.failing_since = time.monotonic() - 120
    world.snapshots.pods.last_error = "HTTP 503 Service Unavailable"
    world.tick()
    assert world.cluster.patches == []
    (step,) = world.steps.steps
    assert step.error.startswith("CacheStale: the pods cache is stale") and "503" in step.error
    world.snapshots.pods.failing_since = None
    world.tick()
    assert world.cluster.patches == [1]
