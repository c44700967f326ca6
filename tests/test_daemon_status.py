"""The pool's status from a step: shape, conditions that flip (and only then move their time), churn that
is not worth a write, and the merge patch that removes what went."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.daemon.codec import PERSIST_SLACK_SECONDS, decode_state, encode_state
from controller.daemon.ledger import CarriedHours, ledger_to_status
from controller.daemon.status import (
    BUDGET_EXCEEDED,
    METRICS_AVAILABLE,
    READY,
    SCALING_ACTIVE,
    build_status,
    split_reason,
    status_changed,
    status_patch,
)
from controller.ports import PoolRef, StepReport, Usage
from policies.scaling import decide
from policies.spec import GPUPoolSpec, GPUPoolStatus
from policies.types import DemandSample, Observation, PolicyState

UTC = dt.UTC
T0 = dt.datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
POOL = PoolRef("chat", "inference", "vllm", "inference")
SPEC = GPUPoolSpec.model_validate(
    {
        "target": {"deployment": "vllm", "maxReplicas": 6},
        "demand": {"targetQueuePerReplica": 4},
        "budget": {"maxGpuHoursPerDay": 10, "maxFallbackUsdPerDay": 5},
    }
)
STARTED = PolicyState(started_at=T0 - dt.timedelta(hours=1))


def step_at(
    now: dt.datetime,
    *,
    queue: float | None = 8.0,
    current: int = 2,
    ready: int | None = None,
    state: PolicyState = STARTED,
    applied: bool = False,
    error: str = "",
    dry_run: bool = False,
    no_data: str = "pod vllm-0: connection refused",
) -> tuple[StepReport, PolicyState]:
    demand = DemandSample(now, waiting=queue / 2, running=queue / 2) if queue is not None else None
    obs = Observation(current, current if ready is None else ready, demand, no_data_reason="" if demand else no_data)
    decision, new_state = decide(SPEC, obs, state, now)
    step = StepReport(POOL, now, 3, obs, decision, applied, current, error=error, dry_run=dry_run)
    return step, new_state


def build(step: StepReport, previous: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "previous": previous,
        "spec": SPEC,
        "state": STARTED,
        "usage": Usage(1.5, 0.25),
        "active_window": "office",
        "next_change": (T0 + dt.timedelta(hours=8), "window office closes"),
    }
    args.update(kw)
    return build_status(step, **args)


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def stored(status: dict[str, Any]) -> dict[str, Any]:
    """The status as the API server keeps it after a merge patch onto nothing (nulls gone)."""
    return {k: v for k, v in status.items() if v is not None}


def test_a_normal_step_gives_the_whole_status() -> None:
    step, state = step_at(T0)
    status = build(step, state=state, ledger={"day": "2026-12-01", "closedGpuSeconds": 0.0, "pods": []})
    assert status["desiredReplicas"] == 2
    assert status["currentReplicas"] == status["readyReplicas"] == 2
    assert status["observedGeneration"] == 3
    assert status["activeWindow"] == "office"
    assert status["nextChange"] == {"time": "2026-12-01T18:00:00Z", "what": "window office closes"}
    assert status["lastDecision"]["reason"] == step.decision.reason.value  # type: ignore[union-attr]
    assert status["lastDecision"]["time"] == "2026-12-01T10:00:00Z"
    assert status["gpuHoursToday"] == 1.5 and status["fallbackUsdToday"] == 0.25
    assert status["fallbackOpen"] is True
    assert decode_state(status["policyState"], T0) == state
    got = conditions(status)
    assert list(got) == [READY, METRICS_AVAILABLE, SCALING_ACTIVE, BUDGET_EXCEEDED]
    assert {t: c["status"] for t, c in got.items()} == {
        READY: "True",
        METRICS_AVAILABLE: "True",
        SCALING_ACTIVE: "True",
        BUDGET_EXCEEDED: "False",
    }
    assert all(c["lastTransitionTime"] == "2026-12-01T10:00:00Z" and c["observedGeneration"] == 3 for c in got.values())
    # The object the CRD's schema describes (the model is the schema's source).
    GPUPoolStatus.model_validate(stored(status))


def test_last_transition_time_moves_only_on_a_flip() -> None:
    first = build(step_at(T0)[0])
    later = T0 + dt.timedelta(seconds=5)
    lost = build(step_at(later, queue=None)[0], first)
    metrics = conditions(lost)[METRICS_AVAILABLE]
    assert metrics["status"] == "False" and metrics["reason"] == "NoData"
    assert metrics["message"] == "pod vllm-0: connection refused"
    assert metrics["lastTransitionTime"] == "2026-12-01T10:00:05Z"
    assert conditions(lost)[READY]["lastTransitionTime"] == "2026-12-01T10:00:00Z"  # did not flip
    still = build(step_at(later + dt.timedelta(seconds=5), queue=None)[0], lost)
    assert conditions(still)[METRICS_AVAILABLE]["lastTransitionTime"] == "2026-12-01T10:00:05Z"
    back = build(step_at(later + dt.timedelta(seconds=10))[0], still)
    assert conditions(back)[METRICS_AVAILABLE]["status"] == "True"
    assert conditions(back)[METRICS_AVAILABLE]["lastTransitionTime"] == "2026-12-01T10:00:15Z"
    # A new reason with the same status keeps the time too.
    stale_step, _ = step_at(later + dt.timedelta(seconds=20))
    assert conditions(build(stale_step, back))[READY]["lastTransitionTime"] == "2026-12-01T10:00:00Z"


def test_last_decision_time_moves_only_when_the_reason_changes() -> None:
    first = build(step_at(T0)[0])
    same = build(step_at(T0 + dt.timedelta(seconds=5))[0], first)
    assert same["lastDecision"] == first["lastDecision"]
    held = build(step_at(T0 + dt.timedelta(seconds=10), queue=None)[0], same)
    assert held["lastDecision"]["reason"] == "no-data-hold"
    assert held["lastDecision"]["valid"] is False
    assert held["lastDecision"]["time"] == "2026-12-01T10:00:10Z"


def test_the_same_status_a_tick_later_is_not_a_change() -> None:
    first = build(step_at(T0)[0], usage=Usage(1.5, 0.25))
    tick = build(step_at(T0 + dt.timedelta(seconds=5))[0], first, usage=Usage(1.53, 0.29))
    assert not status_changed(first, tick)
    assert not status_changed(first, first)
    assert status_changed(None, first)


@pytest.mark.parametrize(
    "change",
    ["reason", "ready", "hours", "dollars", "fallback closes", "window", "hours unknown", "pods", "refused"],
)
def test_what_is_news_is_a_change(change: str) -> None:
    first = build(step_at(T0)[0])
    later = T0 + dt.timedelta(seconds=5)
    step, _ = step_at(later)
    new = {
        "reason": lambda: build(step_at(later, queue=None)[0], first),
        "ready": lambda: build(step_at(later, ready=1)[0], first),
        "hours": lambda: build(step, first, usage=Usage(1.61, 0.25)),
        "dollars": lambda: build(step, first, usage=Usage(1.5, 0.36)),
        "fallback closes": lambda: build(step, first, usage=Usage(1.5, 5.0)),
        "window": lambda: build(step, first, active_window=None),
        "hours unknown": lambda: build(step, first, usage=Usage(None, 0.25)),
        "pods": lambda: build(
            step, first, ledger={"day": "2026-12-01", "pods": [{"uid": "u", "since": "2026-12-01T09:00:00Z"}]}
        ),
        "refused": lambda: build(step, first, scaling_refused="ScalingOwnedByHPA: HorizontalPodAutoscaler vllm"),
    }[change]()
    assert status_changed(first, new), change


def test_a_message_that_only_counts_seconds_is_not_news() -> None:
    step, _ = step_at(T0)
    first = build(step)
    assert step.decision is not None
    reworded = dataclasses.replace(step, decision=dataclasses.replace(step.decision, message="idle 35 s of 600 s"))
    assert not status_changed(first, build(reworded, first))


def test_a_failed_read_keeps_what_was_seen_and_says_why() -> None:
    first = build(step_at(T0)[0])
    failed = StepReport(
        POOL, T0 + dt.timedelta(seconds=5), 3, None, None, False, None, error="DeploymentMissing: inference/vllm"
    )
    status = build(failed, first, state=None)
    assert status["desiredReplicas"] == status["currentReplicas"] == status["readyReplicas"] == 2
    assert status["lastDecision"] == {
        "reason": "read-error",
        "message": "DeploymentMissing: inference/vllm",
        "valid": False,
        "desiredReplicas": None,
        "time": "2026-12-01T10:00:05Z",
    }
    got = conditions(status)
    assert (got[READY]["status"], got[READY]["reason"], got[READY]["message"]) == (
        "False",
        "DeploymentMissing",
        "inference/vllm",
    )
    assert got[SCALING_ACTIVE]["status"] == "False" and got[SCALING_ACTIVE]["reason"] == "DeploymentMissing"
    assert got[METRICS_AVAILABLE]["status"] == "Unknown"
    assert status["policyState"] == first["policyState"]  # no new state: the persisted one stays
    GPUPoolStatus.model_validate(stored(status))


def test_an_unprefixed_error_reads_as_read_failed() -> None:
    failed = StepReport(POOL, T0, None, None, None, False, None, error="cannot read inference/vllm: timeout")
    got = conditions(build(failed, None, spec=None, state=None, usage=None))
    assert got[READY]["reason"] == "ReadFailed"
    assert "observedGeneration" not in got[READY]
    assert got[BUDGET_EXCEEDED]["status"] == "Unknown"


def test_an_hpa_owner_stops_scaling_and_is_named() -> None:
    status = build(step_at(T0)[0], scaling_refused="ScalingOwnedByHPA: HorizontalPodAutoscaler inference/vllm-hpa")
    scaling = conditions(status)[SCALING_ACTIVE]
    assert (scaling["status"], scaling["reason"]) == ("False", "ScalingOwnedByHPA")
    assert "inference/vllm-hpa" in scaling["message"]
    plain = conditions(build(step_at(T0)[0], scaling_refused="another controller scales it"))[SCALING_ACTIVE]
    assert plain["reason"] == "ScalingRefused"


def test_paused_and_dry_run_are_not_active() -> None:
    assert conditions(build(step_at(T0)[0], paused=True))[SCALING_ACTIVE]["reason"] == "Paused"
    assert conditions(build(step_at(T0, dry_run=True)[0]))[SCALING_ACTIVE]["reason"] == "DryRun"


def test_a_failed_scale_is_not_ready() -> None:
    step, _ = step_at(T0, queue=20.0, error="scale to 5 failed: 409 conflict")
    ready = conditions(build(step))[READY]
    assert (ready["status"], ready["reason"]) == ("False", "ScaleFailed")


def test_replicas_starting_are_not_ready_yet() -> None:
    step, _ = step_at(T0, queue=12.0, current=3, ready=1)
    ready = conditions(build(step))[READY]
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "False",
        "WaitingForReplicas",
        "1 of 3 replicas Ready",
    )


def test_stale_metrics_are_not_available() -> None:
    now = T0
    obs = Observation(2, 2, DemandSample(now - dt.timedelta(minutes=5), 2, 2))
    decision, _ = decide(SPEC, obs, STARTED, now)
    step = StepReport(POOL, now, 3, obs, decision, False, 2)
    metrics = conditions(build(step))[METRICS_AVAILABLE]
    assert (metrics["status"], metrics["reason"]) == ("False", "StaleData")
    forced = conditions(build(step_at(T0)[0], metrics_ok=False))[METRICS_AVAILABLE]
    assert forced["status"] == "False"


@pytest.mark.parametrize(
    ("usage", "status", "reason", "fallback_open"),
    [
        (Usage(1.0, 1.0), "False", "WithinBudget", True),
        (Usage(10.0, 1.0), "True", "GPUHoursCap", True),
        (Usage(1.0, 5.0), "True", "FallbackUsdCap", False),
        (Usage(12.0, 6.0), "True", "GPUHoursCap,FallbackUsdCap", False),
        (Usage(None, 1.0), "Unknown", "UsageUnknown", True),
        (Usage(1.0, None), "Unknown", "UsageUnknown", False),  # a cap it cannot check holds: closed
        (None, "Unknown", "UsageUnknown", False),
    ],
)
def test_budget_condition_and_fallback_open(usage: Usage | None, status: str, reason: str, fallback_open: bool) -> None:
    got = build(step_at(T0)[0], usage=usage)
    budget = conditions(got)[BUDGET_EXCEEDED]
    assert (budget["status"], budget["reason"]) == (status, reason)
    assert got["fallbackOpen"] is fallback_open
    GPUPoolStatus.model_validate(stored(got))


def test_without_caps_the_budget_is_not_exceeded_and_the_fallback_open() -> None:
    spec = SPEC.model_copy(
        update={
            "budget": SPEC.budget.model_copy(update={"max_gpu_hours_per_day": None, "max_fallback_usd_per_day": None})
        }
    )
    got = build(step_at(T0)[0], spec=spec, usage=Usage(None, None))
    assert conditions(got)[BUDGET_EXCEEDED]["reason"] == "NoCap"
    assert got["fallbackOpen"] is True
    assert got["gpuHoursToday"] is None and got["fallbackUsdToday"] is None


def test_policy_state_is_rewritten_only_when_worth_it() -> None:
    step, state = step_at(T0, state=PolicyState())
    first = build(step, state=state)
    assert decode_state(first["policyState"], T0) == state
    tick, state2 = step_at(T0 + dt.timedelta(seconds=5), state=state)
    assert build(tick, first, state=state2)["policyState"] == first["policyState"]
    much_later, state3 = step_at(T0 + dt.timedelta(seconds=60), state=state2)
    assert build(much_later, first, state=state3)["policyState"] == encode_state(state3)
    garbled = {**first, "policyState": "{oops"}
    assert build(tick, garbled, state=state2)["policyState"] == encode_state(state2)


def test_last_scale_time() -> None:
    first = build(step_at(T0, queue=30.0, applied=True)[0])
    assert first["lastScaleTime"] == "2026-12-01T10:00:00Z"
    kept = build(step_at(T0 + dt.timedelta(seconds=5))[0], first)
    assert kept["lastScaleTime"] == "2026-12-01T10:00:00Z"
    given_time = build(step_at(T0)[0], None, last_scale_time=T0 - dt.timedelta(minutes=3))
    assert given_time["lastScaleTime"] == "2026-12-01T09:57:00Z"
    assert build(step_at(T0)[0])["lastScaleTime"] is None


def test_the_merge_patch_removes_what_went() -> None:
    hours = CarriedHours(dt.date(2026, 12, 1), 0.0, {"a": T0, "b": T0})
    first = build(step_at(T0)[0], ledger=ledger_to_status(hours, None))
    later, _ = step_at(T0 + dt.timedelta(seconds=5))
    second = build(
        later,
        first,
        usage=Usage(None, 0.25),
        active_window=None,
        ledger=ledger_to_status(dataclasses.replace(hours, pods={"a": T0}), None),
    )
    patch = status_patch(stored(first), second)
    assert patch["ledger"] == {"pods": [{"uid": "a", "since": "2026-12-01T10:00:00Z"}]}
    assert patch["gpuHoursToday"] is None and patch["activeWindow"] is None
    assert "desiredReplicas" not in patch  # unchanged fields are not sent
    assert status_patch(stored(first), first) == {}
    # Applying the patch (RFC 7386) to the stored object gives the new one; so does sending the whole new
    # object as the patch (its nulls remove, and the ledger's lists are replaced whole).
    assert merge(stored(first), patch) == stored(second)
    assert merge(stored(first), second) == stored(second)
    GPUPoolStatus.model_validate(stored(first))


def merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


def test_split_reason() -> None:
    assert split_reason("Paused: by hand", "X") == ("Paused", "by hand")
    assert split_reason("cannot read: timeout", "ReadFailed") == ("ReadFailed", "cannot read: timeout")
    assert split_reason("HTTP 500: boom", "ReadFailed") == ("ReadFailed", "HTTP 500: boom")


# --- properties and a restart ----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abcd"), inner, max_size=4),
    max_leaves=12,
)
objects = st.dictionaries(st.sampled_from("abcdef"), json_values, max_size=5)


@settings(max_examples=300, deadline=None)
@given(objects, objects)
def test_the_patch_turns_the_stored_object_into_the_new_one(old: dict[str, Any], new: dict[str, Any]) -> None:
    stored_old = _prune(old)
    assert merge(stored_old, status_patch(stored_old, new)) == _prune(new)


def _prune(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _prune(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


RESTART_SPEC = GPUPoolSpec.model_validate(
    {
        "target": {"deployment": "vllm", "maxReplicas": 4},
        "demand": {"targetQueuePerReplica": 4, "scaleDownDelaySeconds": 120, "idleGraceSeconds": 300},
        "billing": {"granularity": "second", "minimumBilledSeconds": 0},
    }
)


def _run(restart_at: int | None, ticks: int = 160) -> tuple[list[int], int]:
    """Drive the policy every 5 s (queue 12 for 2 minutes, then none), keeping the status as the API server
    would (merge patches, written only on change). At `restart_at` the process 'restarts': its state and
    ledger come back from the stored status alone. Returns the replicas per tick and the writes."""
    now, current, state = T0, 1, PolicyState()
    stored: dict[str, Any] = {}
    writes = 0
    replicas: list[int] = []
    for i in range(ticks):
        now += dt.timedelta(seconds=5)
        if i == restart_at:
            state = decode_state(stored.get("policyState"), now)
        queue = 12.0 if i < 24 else 0.0
        obs = Observation(current, current, DemandSample(now, waiting=0.0, running=queue))
        decision, state = decide(RESTART_SPEC, obs, state, now)
        step = StepReport(POOL, now, 1, obs, decision, decision.desired_replicas != current, current)
        status = build_status(
            step,
            previous=stored,
            spec=RESTART_SPEC,
            state=state,
            usage=Usage(0.0, 0.0),
            active_window=None,
            next_change=None,
        )
        if status_changed(stored, status):
            stored = merge(stored, status_patch(stored, status))
            writes += 1
        if decision.valid:
            current = decision.desired_replicas
        replicas.append(current)
    return replicas, writes


def test_a_restart_keeps_the_delay_and_the_idle_grace_from_the_status_alone() -> None:
    steady, writes = _run(None)
    assert steady[23] == 3 and steady[-1] == 0
    assert writes < len(steady) / 3  # written on change, not every tick
    first_down = next(i for i, r in enumerate(steady) if r < 3)
    zero = steady.index(0)
    for restart_at in (26, 30, 40, 60, 70):
        restarted, _ = _run(restart_at)
        assert restarted[:restart_at] == steady[:restart_at]
        # The scale-down delay and the idle grace carry over: nothing goes down more than the persisting
        # slack (30 s = 6 ticks) earlier than without the restart. Nor later: the restored state is used,
        # not a fresh one (which would hold a delay and a grace anew).
        slack = int(PERSIST_SLACK_SECONDS / 5)
        assert abs(next(i for i, r in enumerate(restarted) if r < 3) - first_down) <= slack, restart_at
        assert abs(restarted.index(0) - zero) <= slack, restart_at
