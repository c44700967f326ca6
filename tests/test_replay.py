"""The replay of the last hour through every count (`policies.replay`), and the policy's use of it.

The replay's shadows are checked against the simulator's own serving model: the engine run with `k`
replicas Ready throughout must leave exactly the requests the replay says `k` leaves unsaved.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import random
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.sim.engine import FallbackModel, PoolEngine, ReplicaModel
from controller.sim.runner import not_on_time
from controller.sim.workload import Workload
from policies.overflow import Routing
from policies.replay import Replay, ReplayRequest, cheapest_count, request_terms
from policies.scaling import decide
from policies.spec import GPUPoolSpec
from policies.types import DemandSample, Observation, PolicyState, Reason

SPEC = GPUPoolSpec.model_validate(
    {
        "target": {"deployment": "vllm", "maxReplicas": 4},
        "demand": {
            "replicaTokensPerSecond": 6000,
            "maxScaleUpStep": 2,
            "replicaPrefillTokensPerSecond": 10000,
            "replicaDecodeTokensPerSecond": 2500,
        },
        "fallback": {
            "providers": [{"name": "api", "baseUrl": "http://127.0.0.1:9/v1", "model": "m"}],
            "maxQueueWaitSeconds": 2,
        },
        "objective": {"ttftSeconds": 2, "deferLateRequests": True},
        "billing": {"gpuHourlyUsd": 1.6438},
        "coldStartSeconds": 180,
    }
)
START = dt.datetime(2026, 12, 1, 9, tzinfo=dt.UTC)


def _workload(seed: int, n: int, span: float) -> Workload:
    rng = np.random.default_rng(seed)
    # Bursts: a few dense clusters over a light background, so every count leaves something unsaved.
    arrivals = np.sort(
        np.concatenate([rng.uniform(0, span, n // 2), rng.uniform(0, 5, n - n // 2) + rng.uniform(0, span, 1)])
    )
    prompts = rng.integers(1, 6000, n)
    outputs = rng.integers(1, 800, n)
    return Workload(arrivals, prompts, outputs, START, span + 60)


def _fed(workload: Workload, spec: GPUPoolSpec = SPEC) -> Replay:
    work, prefill, usd = request_terms(spec.demand, spec.fallback.price, workload.input_tokens, workload.output_tokens)
    replay = Replay(spec.target.max_replicas, spec.objective.ttft_seconds, window_seconds=1e9, lag_seconds=0)
    replay.begin(0.0)
    replay.feed(workload.arrival_s.tolist(), work.tolist(), prefill.tolist(), usd.tolist())
    return replay


@pytest.mark.parametrize("seed", range(6))
def test_each_count_leaves_unsaved_what_the_simulator_leaves_with_that_many_ready(seed: int) -> None:
    workload = _workload(seed, 400, 600.0)
    replay = _fed(workload)
    costs = replay.costs(0.0)  # free replicas: what is left is the fallback price of the unsaved
    assert costs is not None
    _, _, usd = request_terms(SPEC.demand, SPEC.fallback.price, workload.input_tokens, workload.output_tokens)
    unsaved_by_k = []
    for k in range(SPEC.target.max_replicas + 1):
        engine = PoolEngine(
            workload,
            ReplicaModel(10_000, 2_500),
            FallbackModel(),
            routing=Routing.OVERFLOW,
            max_wait_seconds=2.0,
            price=SPEC.fallback.price,
            objective_ttft_seconds=2.0,
        )
        engine.set_ready(k)
        engine.finish(workload.duration_s)
        unsaved = not_on_time(engine.route, engine.ttft, 2.0)
        unsaved_by_k.append(float(usd[unsaved].sum()))
        assert costs[k] == pytest.approx(unsaved_by_k[-1], rel=1e-9, abs=1e-12), k
    # The workload is bursty enough that the counts differ: the check above compared something.
    assert unsaved_by_k[0] > unsaved_by_k[1] > 0
    assert unsaved_by_k == sorted(unsaved_by_k, reverse=True)


def test_costs_add_each_counts_gpu_time_over_the_time_covered() -> None:
    replay = Replay(3, 2.0, lag_seconds=0)
    assert replay.costs(1.0) is None  # nothing seen yet: unknown, not zero
    replay.begin(100.0)
    replay.serve_to(100.0 + 1800)
    costs = replay.costs(2.0)
    assert costs == pytest.approx((0.0, 1.0, 2.0, 3.0))  # half an hour, no requests
    replay.serve_to(100.0 + 7200)
    assert replay.costs(2.0) == pytest.approx((0.0, 2.0, 4.0, 6.0))  # capped at the hour's window


def test_the_window_forgets_what_is_older_than_an_hour() -> None:
    replay = Replay(1, 2.0, lag_seconds=0)
    replay.begin(0.0)
    # One request no replica could serve on time (its own prefill is over the objective).
    replay.feed([10.0], [5.0], [3.0], [0.25])
    replay.serve_to(1000.0)
    costs = replay.costs(0.0)
    assert costs == pytest.approx((0.25, 0.25))
    replay.serve_to(10.0 + 3600 + 61)
    assert replay.costs(0.0) == pytest.approx((0.0, 0.0))


def test_reported_requests_wait_out_the_lag_and_come_in_arrival_order() -> None:
    workload = _workload(7, 300, 900.0)
    work, prefill, usd = request_terms(SPEC.demand, SPEC.fallback.price, workload.input_tokens, workload.output_tokens)
    requests = [ReplayRequest(*row) for row in zip(workload.arrival_s.tolist(), work, prefill, usd, strict=True)]
    lagged = Replay(4, 2.0, window_seconds=1e9, lag_seconds=120.0)
    lagged.begin(0.0)
    # Reported out of order, each within 100 s of its arrival, in batches every 30 s.
    rng = random.Random(3)
    reported = sorted(requests, key=lambda r: r.arrived_at + rng.uniform(0, 100))
    t = 0.0
    while reported or t < 1200:
        t += 30.0
        due = [r for r in reported if r.arrived_at + 100 <= t]
        reported = [r for r in reported if r.arrived_at + 100 > t]
        lagged.add(due)
        lagged.advance(t)
    assert lagged.replayed == len(requests)
    direct = _fed(workload)
    direct.serve_to(t - 120.0)
    assert lagged.costs(1.0) == pytest.approx(direct.costs(1.0), rel=1e-12)


def test_a_request_reported_too_late_is_replayed_at_the_clock_and_one_from_before_the_start_dropped() -> None:
    replay = Replay(1, 2.0, lag_seconds=10.0)
    replay.begin(50.0)
    replay.add([ReplayRequest(40.0, 1.0, 0.1, 1.0)])  # before the replay began: its queue is unknown
    replay.advance(100.0)
    assert replay.replayed == 0 and replay.clock == 90.0
    # Two requests arriving at 60 s, reported after the clock passed 90 s: replayed at 90 s, in order.
    replay.add([ReplayRequest(60.0, 2.5, 0.1, 1.0), ReplayRequest(60.5, 1.0, 0.1, 2.0)])
    replay.advance(100.0)  # the clock has not moved: nothing to do yet
    assert replay.replayed == 0
    replay.advance(101.0)
    assert replay.replayed == 2
    # Both at 90 s: with no replica both are unsaved ($3); with one, the first is on time and the second
    # finds its 2.5 s of work ahead, over the 1.9 s its prefill leaves of the objective ($2).
    costs = replay.costs(0.0)
    assert costs == pytest.approx((3.0, 2.0))


def test_cheapest_count_takes_the_fewer_replicas_on_a_tie() -> None:
    assert cheapest_count((3.0, 1.0, 1.0, 2.0)) == 1
    assert cheapest_count((0.0, 0.0)) == 0
    with pytest.raises(ValueError):
        cheapest_count(())


def test_bad_arguments_are_refused() -> None:
    for kwargs in ({"max_replicas": -1}, {"objective_seconds": 0.0}):
        args = {"max_replicas": 2, "objective_seconds": 2.0, **kwargs}
        with pytest.raises(ValueError):
            Replay(args["max_replicas"], args["objective_seconds"])
    with pytest.raises(ValueError):
        Replay(2, 2.0, bucket_seconds=120.0, window_seconds=60.0)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 4))
def test_more_replicas_never_leave_more_unsaved(seed: int, max_replicas: int) -> None:
    spec = SPEC.model_copy(update={"target": SPEC.target.model_copy(update={"max_replicas": max_replicas})})
    costs = _fed(_workload(seed, 120, 120.0), spec).costs(0.0)
    assert costs is not None
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(costs))


# The policy's use of it.


def _decide(
    replay_usd: tuple[float, ...] | None,
    current: int = 1,
    *,
    idle_s: float | None = None,
    spec: GPUPoolSpec = SPEC,
) -> tuple[int, Reason, str]:
    now = START
    demand = DemandSample(
        observed_at=now,
        waiting=0,
        running=0 if idle_s is not None else 1,
        input_tokens_per_second=0.0 if idle_s is not None else 100.0,
        output_tokens_per_second=0.0 if idle_s is not None else 30.0,
        overflow_tokens_per_second=0.0,
        replay_usd=replay_usd,
    )
    obs = Observation(current_replicas=current, ready_replicas=current, demand=demand)
    last_busy = now - dt.timedelta(seconds=idle_s or 0.0)
    state = PolicyState(started_at=now - dt.timedelta(hours=2), last_busy_at=last_busy)
    decision, _ = decide(spec, obs, state, now)
    return decision.desired_replicas, decision.reason, decision.message


def test_the_policy_keeps_the_count_the_replay_found_cheapest() -> None:
    desired, reason, message = _decide((9.0, 4.0, 3.0, 3.5, 5.0))
    assert (desired, reason) == (2, Reason.REPLAY)
    assert "replayed" in message and "$3.00" in message
    # The step limit still holds: from 1 replica by at most maxScaleUpStep.
    desired, reason, _ = _decide((20.0, 15.0, 10.0, 5.0, 1.0))
    assert desired == 1 + SPEC.demand.max_scale_up_step
    # The cost check does not undo it: the replay has priced its count against the fallback already.
    assert _decide(None, current=2)[:2] == (1, Reason.QUEUE_LOW)
    assert _decide((9.0, 4.0, 3.0, 3.5, 5.0), current=2)[:2] == (2, Reason.REPLAY)


def test_the_replay_does_not_hold_replicas_through_an_idle_grace_of_silence() -> None:
    costs = (9.0, 4.0, 3.0, 3.5, 5.0)
    grace = SPEC.demand.idle_grace_seconds
    # Idle, but not yet for the grace: the replay still holds its count.
    assert _decide(costs, current=2, idle_s=grace - 30)[:2] == (2, Reason.REPLAY)
    # Idle for the grace: the bursts it priced are over, and the pool goes to zero as without it.
    desired, reason, _ = _decide(costs, current=2, idle_s=grace + 1)
    assert (desired, reason) == (0, Reason.IDLE_TO_ZERO)


def test_without_a_replay_or_with_zero_cheapest_the_policy_is_unchanged() -> None:
    base = _decide(None)
    assert base[1] is not Reason.REPLAY
    assert _decide((0.0, 1.0, 2.0, 3.0, 4.0)) == base
    assert math.isfinite(base[0])


def test_the_demand_sample_carries_the_replay_through_smoothing() -> None:
    sample = DemandSample(observed_at=START, waiting=0, running=0, replay_usd=(1.0, 2.0))
    assert replace(sample, waiting=1).replay_usd == (1.0, 2.0)


def test_replay_false_leaves_the_decision_to_the_other_rules() -> None:
    off = SPEC.model_copy(update={"demand": SPEC.demand.model_copy(update={"replay": False})})
    assert _decide((9.0, 4.0, 3.0, 3.5, 5.0), spec=off) == _decide(None, spec=off)
    assert _decide((9.0, 4.0, 3.0, 3.5, 5.0), spec=off)[1] is not Reason.REPLAY
