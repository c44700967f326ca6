"""The shared reconcile step, driven through small in-memory ports (no mocks: they hold real state)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from controller.loop import ControlLoop, Ports
from controller.ports import NoData, PoolRef, ReplicaStatus, StepReport, Usage
from policies.scaling import decide
from policies.spec import GPUPoolSpec
from policies.types import Decision, DemandSample, PolicyState, Reason

NOW = dt.datetime(2026, 12, 1, 22, 0, tzinfo=dt.UTC)
POOL = PoolRef("chat", "inference", "vllm", "inference")
SPEC = GPUPoolSpec.model_validate({"target": {"deployment": "vllm", "maxReplicas": 6}})
OLD = PolicyState(started_at=NOW - dt.timedelta(hours=1))


@dataclass
class ManualClock:
    moment: dt.datetime

    def now(self) -> dt.datetime:
        return self.moment


@dataclass
class MemoryCluster:
    current: int = 1
    broken: bool = False
    refuse_scale: bool = False
    scaled: list[int] = field(default_factory=list)

    def replicas(self, pool: PoolRef) -> ReplicaStatus:
        if self.broken:
            raise LookupError("deployment inference/vllm not found")
        return ReplicaStatus(self.current, self.current)

    def scale(self, pool: PoolRef, replicas: int) -> None:
        if self.refuse_scale:
            raise PermissionError("forbidden")
        self.current = replicas
        self.scaled.append(replicas)


@dataclass
class QueueMetrics:
    queue: float | None
    explode: bool = False

    def sample(self, pool: PoolRef, now: dt.datetime) -> DemandSample | NoData:
        if self.explode:
            raise RuntimeError("parser bug")
        if self.queue is None:
            return NoData("scrape of 10.0.0.1:8000 failed: connection refused")
        return DemandSample(observed_at=now, waiting=self.queue, running=0)


class ZeroLedger:
    def usage_today(self, pool: PoolRef, now: dt.datetime) -> Usage:
        return Usage(0.0, 0.0)


@dataclass
class ListRecorder:
    seen: list[tuple[Decision, bool, int | None]] = field(default_factory=list)
    steps: list[StepReport] = field(default_factory=list)

    def record(self, step: StepReport) -> None:
        self.steps.append(step)
        if step.decision is not None:
            self.seen.append((step.decision, step.applied, step.previous))


def make(queue: float | None, **cluster: bool) -> tuple[ControlLoop, MemoryCluster, ListRecorder, QueueMetrics]:
    c, r, m = MemoryCluster(**cluster), ListRecorder(), QueueMetrics(queue)
    return ControlLoop(Ports(ManualClock(NOW), c, m, ZeroLedger(), r), decide), c, r, m


def test_valid_decision_is_applied_and_recorded() -> None:
    loop, cluster, recorder, _ = make(queue=30)
    outcome = loop.reconcile(POOL, SPEC, OLD)
    assert outcome.applied and cluster.scaled == [4]
    assert recorder.seen[0][0].reason is Reason.QUEUE_HIGH and recorder.seen[0][1:] == (True, 1)


def test_no_data_is_recorded_but_changes_nothing() -> None:
    loop, cluster, recorder, _ = make(queue=None)
    cluster.current = 3
    outcome = loop.reconcile(POOL, SPEC, OLD)
    assert not outcome.applied and cluster.scaled == []
    decision = recorder.seen[0][0]
    assert decision.reason is Reason.NO_DATA_HOLD and "connection refused" in decision.message


def test_a_crashing_metrics_adapter_is_no_data_not_zero() -> None:
    loop, cluster, recorder, metrics = make(queue=0)
    metrics.explode = True
    cluster.current = 3
    loop.reconcile(POOL, SPEC, OLD)
    assert cluster.scaled == [] and recorder.seen[0][0].reason is Reason.NO_DATA_HOLD


def test_unreadable_cluster_skips_the_decision_but_is_reported() -> None:
    loop, _, recorder, _ = make(queue=5, broken=True)
    outcome = loop.reconcile(POOL, SPEC, OLD, generation=7)
    assert outcome.decision is None and "not found" in outcome.error and recorder.seen == []
    (step,) = recorder.steps
    assert step.decision is None and step.observation is None and "not found" in step.error
    assert step.generation == 7 and step.pool == POOL and not step.applied


class BrokenLedger:
    def usage_today(self, pool: PoolRef, now: dt.datetime) -> Usage:
        raise ConnectionError("status unreadable")


def test_a_failed_ledger_read_is_unknown_usage_and_the_caps_hold() -> None:
    capped = GPUPoolSpec.model_validate(
        {"target": {"deployment": "vllm", "maxReplicas": 6}, "budget": {"maxGpuHoursPerDay": 10}}
    )
    cluster, recorder = MemoryCluster(current=1), ListRecorder()
    loop = ControlLoop(Ports(ManualClock(NOW), cluster, QueueMetrics(30), BrokenLedger(), recorder), decide)
    outcome = loop.reconcile(POOL, capped, OLD)
    (step,) = recorder.steps
    assert step.observation is not None and step.observation.gpu_hours_today is None
    # 30 queued would want 4 replicas; with the cap unverifiable nothing grows, and nothing scales to zero.
    assert outcome.decision is not None and outcome.decision.desired_replicas == 1
    assert outcome.decision.reason is Reason.GPU_BUDGET_CAP and "unknown" in outcome.decision.message
    assert cluster.scaled == []


def test_without_caps_an_unknown_ledger_changes_nothing() -> None:
    cluster, recorder = MemoryCluster(current=1), ListRecorder()
    loop = ControlLoop(Ports(ManualClock(NOW), cluster, QueueMetrics(30), BrokenLedger(), recorder), decide)
    assert loop.reconcile(POOL, SPEC, OLD).applied and cluster.scaled == [4]


def test_failed_scale_is_reported_and_the_loop_survives() -> None:
    loop, _, recorder, _ = make(queue=30, refuse_scale=True)
    outcome = loop.reconcile(POOL, SPEC, OLD)
    assert not outcome.applied and "forbidden" in outcome.error
    assert recorder.seen[0][1] is False


def test_dry_run_decides_but_never_scales() -> None:
    loop, cluster, recorder, _ = make(queue=30)
    loop.dry_run = True
    outcome = loop.reconcile(POOL, SPEC, OLD)
    assert outcome.decision is not None and outcome.decision.desired_replicas == 4
    assert cluster.scaled == [] and not outcome.applied
    assert recorder.seen[0][1] is False  # the dry decision is still reported
