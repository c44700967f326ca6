"""Behaviour of the Ebbtide policy at fixed moments: each case names the rule it pins down."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

import pytest

from policies.scaling import decide, mean_sized_replicas, replica_worth
from policies.spec import GPUPoolSpec
from policies.types import DemandSample, Observation, PolicyState, Reason

UTC = dt.UTC
# Tuesday 2026-12-01, Berlin is UTC+1: the 08:00–18:00 window is 07:00–17:00 UTC.
TUE_NOON = dt.datetime(2026, 12, 1, 11, 0, tzinfo=UTC)
TUE_NIGHT = dt.datetime(2026, 12, 1, 22, 0, tzinfo=UTC)


def make_spec(**overrides: Any) -> GPUPoolSpec:
    base: dict[str, Any] = {
        "target": {"deployment": "vllm", "minReplicas": 0, "maxReplicas": 8},
        "schedule": {
            "timezone": "Europe/Berlin",
            "windows": [
                {
                    "name": "office",
                    "days": ["mon", "tue", "wed", "thu", "fri"],
                    "start": "08:00",
                    "end": "18:00",
                    "minReplicas": 1,
                }
            ],
        },
        "demand": {
            "targetQueuePerReplica": 8,
            "maxScaleUpStep": 2,
            "scaleDownDelaySeconds": 300,
            "idleGraceSeconds": 600,
        },
        "coldStartSeconds": 180,
        "fallback": {"providers": [{"name": "api", "baseUrl": "https://api.example.com/v1"}]},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return GPUPoolSpec.model_validate(base)


def sample(
    now: dt.datetime, queue: float, *, age: float = 0.0, tokens: tuple[float, float] | None = None
) -> DemandSample:
    return DemandSample(
        observed_at=now - dt.timedelta(seconds=age),
        waiting=queue,
        running=0.0,
        input_tokens_per_second=None if tokens is None else tokens[0],
        output_tokens_per_second=None if tokens is None else tokens[1],
    )


def obs(current: int, demand: DemandSample | None, *, starts: tuple[dt.datetime, ...] = (), **kw: Any) -> Observation:
    return Observation(
        current_replicas=current, ready_replicas=current, demand=demand, replica_billing_starts=starts, **kw
    )


OLD_STATE = PolicyState(started_at=TUE_NOON - dt.timedelta(hours=5))


@pytest.mark.parametrize(
    ("current", "queue", "want", "reason"),
    [
        (1, 0, 1, Reason.WINDOW_OPEN),  # idle inside a window: the window's minimum holds
        (1, 8, 1, Reason.STEADY),
        (1, 9, 2, Reason.QUEUE_HIGH),  # ceil(9 / 8) = 2
        (2, 24, 3, Reason.QUEUE_HIGH),
        (1, 40, 3, Reason.STEP_LIMIT),  # wants 5, at most 2 added per decision
        (4, 200, 6, Reason.STEP_LIMIT),
        (7, 200, 8, Reason.POOL_MAX),  # wants 25, pool max 8
    ],
)
def test_queue_sets_replicas_inside_window(current: int, queue: float, want: int, reason: Reason) -> None:
    decision, _ = decide(make_spec(), obs(current, sample(TUE_NOON, queue)), OLD_STATE, TUE_NOON)
    assert (decision.desired_replicas, decision.reason, decision.valid) == (want, reason, True)


def test_prewarm_starts_one_cold_start_before_the_window() -> None:
    spec = make_spec()
    opening = dt.datetime(2026, 12, 1, 7, 0, tzinfo=UTC)  # 08:00 Berlin
    early, _ = decide(spec, obs(0, sample(opening, 0)), OLD_STATE, opening - dt.timedelta(seconds=181))
    on_time, _ = decide(spec, obs(0, sample(opening, 0)), OLD_STATE, opening - dt.timedelta(seconds=180))
    assert (early.desired_replicas, early.reason) == (0, Reason.STEADY)
    assert (on_time.desired_replicas, on_time.reason) == (1, Reason.PREWARM)
    assert "pre-warming 1" in on_time.message


def test_scale_down_waits_for_the_delay_then_follows_demand() -> None:
    spec = make_spec()
    state = OLD_STATE
    t = TUE_NOON
    decision, state = decide(spec, obs(4, sample(t, 32)), state, t)
    assert decision.desired_replicas == 4
    held = []
    for step in range(1, 12):  # demand drops to one replica's worth; 30 s steps
        now = t + dt.timedelta(seconds=30 * step)
        decision, state = decide(spec, obs(4, sample(now, 8)), state, now)
        held.append((step * 30, decision.desired_replicas, decision.reason))
    assert all(d == 4 and r is Reason.SCALE_DOWN_DELAY for s, d, r in held if s < 300)
    assert all(d == 1 and r is Reason.QUEUE_LOW for s, d, r in held if s >= 300)


def test_idle_outside_window_goes_to_zero_after_grace() -> None:
    spec = make_spec()
    state = OLD_STATE
    t = TUE_NIGHT
    _, state = decide(spec, obs(1, sample(t, 3)), state, t)
    seen = {}
    for seconds in (60, 310, 590, 600, 660):
        now = t + dt.timedelta(seconds=seconds)
        decision, state = decide(spec, obs(1, sample(now, 0)), state, now)
        seen[seconds] = (decision.desired_replicas, decision.reason)
    assert seen[60] == (1, Reason.SCALE_DOWN_DELAY)
    assert seen[310] == (1, Reason.IDLE_GRACE)
    assert seen[590] == (1, Reason.IDLE_GRACE)
    assert seen[600] == (0, Reason.IDLE_TO_ZERO)


def test_no_data_holds_and_is_invalid() -> None:
    decision, state = decide(
        make_spec(), obs(3, None, no_data_reason="scrape failed: connection refused"), OLD_STATE, TUE_NIGHT
    )
    assert (decision.desired_replicas, decision.valid, decision.reason) == (3, False, Reason.NO_DATA_HOLD)
    assert "connection refused" in decision.message
    assert state == OLD_STATE  # nothing learnt from nothing


def test_stale_data_holds_even_if_it_says_zero() -> None:
    spec = make_spec()
    decision, _ = decide(spec, obs(3, sample(TUE_NIGHT, 0, age=91)), OLD_STATE, TUE_NIGHT)
    assert (decision.desired_replicas, decision.valid, decision.reason) == (3, False, Reason.STALE_DATA_HOLD)
    fresh, _ = decide(spec, obs(3, sample(TUE_NIGHT, 0, age=90)), OLD_STATE, TUE_NIGHT)
    assert fresh.valid


def test_no_data_still_lets_the_window_floor_scale_up() -> None:
    decision, _ = decide(make_spec(), obs(0, None), OLD_STATE, TUE_NOON)
    assert (decision.desired_replicas, decision.valid, decision.reason) == (1, True, Reason.WINDOW_OPEN)


def test_fresh_autoscaler_does_not_scale_down() -> None:
    decision, _ = decide(make_spec(), obs(5, sample(TUE_NIGHT, 0)), PolicyState(), TUE_NIGHT)
    assert (decision.desired_replicas, decision.reason) == (5, Reason.STARTUP_HOLD)


def test_a_restart_keeps_the_idle_grace_counted_from_its_own_start() -> None:
    # A fresh state finds one replica running outside the window with an empty queue: it holds for the
    # scale-down delay (300 s), then keeps the idle grace (600 s) from its start, then goes to zero.
    spec, state = make_spec(), PolicyState()
    seen: dict[int, tuple[int, Reason]] = {}
    for second in range(0, 721, 15):
        now = TUE_NIGHT + dt.timedelta(seconds=second)
        decision, state = decide(spec, obs(1, sample(now, 0)), state, now)
        seen[second] = (decision.desired_replicas, decision.reason)
    assert seen[0] == seen[285] == (1, Reason.STARTUP_HOLD)
    assert seen[300] == seen[585] == (1, Reason.IDLE_GRACE)
    assert seen[600] == seen[720] == (0, Reason.IDLE_TO_ZERO)


@pytest.mark.parametrize(
    ("minutes_running", "want", "reason"),
    [
        (10, 2, Reason.BILLING_HOLD),  # 50 paid minutes left: keep
        (57, 2, Reason.BILLING_HOLD),  # 3 minutes left, margin is 2 minutes: still keep
        (58, 0, Reason.IDLE_TO_ZERO),  # exactly the 2-minute margin left: release
        (59.5, 0, Reason.IDLE_TO_ZERO),
        (61, 2, Reason.BILLING_HOLD),  # a new hour has begun and is billed: keep it
    ],
)
def test_hourly_billing_keeps_paid_replicas_until_the_hour_ends(
    minutes_running: float, want: int, reason: Reason
) -> None:
    spec = make_spec(billing={"granularity": "hour", "releaseMarginSeconds": 120})
    now = TUE_NIGHT
    started = now - dt.timedelta(minutes=minutes_running)
    state = replace(OLD_STATE, last_busy_at=now - dt.timedelta(hours=1))
    decision, _ = decide(spec, obs(2, sample(now, 0), starts=(started, started)), state, now)
    assert (decision.desired_replicas, decision.reason) == (want, reason)
    if reason is Reason.BILLING_HOLD:
        assert "paid minutes left" in decision.message
        assert decision.detail("paid_seconds_kept") is not None


def test_billing_hold_releases_only_replicas_near_their_period_end() -> None:
    spec = make_spec(billing={"granularity": "hour"})
    now = TUE_NIGHT
    starts = (now - dt.timedelta(minutes=59), now - dt.timedelta(minutes=20), now - dt.timedelta(minutes=5))
    state = replace(OLD_STATE, last_busy_at=now - dt.timedelta(hours=1))
    decision, _ = decide(spec, obs(3, sample(now, 0), starts=starts), state, now)
    assert (decision.desired_replicas, decision.reason) == (2, Reason.BILLING_HOLD)


def test_per_second_billing_never_holds() -> None:
    spec = make_spec(billing={"granularity": "second", "minimumBilledSeconds": 60})
    now = TUE_NIGHT
    starts = (now - dt.timedelta(minutes=30),)
    state = replace(OLD_STATE, last_busy_at=now - dt.timedelta(hours=1))
    decision, _ = decide(spec, obs(1, sample(now, 0), starts=starts), state, now)
    assert decision.desired_replicas == 0


@pytest.mark.parametrize(("granularity", "kept"), [("hour", 1), ("second", 0)])
def test_the_plan_follower_keeps_a_replica_whose_hour_is_paid(granularity: str, kept: int) -> None:
    # The plan wants no replica from now on; the one running since 20 minutes ago has 40 paid minutes
    # left when billed by the hour (kept, it serves for nothing), none by the second.
    import numpy as np

    from policies.plan import ReplicaPlan, follow_plan

    spec = make_spec(billing={"granularity": granularity, "minimumBilledSeconds": 60})
    now = TUE_NIGHT
    plan = ReplicaPlan(now - dt.timedelta(hours=1), np.asarray([0.0, 3000.0]), np.asarray([1, 0]), 180.0)
    starts = (now - dt.timedelta(minutes=20),)
    decision, _ = follow_plan(spec, obs(1, None, starts=starts), OLD_STATE, now, plan=plan)
    assert decision.desired_replicas == kept
    if kept:
        assert decision.reason is Reason.BILLING_HOLD
        assert decision.detail("paid_seconds_kept") == pytest.approx(40 * 60)
        assert "40 paid minutes left" in decision.message


def test_cost_aware_scale_up_overflows_small_demand_outside_windows() -> None:
    # 4 queued requests offering 100 tok/s in, 10 tok/s out: $0.00045/s of mid-tier API spend.
    # One replica costs $1.6438/h; over its 480 s horizon ($0.22) it would absorb only $0.135.
    spec = make_spec()
    decision, _ = decide(spec, obs(0, sample(TUE_NIGHT, 4, tokens=(100, 10))), OLD_STATE, TUE_NIGHT)
    assert (decision.desired_replicas, decision.reason) == (0, Reason.COST_OVERFLOW)
    assert decision.detail("gpu_usd") == pytest.approx(1.6438 * 480 / 3600)
    assert decision.detail("api_usd") == pytest.approx((100 * 3 + 10 * 15) / 1e6 * 300)


def test_cost_aware_scale_up_starts_a_gpu_when_demand_pays_for_it() -> None:
    spec = make_spec()
    decision, _ = decide(spec, obs(0, sample(TUE_NIGHT, 6, tokens=(2000, 300))), OLD_STATE, TUE_NIGHT)
    assert (decision.desired_replicas, decision.reason) == (1, Reason.QUEUE_HIGH)


def test_new_replica_is_credited_with_load_beyond_capacity_or_half_the_overflow() -> None:
    spec = make_spec()  # 6,000 tok/s per replica
    # 13,000 tok/s offered: two replicas carry 12,000, a third absorbs the remaining 1,000.
    third = replica_worth(spec, sample(TUE_NOON, 24, tokens=(12000, 1000)), 2, current=2)
    assert third is not None and third.absorbed_tokens_per_second == pytest.approx(1000)
    # 1,200 tok/s is within one replica: a second absorbs nothing on averages...
    calm = replica_worth(spec, sample(TUE_NOON, 12, tokens=(1200, 0)), 1, current=1)
    assert calm is not None and calm.absorbed_tokens_per_second == 0 and not calm.worth_it
    # ...but half of what the gateway overflows, when bursts do not fit.
    bursty = replace(sample(TUE_NOON, 12, tokens=(1200, 0)), overflow_tokens_per_second=800.0)
    second = replica_worth(spec, bursty, 1, current=1)
    assert second is not None and second.absorbed_tokens_per_second == pytest.approx(400)
    assert replica_worth(spec, sample(TUE_NOON, 12), 1, current=1) is None  # token rate unknown


def test_offered_tokens_want_replicas_the_sampled_queue_cannot_see() -> None:
    # 15,000 tok/s at 6,000 per replica needs 3 replicas even though the sampled queue is short.
    decision, _ = decide(make_spec(), obs(1, sample(TUE_NOON, 2, tokens=(14000, 1000))), OLD_STATE, TUE_NOON)
    assert (decision.desired_replicas, decision.reason) == (3, Reason.TOKENS_HIGH)


def overflowing(now: dt.datetime, overflow: float) -> DemandSample:
    return DemandSample(
        observed_at=now,
        waiting=2,
        running=3,
        input_tokens_per_second=2900,
        output_tokens_per_second=100,
        overflow_tokens_per_second=overflow,
    )


def test_overflow_that_pays_for_a_replica_adds_one() -> None:
    # Half of 1,500 tok/s overflowing at ~$3.4/1M is ~$0.77 over the 300 s a new replica would serve;
    # its 480 s cost $0.22. Averages alone (3,000 tok/s, one replica's worth) would not add it.
    decision, state = decide(make_spec(), obs(1, overflowing(TUE_NOON, 1500)), OLD_STATE, TUE_NOON)
    assert (decision.desired_replicas, decision.reason) == (2, Reason.OVERFLOW_PAYS)
    assert state.overflow_at == TUE_NOON and state.overflow_replicas == 1


def test_with_hourly_billing_a_burst_is_credited_for_the_scale_down_delay_not_the_paid_hour() -> None:
    # The same 1,500 tok/s of overflow is ~$0.77 over the 300 s scale-down delay, less than the $1.64 an
    # hour's replica costs: no replica. Credited for the paid hour less the cold start (3,420 s, ~$8.7)
    # it would have bought one.
    spec = make_spec(billing={"granularity": "hour"})
    decision, state = decide(spec, obs(1, overflowing(TUE_NOON, 1500)), OLD_STATE, TUE_NOON)
    assert decision.desired_replicas == 1 and decision.reason is not Reason.OVERFLOW_PAYS
    assert state.overflow_at is None
    # A burst four times that size pays even over the delay.
    decision, _ = decide(spec, obs(1, overflowing(TUE_NOON, 6000)), OLD_STATE, TUE_NOON)
    assert (decision.desired_replicas, decision.reason) == (2, Reason.OVERFLOW_PAYS)
    assert "over 300 s" in decision.message and "for 3600 s" in decision.message


def test_trickle_of_overflow_does_not_add_a_replica_nor_hold_one() -> None:
    # Half of 200 tok/s is $0.10 over 300 s: less than the $0.22 a replica costs.
    decision, state = decide(make_spec(), obs(1, overflowing(TUE_NOON, 200)), OLD_STATE, TUE_NOON)
    assert decision.desired_replicas == 1
    assert state.overflow_at is None


def test_replicas_added_for_bursts_are_held_between_bursts() -> None:
    spec = make_spec(demand={"overflowMemorySeconds": 1800})
    state = OLD_STATE
    _, state = decide(spec, obs(2, overflowing(TUE_NOON, 1500)), state, TUE_NOON)  # overflow with 2 Ready
    assert (state.overflow_at, state.overflow_replicas) == (TUE_NOON, 2)
    quiet = overflowing(TUE_NOON, 0)
    later = TUE_NOON + dt.timedelta(minutes=20)
    decision, _ = decide(spec, obs(2, replace(quiet, observed_at=later)), state, later)
    assert (decision.desired_replicas, decision.reason) == (2, Reason.BURST_HOLD)
    much_later = TUE_NOON + dt.timedelta(minutes=31)
    decision, _ = decide(spec, obs(2, replace(quiet, observed_at=much_later)), state, much_later)
    assert decision.desired_replicas == 1


def test_running_replica_is_released_when_demand_no_longer_pays_for_it() -> None:
    # 50 tok/s in, 5 out at mid-tier prices is $0.81/h of API spend: less than the GPU's $1.64/h.
    spec = make_spec()
    state = replace(OLD_STATE, recommendations=())
    decision, _ = decide(spec, obs(1, sample(TUE_NIGHT, 1, tokens=(50, 5))), state, TUE_NIGHT)
    assert (decision.desired_replicas, decision.reason) == (0, Reason.COST_OVERFLOW)
    assert "keeping 0" in decision.message
    # ...but not inside a window: the window's minimum holds.
    inside, _ = decide(spec, obs(1, sample(TUE_NOON, 1, tokens=(50, 5))), state, TUE_NOON)
    assert inside.desired_replicas == 1


def test_running_replica_is_kept_while_it_pays() -> None:
    spec = make_spec()
    decision, _ = decide(spec, obs(1, sample(TUE_NIGHT, 1, tokens=(200, 20))), OLD_STATE, TUE_NIGHT)
    assert decision.desired_replicas == 1


def test_window_minimum_holds_even_when_not_worth_it() -> None:
    decision, _ = decide(make_spec(), obs(0, sample(TUE_NOON, 0, tokens=(0, 0))), OLD_STATE, TUE_NOON)
    assert (decision.desired_replicas, decision.reason) == (1, Reason.WINDOW_OPEN)


def test_gpu_budget_cap_scale_to_zero_beats_the_window() -> None:
    spec = make_spec(budget={"maxGpuHoursPerDay": 10, "onGpuCap": "scaleToZero"})
    decision, _ = decide(spec, obs(3, sample(TUE_NOON, 40), gpu_hours_today=10.0), OLD_STATE, TUE_NOON)
    assert (decision.desired_replicas, decision.reason) == (0, Reason.GPU_BUDGET_CAP)


def test_gpu_budget_cap_hold_allows_no_scale_up() -> None:
    spec = make_spec(budget={"maxGpuHoursPerDay": 10, "onGpuCap": "hold"})
    decision, _ = decide(spec, obs(2, sample(TUE_NOON, 80), gpu_hours_today=12.0), OLD_STATE, TUE_NOON)
    assert (decision.desired_replicas, decision.reason) == (2, Reason.GPU_BUDGET_CAP)


def test_fallback_budget_cap_lets_gpus_grow_past_the_cost_rule() -> None:
    spec = make_spec(budget={"maxFallbackUsdPerDay": 50})
    small = sample(TUE_NIGHT, 4, tokens=(100, 10))
    capped, _ = decide(spec, obs(0, small, fallback_usd_today=50.0), OLD_STATE, TUE_NIGHT)
    assert (capped.desired_replicas, capped.reason) == (1, Reason.FALLBACK_BUDGET_CAP)


def test_override_off_wins_over_window_and_demand() -> None:
    spec = make_spec(
        schedule={
            "timezone": "Europe/Berlin",
            "windows": make_spec().schedule.windows,
            "overrides": [{"mode": "off", "until": "2026-12-02T00:00:00+01:00"}],
        }
    )
    decision, _ = decide(spec, obs(2, sample(TUE_NOON, 50)), OLD_STATE, TUE_NOON)
    assert (decision.desired_replicas, decision.reason) == (0, Reason.OVERRIDE_OFF)


def test_override_keep_warm_holds_replicas_at_night() -> None:
    spec = make_spec(
        schedule={
            "timezone": "Europe/Berlin",
            "overrides": [{"mode": "keepWarm", "replicas": 2, "until": "2026-12-02T06:00:00Z"}],
        }
    )
    state = replace(OLD_STATE, last_busy_at=TUE_NIGHT - dt.timedelta(hours=2))
    decision, _ = decide(spec, obs(2, sample(TUE_NIGHT, 0)), state, TUE_NIGHT)
    assert (decision.desired_replicas, decision.reason) == (2, Reason.OVERRIDE_KEEP_WARM)


def test_kv_cache_target_scales_up() -> None:
    spec = make_spec(demand={"targetKvCacheUsage": 0.5})
    demand = DemandSample(observed_at=TUE_NOON, waiting=0, running=4, kv_cache_usage=0.9)
    decision, _ = decide(spec, obs(2, demand), OLD_STATE, TUE_NOON)
    assert (decision.desired_replicas, decision.reason) == (4, Reason.KV_CACHE_HIGH)


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        decide(make_spec(), obs(0, None), PolicyState(), dt.datetime(2026, 12, 1, 12, 0))


def test_inputs_are_not_mutated_and_state_is_new() -> None:
    spec = make_spec()
    before = spec.model_dump()
    state = OLD_STATE
    observation = obs(1, sample(TUE_NOON, 30))
    _, new_state = decide(spec, observation, state, TUE_NOON)
    assert spec.model_dump() == before
    assert state == OLD_STATE and new_state is not state
    assert new_state.recommendations[-1] == (TUE_NOON, 3)


def test_capacity_follows_the_measured_rate_while_money_waits_for_the_average() -> None:
    # The smoothed rate is still near zero after a jump to 15,000 tok/s; replicas follow the jump
    # (without a fallback there is nothing to price), as the HPA follows utilisation.
    spec = make_spec(fallback={"providers": []})
    before = replace(OLD_STATE, rates=(0.0, 0.0, 0.0), rates_at=TUE_NOON - dt.timedelta(seconds=15))
    decision, state = decide(spec, obs(1, sample(TUE_NOON, 2, tokens=(14000, 1000))), before, TUE_NOON)
    assert (decision.desired_replicas, decision.reason) == (3, Reason.TOKENS_HIGH)
    assert state.rates is not None and sum(state.rates[:2]) < 1000  # what gets priced moved only a little


@pytest.mark.parametrize(
    ("hour_tokens", "want", "reason"),
    [
        # The last hour offered 1,000 tok/s: $10.80 of API spend an hour, worth the $1.64 GPU.
        pytest.param(1000.0, 1, Reason.STEADY, id="quiet-minutes-of-a-busy-hour-keep-it"),
        # The hour was as quiet as the minutes: 100 tok/s is $1.08 an hour, under the GPU's price.
        pytest.param(100.0, 0, Reason.COST_OVERFLOW, id="a-quiet-hour-releases-it"),
    ],
)
def test_a_running_replica_is_priced_on_the_last_hour(hour_tokens: float, want: int, reason: Reason) -> None:
    spec = make_spec(billing={"granularity": "second", "minimumBilledSeconds": 60})
    now = TUE_NIGHT
    just_before = now - dt.timedelta(seconds=15)
    # Twelve 5-minute buckets of the last hour at `hour_tokens` tok/s (prompt tokens only).
    buckets = tuple((now - dt.timedelta(minutes=5 * k), hour_tokens * 300, 300.0) for k in range(12, 0, -1))
    state = replace(OLD_STATE, last_busy_at=now, rates=(100.0, 0.0, 0.0), rates_at=just_before, keep_buckets=buckets)
    decision, new_state = decide(spec, obs(1, sample(now, 1, tokens=(100, 0))), state, now)
    assert (decision.desired_replicas, decision.reason) == (want, reason)
    # The 15 s just measured went into the current bucket; the bucket that started an hour ago is gone.
    assert new_state.keep_buckets[-1] == (now, 100 * 15.0, 15.0)
    assert len(new_state.keep_buckets) == 12


def test_after_a_busy_hour_a_trickle_releases_the_replica_within_the_hour() -> None:
    # An hour at 3,000 tok/s, then 20 tok/s (a request always queued, so the idle grace never applies):
    # the hour's mean falls under the GPU's price (about 137 tok/s at these prices) once fewer than 3
    # of its 60 minutes were busy.
    spec = make_spec(billing={"granularity": "second", "minimumBilledSeconds": 60})
    state = replace(OLD_STATE, started_at=TUE_NIGHT - dt.timedelta(hours=3))
    busy_until = TUE_NIGHT - dt.timedelta(hours=1)
    released = None
    for step in range(0, 3 * 3600, 15):
        now = busy_until - dt.timedelta(hours=1) + dt.timedelta(seconds=step)
        tokens = (3000.0, 0.0) if now < busy_until else (20.0, 0.0)
        decision, state = decide(spec, obs(1, sample(now, 1, tokens=tokens)), state, now)
        if decision.desired_replicas == 0:
            released = (now - busy_until).total_seconds() / 60
            break
    assert released is not None and 55 <= released <= 62, released


def test_one_reading_after_a_gap_does_not_stand_for_the_whole_gap() -> None:
    # A reading at 3,000 tok/s, three hours without data (holds), then 20 tok/s: the hour's mean is
    # the 5 minutes credited to the first reading after the gap and the readings since, not 3 hours
    # of 3,000 tok/s.
    spec = make_spec(billing={"granularity": "second", "minimumBilledSeconds": 60})
    start = TUE_NIGHT - dt.timedelta(hours=4)
    state = replace(OLD_STATE, started_at=start - dt.timedelta(hours=1))
    _, state = decide(spec, obs(1, sample(start, 1, tokens=(3000.0, 0.0))), state, start)
    after_gap = start + dt.timedelta(hours=3)
    _, state = decide(spec, obs(1, sample(after_gap, 1, tokens=(20.0, 0.0))), state, after_gap)
    assert [b[2] for b in state.keep_buckets] == [300.0]
    assert state.keep_buckets[0][1] == pytest.approx(20.0 * 300)


def test_buckets_dated_after_now_are_dropped_when_the_clock_goes_back() -> None:
    spec = make_spec(billing={"granularity": "second", "minimumBilledSeconds": 60})
    future = TUE_NIGHT + dt.timedelta(hours=2)
    state = replace(OLD_STATE, keep_buckets=((future, 1000.0 * 300, 300.0),), rates_at=TUE_NIGHT)
    _, state = decide(spec, obs(1, sample(TUE_NIGHT, 1, tokens=(20.0, 0.0))), state, TUE_NIGHT)
    assert all(b[0] <= TUE_NIGHT for b in state.keep_buckets)


@pytest.mark.parametrize(("granularity", "margin"), [("second", 0), ("minute", 0), ("minute", 5)])
def test_a_margin_below_one_tick_still_releases_the_replica(granularity: str, margin: int) -> None:
    # Ticking every 5 s from an arbitrary offset, an idle replica past its minimum billed time must go:
    # with the margin taken literally, per-second billing always has a fraction of a second "paid" left.
    spec = make_spec(billing={"granularity": granularity, "releaseMarginSeconds": margin, "minimumBilledSeconds": 0})
    state = replace(OLD_STATE, last_busy_at=TUE_NIGHT - dt.timedelta(hours=1))
    started = TUE_NIGHT - dt.timedelta(minutes=30, seconds=0.3)
    released = []
    for tick in range(0, 61, 5):
        now = TUE_NIGHT + dt.timedelta(seconds=tick + 0.7)
        decision, state = decide(spec, obs(1, sample(now, 0), starts=(started,)), state, now)
        released.append(decision.desired_replicas == 0)
    assert any(released)


def _busy_hour(now: dt.datetime, tokens_per_second: float, overflowed: float = 0.05) -> PolicyState:
    """Twelve 5-minute buckets of the last hour at `tokens_per_second`, the share `overflowed` of it sent
    to the fallback with a replica Ready; rates last read 15 s ago."""
    starts = [now - dt.timedelta(minutes=5 * k) for k in range(12, 0, -1)]
    return replace(
        OLD_STATE,
        last_busy_at=now,
        rates=(tokens_per_second, 0.0, 0.0),
        rates_at=now - dt.timedelta(seconds=15),
        keep_buckets=tuple((t, tokens_per_second * 300, 300.0) for t in starts),
        overflow_buckets=tuple((t, overflowed * tokens_per_second * 300, 300.0) for t in starts),
    )


@pytest.mark.parametrize(
    ("mean_field", "want", "reason"),
    [
        # A quiet minute (1,000 tok/s) of an hour at 4,000: the current rate asks for one replica, the
        # hour's mean at 1,500 per replica for three, two of them bought in one step (maxScaleUpStep 2).
        pytest.param(1500.0, 3, Reason.MEAN_HEADROOM, id="sized-on-the-hour-with-headroom"),
        pytest.param(None, 1, Reason.QUEUE_LOW, id="off-by-default-follows-the-current-rate"),
    ],
)
def test_the_hours_mean_sizes_replicas_ahead_of_the_bursts(mean_field: float | None, want: int, reason: Reason) -> None:
    spec = make_spec(demand={"replicaMeanTokensPerSecond": mean_field})
    decision, _ = decide(spec, obs(1, sample(TUE_NOON, 0, tokens=(1000, 0))), _busy_hour(TUE_NOON, 4000), TUE_NOON)
    assert (decision.desired_replicas, decision.reason) == (want, reason), decision.message
    if mean_field is not None:
        assert "last hour's mean" in decision.message and decision.detail("hour_mean_tokens_per_second")
        assert decision.detail("hour_overflow_share") == pytest.approx(0.05, rel=0.01)


@pytest.mark.parametrize(
    ("overflowed", "want"),
    [
        pytest.param(0.019, 1, id="a-smooth-hour-gets-no-headroom"),
        pytest.param(0.021, 3, id="over-two-percent-overflowed-is-bursty"),
    ],
)
def test_headroom_only_for_a_load_that_overflows(overflowed: float, want: int) -> None:
    spec = make_spec(demand={"replicaMeanTokensPerSecond": 1500})
    state = _busy_hour(TUE_NOON, 4000, overflowed)
    decision, _ = decide(spec, obs(1, sample(TUE_NOON, 0, tokens=(1000, 0))), state, TUE_NOON)
    assert decision.desired_replicas == want, decision.message


def test_the_overflow_of_each_reading_goes_into_the_hours_buckets() -> None:
    spec = make_spec(demand={"replicaMeanTokensPerSecond": 1500})
    state = replace(OLD_STATE, rates=(1000.0, 0.0, 0.0), rates_at=TUE_NOON - dt.timedelta(seconds=15))
    demand = replace(sample(TUE_NOON, 0, tokens=(1000, 0)), overflow_tokens_per_second=300.0)
    _, state = decide(spec, obs(1, demand), state, TUE_NOON)
    assert state.keep_buckets == ((TUE_NOON, 1000.0 * 15, 15.0),)
    assert state.overflow_buckets == ((TUE_NOON, 300.0 * 15, 15.0),)


def test_quiet_minutes_of_a_busy_hour_keep_the_mean_sized_replicas() -> None:
    # Three replicas, the last minute almost idle: the hour at 4,000 tok/s still asks for three.
    spec = make_spec(demand={"replicaMeanTokensPerSecond": 1500})
    state = replace(_busy_hour(TUE_NOON, 4000), recommendations=())
    decision, _ = decide(spec, obs(3, sample(TUE_NOON, 0, tokens=(50, 0))), state, TUE_NOON)
    assert (decision.desired_replicas, decision.reason) == (3, Reason.STEADY), decision.message


def test_the_mean_buys_only_replicas_that_pay_for_themselves() -> None:
    # At night an hour at 100 tok/s would ask for two replicas at 50 tok/s each, but 100 tok/s is $1.08
    # of API spend an hour against the GPU's $1.64: the fallback serves it.
    spec = make_spec(
        demand={"replicaMeanTokensPerSecond": 50}, billing={"granularity": "second", "minimumBilledSeconds": 60}
    )
    state = replace(_busy_hour(TUE_NIGHT, 100), last_busy_at=TUE_NIGHT - dt.timedelta(hours=1))
    decision, _ = decide(spec, obs(0, sample(TUE_NIGHT, 1, tokens=(100, 0))), state, TUE_NIGHT)
    assert (decision.desired_replicas, decision.reason) == (0, Reason.COST_OVERFLOW), decision.message


def test_a_new_replica_sized_on_the_mean_is_credited_with_its_share_of_it() -> None:
    spec = make_spec(demand={"replicaMeanTokensPerSecond": 1500})
    demand = sample(TUE_NOON, 0, tokens=(1000, 0))
    # The mean asks for ceil(4000 / 1500) = 3 replicas: the second carries half of the mean.
    check = replica_worth(spec, demand, 1, current=1, keep_tokens_per_second=4000.0, headroom_replicas=3)
    assert check is not None and check.worth_it and check.absorbed_tokens_per_second == pytest.approx(2000.0)
    # Beyond what the mean asks for, a fourth replica gets no such credit.
    fourth = replica_worth(spec, demand, 3, current=1, keep_tokens_per_second=4000.0, headroom_replicas=3)
    assert fourth is not None and not fourth.worth_it and fourth.absorbed_tokens_per_second == 0.0
    # Without headroom the same replica absorbs only what exceeds the first one's capacity: nothing.
    plain = replica_worth(spec, demand, 1, current=1, keep_tokens_per_second=4000.0)
    assert plain is not None and not plain.worth_it


@pytest.mark.parametrize(
    ("mean", "want"),
    [(None, 0), (0.0, 0), (1.0, 1), (1500.0, 1), (1500.0 * (1 + 1e-12), 1), (1500.1, 2), (4000.0, 3)],
)
def test_mean_sized_replicas(mean: float | None, want: int) -> None:
    assert mean_sized_replicas(make_spec(demand={"replicaMeanTokensPerSecond": 1500}), mean) == want
    assert mean_sized_replicas(make_spec(), 4000.0) == 0  # off without the field
