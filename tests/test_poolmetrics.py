"""The controller's per-pool series: set from each step, absent without data, only while leading."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from controller.daemon.poolmetrics import POOL_SERIES, MetricsRecorder, PoolMetrics
from controller.ports import PoolRef, StepReport
from controller.validate import load_pools
from policies.spec import GPUPoolSpec
from policies.types import Decision, DemandSample, Limits, Observation, Reason

ROOT = Path(__file__).resolve().parents[1]
NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
POOL = PoolRef("chat", "inference", "vllm", "inference")
LABELS = {"namespace": "inference", "pool": "chat"}


def _spec() -> GPUPoolSpec:
    pools, problems = load_pools(ROOT / "examples" / "gpupool.yaml")
    assert problems == []
    return pools[0].spec


def _step(reason: Reason, desired: int, demand: DemandSample | None, *, floor: int = 1) -> StepReport:
    limits = Limits(floor, 8, Reason.WINDOW_OPEN, "window", Reason.POOL_MAX)
    observation = Observation(2, 1, demand, gpu_hours_today=3.5, fallback_usd_today=None)
    decision = Decision(desired, demand is not None, reason, "because", limits)
    return StepReport(POOL, NOW, 1, observation, decision, True, 2)


class _Inner:
    """The inner recorder: keeps what it was given (real state, no mock)."""

    def __init__(self) -> None:
        self.steps: list[StepReport] = []
        self.forgotten: list[PoolRef] = []

    def record(self, step: StepReport) -> None:
        self.steps.append(step)

    def forget(self, pool: PoolRef) -> None:
        self.forgotten.append(pool)


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    value: float | None = registry.get_sample_value(name, {**LABELS, **labels})
    return value


def test_a_step_sets_every_series_and_reaches_the_inner_recorder() -> None:
    registry = CollectorRegistry()
    inner = _Inner()
    recorder = MetricsRecorder(
        inner, PoolMetrics(registry, leading=lambda: True), spec=lambda _: _spec(), window=lambda *_: "office-hours"
    )
    # 70 queued at 32 per replica -> 3; 13,000 tokens/s at 6,000 per replica -> 3 as well, 19,000 -> 4.
    demand = DemandSample(
        NOW,
        waiting=40,
        running=30,
        input_tokens_per_second=15000,
        output_tokens_per_second=4000,
        replay_usd=(9.0, 5.0, 4.0, 4.5),
    )
    recorder.record(_step(Reason.QUEUE_HIGH, 4, demand))
    assert inner.steps and inner.steps[0].decision is not None
    assert _value(registry, "ebbtide_pool_desired_replicas") == 4
    assert _value(registry, "ebbtide_pool_current_replicas") == 2
    assert _value(registry, "ebbtide_pool_ready_replicas") == 1
    assert _value(registry, "ebbtide_pool_queue_requests") == 70
    assert _value(registry, "ebbtide_pool_offered_tokens_per_second") == 19000
    assert _value(registry, "ebbtide_pool_demand_replicas") == 4
    assert _value(registry, "ebbtide_pool_replay_replicas") == 2
    assert _value(registry, "ebbtide_pool_schedule_floor_replicas") == 1
    assert _value(registry, "ebbtide_pool_gpu_hours_today") == 3.5
    assert _value(registry, "ebbtide_pool_fallback_usd_today") is None  # unknown, not 0
    assert _value(registry, "ebbtide_pool_window_open", window="office-hours") == 1
    assert _value(registry, "ebbtide_pool_decisions_total", reason="queue-high") == 1
    text = generate_latest(registry).decode()
    for name in POOL_SERIES:
        if name != "ebbtide_pool_fallback_usd_today":
            assert name in text, name


def test_no_data_removes_the_demand_series_and_counts_the_hold() -> None:
    registry = CollectorRegistry()
    recorder = MetricsRecorder(
        _Inner(), PoolMetrics(registry, leading=lambda: True), spec=lambda _: _spec(), window=lambda *_: None
    )
    recorder.record(_step(Reason.QUEUE_HIGH, 2, DemandSample(NOW, waiting=5, running=5)))
    assert _value(registry, "ebbtide_pool_queue_requests") == 10
    recorder.record(_step(Reason.NO_DATA_HOLD, 2, None))
    assert _value(registry, "ebbtide_pool_queue_requests") is None
    assert _value(registry, "ebbtide_pool_demand_replicas") is None
    assert _value(registry, "ebbtide_pool_replay_replicas") is None
    assert _value(registry, "ebbtide_pool_window_open", window="office-hours") == 0
    assert _value(registry, "ebbtide_pool_decisions_total", reason="no-data-hold") == 1
    assert _value(registry, "ebbtide_pool_decisions_total", reason="queue-high") == 1


def test_a_step_without_a_decision_counts_as_a_read_error() -> None:
    registry = CollectorRegistry()
    recorder = MetricsRecorder(
        _Inner(), PoolMetrics(registry, leading=lambda: True), spec=lambda _: None, window=lambda *_: None
    )
    recorder.record(StepReport(POOL, NOW, 1, None, None, False, None, error="DeploymentMissing: no vllm"))
    assert _value(registry, "ebbtide_pool_decisions_total", reason="read-error") == 1
    assert _value(registry, "ebbtide_pool_desired_replicas") is None


def test_a_standby_exports_no_pool_series_and_forget_removes_a_pool() -> None:
    registry = CollectorRegistry()
    leading = [True]
    inner = _Inner()
    recorder = MetricsRecorder(
        inner, PoolMetrics(registry, leading=lambda: leading[0]), spec=lambda _: _spec(), window=lambda *_: None
    )
    recorder.record(_step(Reason.STEADY, 1, DemandSample(NOW, waiting=0, running=1)))
    assert _value(registry, "ebbtide_pool_desired_replicas") == 1
    leading[0] = False
    assert "ebbtide_pool_" not in generate_latest(registry).decode()
    leading[0] = True
    assert _value(registry, "ebbtide_pool_desired_replicas") == 1
    recorder.forget(POOL)
    assert inner.forgotten == [POOL]
    assert "inference" not in generate_latest(registry).decode()


def test_a_failing_export_never_stops_the_step() -> None:
    def broken(_: PoolRef) -> GPUPoolSpec:
        raise RuntimeError("table gone")

    inner = _Inner()
    recorder = MetricsRecorder(
        inner, PoolMetrics(CollectorRegistry(), leading=lambda: True), spec=broken, window=lambda *_: None
    )
    recorder.record(_step(Reason.STEADY, 1, None))
    assert len(inner.steps) == 1
