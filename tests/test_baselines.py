"""Baselines: one contract over every registry entry, then each baseline's own documented behaviour."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest

from policies.baselines import BASELINES, HPASettings, KedaSettings, Sizing, hpa, keda
from policies.overflow import Routing
from policies.spec import GPUPoolSpec
from policies.types import DemandSample, Observation, PolicyState, Reason

MONDAY_NOON = dt.datetime(2024, 5, 13, 12, 0, tzinfo=dt.UTC)  # 14:00 in Berlin, inside the window
SUNDAY_NOON = dt.datetime(2024, 5, 12, 12, 0, tzinfo=dt.UTC)  # no window
SIZING = Sizing(peak_hour_work=2.5, prefill_tokens_per_second=10_000.0, decode_tokens_per_second=2_500.0)


def _spec(**overrides: Any) -> GPUPoolSpec:
    raw: dict[str, Any] = {
        "target": {"deployment": "vllm", "minReplicas": 0, "maxReplicas": 8},
        "schedule": {
            "timezone": "Europe/Berlin",
            "windows": [
                {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "08:00", "end": "19:00", "minReplicas": 2}
            ],
        },
        "demand": {"targetQueuePerReplica": 8},
    }
    raw.update(overrides)
    return GPUPoolSpec.model_validate(raw)


def _obs(
    current: int,
    waiting: float = 0.0,
    running: float = 0.0,
    tps: float = 0.0,
    now: dt.datetime = MONDAY_NOON,
    ready: int | None = None,
) -> Observation:
    demand = DemandSample(now, waiting, running, input_tokens_per_second=tps, output_tokens_per_second=0.0)
    return Observation(current, current if ready is None else ready, demand)


def test_registry_is_one_sorted_table() -> None:
    names = [b.name for b in BASELINES]
    assert names == sorted(names) == ["always_on", "api_only", "hpa", "keda", "lower_bound", "offline_optimum"]
    assert all(b.description for b in BASELINES)


@pytest.mark.parametrize("entry", [b for b in BASELINES if b.build is not None], ids=lambda b: b.name)
@pytest.mark.parametrize("now", [MONDAY_NOON, SUNDAY_NOON])
@pytest.mark.parametrize(("current", "waiting", "tps"), [(0, 0.0, 0.0), (1, 40.0, 30_000.0), (3, 0.0, 100.0)])
def test_every_baseline_is_a_pure_policy_within_the_pool(
    entry: Any, now: dt.datetime, current: int, waiting: float, tps: float
) -> None:
    spec = _spec()
    policy = entry.build(spec, SIZING)
    obs = _obs(current, waiting, tps=tps, now=now)
    state = PolicyState()
    before = (copy.deepcopy(obs), copy.deepcopy(state))
    first = policy(spec, obs, state, now)
    second = policy(spec, obs, state, now)
    assert (obs, state) == before  # inputs untouched
    assert first == second  # same inputs, same answer: no clock, no globals
    decision, new_state = first
    assert 0 <= decision.desired_replicas <= spec.target.max_replicas
    assert decision.reason in Reason
    assert decision.message
    assert isinstance(new_state, PolicyState)
    if entry.routing is Routing.FALLBACK:
        assert decision.desired_replicas == 0


@pytest.mark.parametrize("entry", [b for b in BASELINES if b.build is not None], ids=lambda b: b.name)
def test_no_data_never_scales_a_baseline_down(entry: Any) -> None:
    spec = _spec()
    policy = entry.build(spec, SIZING)
    obs = Observation(3, 3, None, no_data_reason="scrape failed")
    decision, _ = policy(spec, obs, PolicyState(), MONDAY_NOON)
    assert not (decision.valid and decision.desired_replicas < 3) or entry.name == "api_only"


def _keda(spec: GPUPoolSpec) -> KedaSettings:
    return KedaSettings(hpa=HPASettings(min_replicas=1, max_replicas=spec.target.max_replicas, target=8.0))


def test_keda_cron_window_holds_fixed_replicas_and_no_prewarm() -> None:
    spec = _spec()
    settings = _keda(spec)
    decision, _ = keda(spec, _obs(0), PolicyState(), MONDAY_NOON, settings=settings)
    assert decision.desired_replicas == 2  # activation straight to the cron's replicas
    # Five minutes before the window opens there is no pre-warm: KEDA's cron starts at the start.
    early = dt.datetime(2024, 5, 13, 5, 55, tzinfo=dt.UTC)  # 07:55 Berlin
    decision, _ = keda(spec, _obs(0, now=early), PolicyState(), early, settings=settings)
    assert decision.desired_replicas == 0


def test_keda_threshold_scale_up_is_rate_limited_and_polls_every_30_s() -> None:
    spec = _spec(target={"deployment": "vllm", "maxReplicas": 20})
    settings = _keda(spec)
    now = SUNDAY_NOON
    decision, state = keda(spec, _obs(1, waiting=160.0, now=now), PolicyState(), now, settings=settings)
    # 160 waiting at 8 per replica wants 20; from 1 the HPA adds at most max(4 pods, 100 %) = 5 per 60 s.
    assert decision.desired_replicas == 5
    assert decision.reason is Reason.STEP_LIMIT
    later = now + dt.timedelta(seconds=15)
    decision, state = keda(spec, _obs(5, waiting=160.0, now=later), state, later, settings=settings)
    assert decision.desired_replicas == 5  # between polls
    later = now + dt.timedelta(seconds=30)
    decision, state = keda(spec, _obs(5, waiting=160.0, now=later), state, later, settings=settings)
    assert decision.desired_replicas == 5  # still within the same 60 s scale-up period
    later = now + dt.timedelta(seconds=60)
    decision, state = keda(spec, _obs(5, waiting=160.0, now=later), state, later, settings=settings)
    assert decision.desired_replicas == 10  # a new period: 100 % of 5


def test_keda_returns_to_zero_only_after_the_cooldown() -> None:
    spec = _spec()
    settings = _keda(spec)
    t = SUNDAY_NOON
    _, state = keda(spec, _obs(1, waiting=3.0, now=t), PolicyState(), t, settings=settings)
    for seconds in (30, 120, 270):
        now = t + dt.timedelta(seconds=seconds)
        decision, state = keda(spec, _obs(1, now=now), state, now, settings=settings)
        assert decision.desired_replicas == 1, seconds
    now = t + dt.timedelta(seconds=300)
    decision, _ = keda(spec, _obs(1, now=now), state, now, settings=settings)
    assert decision.desired_replicas == 0
    assert decision.reason is Reason.IDLE_TO_ZERO


def test_hpa_tracks_utilisation_and_stabilises_scale_down() -> None:
    spec = _spec()
    settings = HPASettings(min_replicas=1, max_replicas=8, target=0.8)
    t = SUNDAY_NOON
    # 24,000 prompt tokens/s at 10,000 per replica = 2.4 replicas of work; at 80 % that wants 3.
    decision, state = hpa(spec, _obs(1, tps=24_000.0, now=t), PolicyState(), t, settings=settings)
    assert decision.desired_replicas == 3
    # Load vanishes: the HPA keeps 3 for the 300 s stabilisation window, then drops to its minimum.
    for seconds in (15, 150, 285):
        now = t + dt.timedelta(seconds=seconds)
        decision, state = hpa(spec, _obs(3, tps=0.0, now=now), state, now, settings=settings)
        assert decision.desired_replicas == 3, seconds
    now = t + dt.timedelta(seconds=300)
    decision, _ = hpa(spec, _obs(3, tps=0.0, now=now), state, now, settings=settings)
    assert decision.desired_replicas == 1


def test_hpa_tolerance_ignores_small_deviations() -> None:
    spec = _spec()
    settings = HPASettings(min_replicas=1, max_replicas=8, target=0.8)
    # 2 replicas at 85 % (within 10 % of 80 %): no change.
    decision, _ = hpa(spec, _obs(2, tps=17_000.0), PolicyState(), MONDAY_NOON, settings=settings)
    assert decision.desired_replicas == 2


def test_always_on_is_sized_for_the_peak_hour_within_the_pool() -> None:
    entry = next(b for b in BASELINES if b.name == "always_on")
    assert entry.build is not None
    spec = _spec()
    decision, _ = entry.build(spec, SIZING)(spec, _obs(0), PolicyState(), SUNDAY_NOON)
    assert decision.desired_replicas == 4  # 2.5 replicas of work at 80 % busy
    small = _spec(target={"deployment": "vllm", "maxReplicas": 2})
    decision, _ = entry.build(small, SIZING)(small, _obs(0), PolicyState(), SUNDAY_NOON)
    assert decision.desired_replicas == 2
