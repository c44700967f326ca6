"""The daemon's recorder driven by the real ControlLoop: log lines change-only at info and every step at
debug, one Event per scale action and per change of reason (Warnings for failures), every step handed on
for the status. The Event sink here is in memory but keeps real state (aggregated Events with counts)."""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest

from controller.daemon.recorder import KubeRecorder, event_reason
from controller.kube.events import ObjectRef
from controller.loop import ControlLoop, Ports
from controller.ports import NoData, PoolRef, ReplicaStatus, StepReport, Usage
from policies.scaling import decide
from policies.spec import GPUPoolSpec
from policies.types import DemandSample, PolicyState

T0 = dt.datetime(2026, 12, 1, 22, 0, tzinfo=dt.UTC)  # outside any window
POOL = PoolRef("chat", "inference", "vllm", "inference")
OTHER = PoolRef("code", "inference", "vllm-code", "inference")
SPEC = GPUPoolSpec.model_validate(
    {
        "target": {"deployment": "vllm", "maxReplicas": 6},
        "demand": {"targetQueuePerReplica": 4, "scaleDownDelaySeconds": 0, "idleGraceSeconds": 0},
    }
)
OLD = PolicyState(started_at=T0 - dt.timedelta(hours=1))


@dataclass
class Clock:
    moment: dt.datetime = T0

    def now(self) -> dt.datetime:
        return self.moment


@dataclass
class Deployment:
    """A Deployment that scales when told (or refuses, or is gone)."""

    replicas: int = 1
    gone: bool = False
    refuse: str = ""

    def replicas_of(self) -> ReplicaStatus:
        if self.gone:
            raise LookupError("deployment inference/vllm not found")
        return ReplicaStatus(self.replicas, self.replicas)


@dataclass
class Cluster:
    deployments: dict[PoolRef, Deployment] = field(default_factory=dict)

    def replicas(self, pool: PoolRef) -> ReplicaStatus:
        return self.deployments[pool].replicas_of()

    def scale(self, pool: PoolRef, replicas: int) -> None:
        deployment = self.deployments[pool]
        if deployment.refuse:
            raise RuntimeError(deployment.refuse)
        deployment.replicas = replicas


@dataclass
class Metrics:
    queue: dict[PoolRef, float | None] = field(default_factory=dict)

    def sample(self, pool: PoolRef, now: dt.datetime) -> DemandSample | NoData:
        queue = self.queue.get(pool)
        if queue is None:
            return NoData("pod vllm-0: connection refused")
        return DemandSample(now, waiting=0.0, running=queue)


class Ledger:
    def usage_today(self, pool: PoolRef, now: dt.datetime) -> Usage:
        return Usage(0.0, 0.0)


@dataclass
class Event:
    ref: ObjectRef
    type_: str
    reason: str
    message: str
    first: dt.datetime
    last: dt.datetime
    count: int = 1


@dataclass
class MemoryEventSink:
    """Aggregates repeats of (uid, type, reason, message) into one Event with a count, as the real sink does."""

    events: list[Event] = field(default_factory=list)
    broken: bool = False

    def emit(self, ref: ObjectRef, type_: Any, reason: str, message: str, now: dt.datetime) -> None:
        if self.broken:
            raise ConnectionError("API server unreachable")
        for event in self.events:
            if (event.ref.uid, event.type_, event.reason, event.message) == (ref.uid, type_, reason, message):
                event.count += 1
                event.last = now
                return
        self.events.append(Event(ref, type_, reason, message, now, now))

    def reasons(self) -> list[tuple[str, str]]:
        return [(e.type_, e.reason) for e in self.events]


class Lines(logging.Handler):
    """Keeps the log records' messages."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def at(self, level: int) -> list[dict[str, Any]]:
        return [r.msg for r in self.records if r.levelno == level and isinstance(r.msg, dict)]


@dataclass
class World:
    clock: Clock
    cluster: Cluster
    metrics: Metrics
    sink: MemoryEventSink
    lines: Lines
    steps: list[StepReport]
    recorder: KubeRecorder
    loop: ControlLoop
    state: dict[PoolRef, PolicyState]

    def tick(self, seconds: float = 5.0, pool: PoolRef = POOL) -> StepReport:
        self.clock.moment += dt.timedelta(seconds=seconds)
        outcome = self.loop.reconcile(pool, SPEC, self.state.get(pool, OLD), generation=2)
        self.state[pool] = outcome.state
        return self.steps[-1]


def world(*, dry_run: bool = False, level: int = logging.DEBUG, name: str = "test.decisions") -> World:
    clock = Clock()
    cluster = Cluster({POOL: Deployment(), OTHER: Deployment()})
    metrics = Metrics({POOL: 4.0, OTHER: 4.0})
    sink = MemoryEventSink()
    lines = Lines()
    logger = logging.getLogger(name)
    logger.handlers = [lines]
    logger.setLevel(level)
    logger.propagate = False
    steps: list[StepReport] = []

    def ref(pool: PoolRef) -> ObjectRef:
        return ObjectRef("ebbtide.dev/v1alpha1", "GPUPool", pool.name, pool.namespace, f"uid-{pool.name}")

    recorder = KubeRecorder(
        sink,
        lambda pool, step: steps.append(step),
        logger,
        object_ref=ref,
        window=lambda pool, now: "office" if now.hour < 18 else None,
    )
    loop = ControlLoop(Ports(clock, cluster, metrics, Ledger(), recorder), decide, dry_run=dry_run)
    return World(clock, cluster, metrics, sink, lines, steps, recorder, loop, {})


def test_log_lines_are_change_only_at_info_and_every_step_at_debug() -> None:
    w = world()
    for _ in range(5):
        w.tick()
    assert len(w.lines.at(logging.DEBUG)) == 4
    info = w.lines.at(logging.INFO)
    assert len(info) == 1
    line = info[0]
    assert {
        "time",
        "pool",
        "namespace",
        "deployment",
        "from",
        "to",
        "ready",
        "reason",
        "message",
        "applied",
        "dry_run",
        "queue",
        "window",
    } <= set(line)
    assert (line["pool"], line["namespace"], line["deployment"]) == ("chat", "inference", "inference/vllm")
    assert (line["from"], line["to"], line["ready"], line["queue"], line["window"]) == (1, 1, 1, 4.0, None)
    assert "error" not in line
    json.dumps(line, allow_nan=False)  # a JSON line, as the formatter writes it
    w.metrics.queue[POOL] = 20.0
    w.tick()
    info = w.lines.at(logging.INFO)
    assert len(info) == 2
    assert (info[-1]["from"], info[-1]["to"], info[-1]["applied"], info[-1]["reason"]) == (1, 5, True, "queue-high")


def test_debug_lines_are_not_built_when_debug_is_off() -> None:
    w = world(level=logging.INFO, name="test.decisions.info")
    for _ in range(5):
        w.tick()
    assert len(w.lines.records) == 1


def test_one_event_per_scale_action_and_per_change_of_reason() -> None:
    w = world()
    w.tick()
    assert w.sink.events == []  # the first step announces no plain reason (a restart would repeat them all)
    w.metrics.queue[POOL] = 20.0
    w.tick()
    assert w.sink.reasons() == [("Normal", "ScaledUp")]
    assert w.sink.events[0].message.startswith("1 → 5 replicas (queue-high): ")
    assert w.sink.events[0].ref.uid == "uid-chat"
    for _ in range(3):
        w.tick()  # holding 5, "steady": no Event of its own
    assert len(w.sink.events) == 1
    w.metrics.queue[POOL] = 0.0
    w.tick()
    assert w.sink.reasons()[-1] == ("Normal", "ScaledDown")
    assert "(idle-to-zero)" in w.sink.events[-1].message
    assert w.cluster.deployments[POOL].replicas == 0


def test_metrics_lost_is_a_warning_once_and_recovery_is_announced() -> None:
    w = world()
    w.tick()
    w.metrics.queue[POOL] = None
    for _ in range(4):
        w.tick()
    assert w.sink.reasons() == [("Warning", "NoDataHold")]
    assert "connection refused" in w.sink.events[0].message
    w.metrics.queue[POOL] = 4.0
    w.tick()
    assert w.sink.reasons()[-1][0] == "Normal"
    assert len(w.sink.events) == 2


def test_a_missing_deployment_is_a_warning_and_the_step_still_reaches_the_status() -> None:
    w = world()
    w.tick()
    w.cluster.deployments[POOL].gone = True
    for _ in range(3):
        step = w.tick()
    assert step.decision is None and step.error
    assert w.sink.reasons() == [("Warning", "ReadFailed")]
    assert "not found" in w.sink.events[0].message
    assert len(w.steps) == 4  # every step, failed ones too, went to the status callback
    error_line = w.lines.at(logging.INFO)[-1]
    assert error_line["reason"] == "read-error" and error_line["to"] is None and "not found" in error_line["error"]


def test_a_refusal_keeps_its_reason() -> None:
    w = world()
    refused = StepReport(POOL, T0, 2, None, None, False, None, error="TwoPoolsOneDeployment: also targeted by code")
    w.recorder.record(refused)
    w.recorder.record(refused)
    assert w.sink.reasons() == [("Warning", "TwoPoolsOneDeployment")]
    assert w.sink.events[0].message == "also targeted by code"


def test_a_failed_scale_is_a_warning_once_per_error() -> None:
    w = world()
    w.tick()
    w.cluster.deployments[POOL].refuse = "409: the object has been modified"
    w.metrics.queue[POOL] = 20.0
    for _ in range(3):
        step = w.tick()
    assert step.error and not step.applied
    assert w.sink.reasons() == [("Warning", "ScaleFailed")]
    assert "409" in w.sink.events[0].message
    assert w.lines.at(logging.INFO)[-1]["error"].startswith("scale to 5 failed")
    w.cluster.deployments[POOL].refuse = ""
    w.tick()
    assert w.sink.reasons()[-1] == ("Normal", "ScaledUp")


def test_dry_run_announces_what_it_would_do_once() -> None:
    w = world(dry_run=True)
    w.tick()
    w.metrics.queue[POOL] = 20.0
    for _ in range(3):
        w.tick()
    assert w.sink.reasons() == [("Normal", "WouldScaleUp")]
    assert w.sink.events[0].message.endswith("[dry run]")
    assert w.cluster.deployments[POOL].replicas == 1
    assert all(line["dry_run"] for line in w.lines.at(logging.INFO))


def test_pools_are_told_apart() -> None:
    w = world()
    w.tick(pool=POOL)
    w.tick(pool=OTHER)
    assert len(w.lines.at(logging.INFO)) == 2
    w.metrics.queue[OTHER] = 20.0
    w.tick(pool=OTHER)
    assert [e.ref.name for e in w.sink.events] == ["code"]


def test_a_broken_sink_or_callback_never_breaks_the_loop() -> None:
    w = world()
    w.sink.broken = True

    def explode(pool: PoolRef, step: StepReport) -> None:
        raise RuntimeError("status builder bug")

    w.recorder._on_status = explode
    w.metrics.queue[POOL] = 20.0
    outcome = w.loop.reconcile(POOL, SPEC, OLD)
    assert outcome.applied and w.cluster.deployments[POOL].replicas == 5
    assert w.lines.at(logging.INFO)[-1]["applied"] is True
    problems = [r for r in w.lines.records if r.levelno == logging.ERROR]
    assert {r.getMessage().split(" for ")[0] for r in problems} == {"emitting Events", "the status callback"}


def test_forget_drops_a_pool() -> None:
    w = world()
    w.tick()
    w.recorder.forget(POOL)
    w.tick()
    assert len(w.lines.at(logging.INFO)) == 2


def test_no_sink_means_no_events_but_logs_and_status() -> None:
    logger = logging.getLogger("test.decisions.nosink")
    lines = Lines()
    logger.handlers = [lines]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    steps: list[StepReport] = []
    recorder = KubeRecorder(None, lambda pool, step: steps.append(step), logger)
    step = StepReport(POOL, T0, None, None, None, False, None, error="boom")
    recorder.record(step)
    assert steps == [step] and len(lines.at(logging.INFO)) == 1


@pytest.mark.parametrize(
    ("reason", "expected"),
    [("no-data-hold", "NoDataHold"), ("prewarm", "Prewarm"), ("gpu-budget-cap", "GpuBudgetCap"), ("", "Unknown")],
)
def test_event_reasons_are_camel_case(reason: str, expected: str) -> None:
    assert event_reason(reason) == expected
