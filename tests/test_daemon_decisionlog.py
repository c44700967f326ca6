"""The change-only rule and the daemon's JSON log line; the simulator's DecisionLog keeps its output."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

from controller.daemon.decisionlog import (
    READ_ERROR_REASON,
    DecisionFilter,
    decision_key,
    format_time,
    log_line,
    step_reason,
)
from controller.ports import PoolRef, StepReport
from controller.sim.world import DecisionLog
from policies.scaling import decide
from policies.spec import GPUPoolSpec
from policies.types import DemandSample, Observation, PolicyState

T0 = dt.datetime(2026, 12, 1, 10, 0, 0, 250_000, tzinfo=dt.UTC)
POOL = PoolRef("chat", "inference", "vllm", "models")
OTHER = PoolRef("code", "inference", "vllm-code", "inference")
SPEC = GPUPoolSpec.model_validate({"target": {"deployment": "vllm", "maxReplicas": 6}})
OLD = PolicyState(started_at=T0 - dt.timedelta(hours=1))


def step(
    queue: float | None = 8.0, *, pool: PoolRef = POOL, current: int = 1, applied: bool = False, error: str = ""
) -> StepReport:
    demand = DemandSample(T0, waiting=2.0, running=queue - 2.0) if queue is not None else None
    obs = Observation(current, current, demand, no_data_reason="" if demand else "pod vllm-0: timed out after 2 s")
    decision, _ = decide(SPEC, obs, OLD, T0)
    return StepReport(pool, T0, 4, obs, decision, applied, current, error=error)


def test_the_same_decision_again_is_not_a_change() -> None:
    rule = DecisionFilter()
    assert rule.changed(step())
    assert not rule.changed(step())
    assert not rule.changed(dataclasses.replace(step(), now=T0 + dt.timedelta(minutes=5)))


def test_what_changes_a_decision() -> None:
    base = step()
    assert base.decision is not None
    variants = {
        "desired": dataclasses.replace(base, decision=dataclasses.replace(base.decision, desired_replicas=3)),
        "reason": step(None),
        "validity": dataclasses.replace(base, decision=dataclasses.replace(base.decision, valid=False)),
        "from": dataclasses.replace(base, previous=2),
        "error": dataclasses.replace(base, error="scale to 1 failed: 500"),
        "read failed": dataclasses.replace(base, observation=None, decision=None, previous=None, error="gone"),
    }
    for name, variant in variants.items():
        rule = DecisionFilter()
        rule.changed(base)
        assert rule.changed(variant), name
        assert not rule.changed(variant), name


def test_an_applied_step_is_always_logged() -> None:
    rule = DecisionFilter()
    rule.changed(step(applied=True))
    assert rule.changed(step(applied=True))


def test_pools_are_remembered_apart_and_can_be_forgotten() -> None:
    rule = DecisionFilter()
    assert rule.changed(step(pool=POOL))
    assert rule.changed(step(pool=OTHER))
    assert not rule.changed(step(pool=POOL))
    rule.forget(POOL)
    assert rule.changed(step(pool=POOL))
    rule.forget(POOL)
    rule.forget(POOL)  # forgetting twice is harmless


def test_a_message_alone_is_not_a_change() -> None:
    base = step()
    assert base.decision is not None
    reworded = dataclasses.replace(base, decision=dataclasses.replace(base.decision, message="other words"))
    assert decision_key(base) == decision_key(reworded)


def test_the_log_line() -> None:
    line = log_line(step(8.0), "office")
    assert line == {
        "time": "2026-12-01T10:00:00.250Z",
        "pool": "chat",
        "namespace": "inference",
        "deployment": "models/vllm",
        "from": 1,
        "to": 1,
        "ready": 1,
        "reason": "steady",
        "message": line["message"],
        "valid": True,
        "applied": False,
        "dry_run": False,
        "queue": 8.0,
        "window": "office",
        "generation": 4,
    }
    assert json.loads(json.dumps(line, allow_nan=False)) == line


def test_a_hold_names_what_is_missing() -> None:
    line = log_line(step(None), None)
    assert (line["reason"], line["valid"], line["queue"], line["window"]) == ("no-data-hold", False, None, None)
    assert line["no_data"] == "pod vllm-0: timed out after 2 s"


def test_a_failed_read_and_a_failed_scale() -> None:
    failed = StepReport(POOL, T0, None, None, None, False, None, error="cannot read models/vllm: 403 forbidden")
    line = log_line(failed, None)
    assert step_reason(failed) == READ_ERROR_REASON
    assert (line["from"], line["to"], line["ready"], line["reason"]) == (None, None, None, "read-error")
    assert line["error"] == line["message"] == "cannot read models/vllm: 403 forbidden"
    assert "generation" not in line
    scale = log_line(step(40.0, error="scale to 5 failed: 409"), None)
    assert scale["error"] == "scale to 5 failed: 409" and scale["to"] == 5


def test_times_are_utc_with_milliseconds() -> None:
    berlin = dt.timezone(dt.timedelta(hours=1))
    assert format_time(dt.datetime(2026, 12, 1, 11, 0, 0, 999_999, tzinfo=berlin)) == "2026-12-01T10:00:00.999Z"


def test_the_simulators_log_uses_the_same_rule() -> None:
    """DecisionLog keeps a line exactly when the shared filter says the decision changed."""
    sim = DecisionLog("ebbtide")
    rule = DecisionFilter()
    steps = [step(8.0), step(8.0), step(40.0), step(40.0, applied=True), step(None), step(None), step(8.0)]
    kept = 0
    for s in steps:
        kept += rule.changed(s)
        sim.record(s)
    assert len(sim.lines) == kept == 5
    assert sim.reasons["no-data-hold"] == 2
    assert [line["desired"] for line in sim.lines] == [1, 5, 5, 1, 1]
