"""The simulated gateway routed on the shipped gateway's estimates (`controller/sim/estimates.py`)."""

from __future__ import annotations

import datetime as dt

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.sim.engine import FallbackModel, PoolEngine, ReplicaModel
from controller.sim.estimates import GatewayEstimate
from controller.sim.workload import Workload
from policies.cost import ApiPrice
from policies.overflow import Routing
from policies.spec import Demand

START = dt.datetime(2024, 5, 13, tzinfo=dt.UTC)
REPLICA = ReplicaModel(10_000.0, 2_500.0, 1e12, 256)
"""Prefill at 10,000 and decode at 2,500 tokens/s, a first token the moment it is prefilled."""
SPEEDS = Demand(
    replica_tokens_per_second=6000, replica_prefill_tokens_per_second=10_000, replica_decode_tokens_per_second=2500
)
"""A pool that gives the gateway REPLICA's own speeds."""
OBJECTIVE = {"max_wait_seconds": 2.0, "objective_ttft_seconds": 2.0}


def _engine(workload: Workload, replica: ReplicaModel, demand: Demand | None, **kw: object) -> PoolEngine:
    return PoolEngine(
        workload,
        replica,
        FallbackModel(ttft_seconds=0.75),
        routing=Routing.OVERFLOW,
        price=ApiPrice(3.0, 15.0),
        estimate=GatewayEstimate(demand) if demand is not None else None,
        **kw,  # type: ignore[arg-type]
    )


def _run(engine: PoolEngine, ready: int, horizon: float) -> PoolEngine:
    engine.set_ready(ready)
    for t in np.arange(1.0, horizon, 1.0):
        engine.run_until(float(t))
    engine.finish(horizon)
    return engine


def test_the_books_drain_normal_first_cap_at_what_is_in_flight_and_learn_after_use() -> None:
    est = GatewayEstimate(Demand(replica_tokens_per_second=100))
    est.send(False, 100, 0, first_token_at=0.0, served_by=1.0)  # (100 prompt + 256 expected) / 100 = 3.56 s
    assert est.normal == 3.56 and est.mean_completion == 256 + 0.05 * (0 - 256)
    # Its own estimate used the mean before it learned from this one.
    est.send(True, 44, 0, first_token_at=0.0, served_by=0.5)
    assert abs(est.late - (44 + 243.2) / 100) < 1e-12
    # One replica for 1 s drains the normal lane first; the late lane waits.
    est.advance(1.0, 1, served_normal=0.0, served_late=0.0)
    assert abs(est.normal - 2.56) < 1e-12 and abs(est.late - 2.872) < 1e-12
    # The normal request was served (its lane passed its end): what is left of its estimate goes.
    est.advance(1.0, 1, served_normal=1.0, served_late=0.0)
    assert est.normal == 0.0 and abs(est.late - 2.872) < 1e-12
    # Then the late lane drains, and once served it is capped to nothing in flight.
    est.advance(2.0, 1, served_normal=1.0, served_late=0.0)
    assert abs(est.late - 1.872) < 1e-12
    est.advance(2.0, 1, served_normal=1.0, served_late=0.5)
    assert est.late == 0.0
    # No Ready replica: nothing drains.
    est.send(False, 100, 0, first_token_at=1.0, served_by=2.0)
    before = est.normal
    est.advance(10.0, 0, served_normal=1.0, served_late=0.5)
    assert est.normal == before


def test_the_books_never_fall_below_the_requests_still_waiting_for_a_first_token() -> None:
    # Three requests at once, each estimated at 0.3 s (1,000 prompt tokens, 0.1 s of prefill, and the
    # starting mean of 256 outputs at 1,280 tokens/s, 0.2 s), each truly 5 s (its outputs are far longer).
    demand = Demand(
        replica_tokens_per_second=6000, replica_prefill_tokens_per_second=10_000, replica_decode_tokens_per_second=1280
    )
    est = GatewayEstimate(demand)
    for k in range(3):
        est.send(False, 1000, 256, first_token_at=5.0 * k + 0.1, served_by=5.0 * (k + 1))
    assert abs(est.normal - 0.9) < 1e-12
    # 2 s at one replica drains the 0.9 s estimate away, but the engine has served 2 s of the first one's
    # true 5: the other two still wait for a first token, so 0.6 s less the prefill (0.1 s) of the one
    # that has waited longest (it may be prefilling) is surely ahead.
    est.advance(2.0, 1, served_normal=2.0, served_late=0.0)
    assert abs(est.normal - 0.5) < 1e-12
    # The second has its first token (5.1 of served work passed); the third waits: 0.3 - 0.1.
    est.advance(6.0, 1, served_normal=6.0, served_late=0.0)
    assert abs(est.normal - 0.2) < 1e-12
    # All have their first tokens, the third is still decoding: nothing is known to be ahead any more.
    est.advance(11.0, 1, served_normal=11.0, served_late=0.0)
    assert est.normal == 0.0
    # The floor is never above what is in flight: a request that waits alone is its own head.
    est.send(True, 1000, 256, first_token_at=0.1, served_by=5.0)
    est.advance(20.0, 1, served_normal=15.0, served_late=0.0)
    assert abs(est.late - 0.2) < 1e-12


def test_the_normal_lanes_work_ahead_adds_the_spread_of_the_outputs_in_flight() -> None:
    est = GatewayEstimate(SPEEDS)
    est.send(False, 0, 256, first_token_at=0.0, served_by=1.0)  # at the mean: nothing spread yet
    assert est.var_completion == 0.0 and est.normal_ahead == est.normal
    for k, output in enumerate((0, 512, 0)):
        est.send(False, 0, output, first_token_at=0.0, served_by=2.0 + k)
    # Four in flight: one standard deviation of their outputs' sum, at the decode speed, is added.
    margin = (4 * est.var_completion) ** 0.5 / 2500
    assert est.var_completion > 0 and abs(est.normal_ahead - (est.normal + margin)) < 1e-12
    est.advance(0.0, 1, served_normal=5.0, served_late=0.0)  # all served: nothing ahead, no margin
    assert est.normal_ahead == 0.0
    # The late lane carries none: it is served only when the normal lane is empty.
    est.send(True, 0, 512, first_token_at=0.0, served_by=1.0)
    assert est.normal_ahead == 0.0


def test_in_a_burst_outputs_that_have_varied_keep_fewer_requests_in_the_normal_lane() -> None:
    # Twenty lone requests, then a burst of twenty at once, all with empty prompts, on one replica with a
    # 2 s objective. The burst's outputs are 256 tokens, 0.1024 s each at 2,500 tokens/s: with nothing
    # learned but the starting mean all twenty fit the normal lane (19 x 0.1024 <= 2). When the lone ones
    # generated 0 and 512 tokens in turn (ending on 0, so the learned mean is below 256 and the books
    # alone would take at least as many), the spread of the outputs ahead counts too and some go late.
    lone = np.arange(20) * 10.0

    def workload_of(outputs: list[int]) -> Workload:
        return Workload(
            arrival_s=np.concatenate((lone, np.full(20, 300.0))),
            input_tokens=np.zeros(40, dtype=np.int64),
            output_tokens=np.asarray([*outputs, *[256] * 20], dtype=np.int64),
            start=START,
            duration_s=400.0,
        )

    steady, varied = (
        _run(_engine(workload_of(outputs), REPLICA, SPEEDS, **OBJECTIVE), 1, 400.0)
        for outputs in ([256] * 20, [512, 0] * 10)
    )
    burst = slice(20, 40)
    in_normal = [int(np.sum((e.route[burst] == 1) & ~e.late[burst])) for e in (steady, varied)]
    assert in_normal[0] == 20
    assert in_normal[1] < 20


def test_outputs_longer_than_the_gateway_expects_keep_the_normal_lane_within_a_bound() -> None:
    # One replica; a request every 0.25 s for 30 s, each 1,000 prompt tokens (0.1 s of prefill) and 1,000
    # outputs (0.4 s at 2,500 tokens/s): 2 s of work per second, twice what the replica serves. The
    # gateway starts from a mean of 256 outputs (0.2024 s per request) and learns upwards. Its drain
    # runs ahead of the true work, but a request enters the normal lane only while the books (at least
    # what waits for a first token, less one prefill) leave its 1.9 s: so the estimates of the requests
    # waiting ahead of it add up to at most 2.0 s, their true work to at most 0.5 / 0.2024 times that,
    # and the one being decoded adds at most its 0.5 s. Every normal-lane first token comes within
    # 0.5 + 2.0 x 0.5 / 0.2024 + 0.1 s of prefill (5.54 s; 2.85 s here). Without the floor, the drain
    # alone lets normal-lane first tokens come 7.35 s late.
    n = 120
    workload = Workload(
        arrival_s=np.arange(n) * 0.25,
        input_tokens=np.full(n, 1000, dtype=np.int64),
        output_tokens=np.full(n, 1000, dtype=np.int64),
        start=START,
        duration_s=60.0,
    )
    engine = _run(_engine(workload, REPLICA, SPEEDS, **OBJECTIVE), 1, 60.0)
    normal = (engine.route == 1) & ~engine.late
    bound = 0.5 + 2.0 * 0.5 / (0.1 + 256 / 2500) + 0.1
    assert float(engine.ttft[normal].max()) <= bound
    assert int(normal.sum()) >= 30, "the replica serves about half of them on time"
    true = _run(_engine(workload, REPLICA, None, **OBJECTIVE), 1, 60.0)
    assert float(true.ttft[(true.route == 1) & ~true.late].max()) <= 2.0


@st.composite
def _exact_cases(draw: st.DrawFn) -> tuple[list[float], list[int], int, float | None, float, bool]:
    # Eighths of a second and prompts in eighths of the prefill speed: exact arithmetic, ties kept.
    n = draw(st.integers(1, 40))
    arrivals = sorted(draw(st.lists(st.integers(0, 8 * 30), min_size=n, max_size=n)))
    prompts = draw(st.lists(st.integers(0, 24), min_size=n, max_size=n))
    return (
        [a / 8 for a in arrivals],
        prompts,
        draw(st.sampled_from([1, 2, 4])),
        draw(st.sampled_from([None, 0.5, 2.0, 3.0])),
        draw(st.sampled_from([0.0, 1.0, 2.5])),
        draw(st.booleans()),
    )


@settings(max_examples=200, deadline=None)
@given(_exact_cases())
def test_an_estimate_that_knows_the_replica_routes_as_the_true_work_does(
    case: tuple[list[float], list[int], int, float | None, float, bool],
) -> None:
    # Every request generates 256 tokens, the gateway's starting mean, so its mean never moves; with the
    # replica's own speeds the estimate is the true work, and every route, lane and first token agree.
    arrivals, prompts, ready, objective, max_wait, fallback_open = case
    workload = Workload(
        arrival_s=np.asarray(arrivals, dtype=np.float64),
        input_tokens=np.asarray(prompts, dtype=np.int64),
        output_tokens=np.full(len(arrivals), 256, dtype=np.int64),
        start=START,
        duration_s=40.0,
    )
    replica = ReplicaModel(8.0, 2048.0, 1e12, 256)  # a prompt token 1/8 s, the 256 outputs 1/8 s in all
    knows = Demand(
        replica_tokens_per_second=8, replica_prefill_tokens_per_second=8, replica_decode_tokens_per_second=2048
    )
    kw = {"max_wait_seconds": max_wait, "objective_ttft_seconds": objective, "has_fallback": fallback_open}
    true = _run(_engine(workload, replica, None, **kw), ready, 40.0)
    estimated = _run(_engine(workload, replica, knows, **kw), ready, 40.0)
    assert estimated.route.tolist() == true.route.tolist()
    assert estimated.late.tolist() == true.late.tolist()
    assert np.array_equal(estimated.ttft, true.ttft)


def test_in_a_burst_a_blended_rate_sees_more_work_ahead_than_the_replicas_speeds() -> None:
    # Twenty 2,000-token prompts at once on one replica, each generating 256 tokens (the gateway's starting
    # mean, so it never moves): 0.2 s of prefill and 0.3024 s of work each at 10k/2.5k tokens/s. The normal
    # lane takes a request while the work ahead leaves it 2 s less its own prefill: six (5 x 0.3024 <=
    # 1.8); the late lane one more while the wait is within 2 s (6 x 0.3024); the rest go to the fallback.
    # The blend counts 2,256 / 6,000 = 0.376 s of work and 0.333 s of prefill: five in the normal lane
    # (4 x 0.376 <= 1.667), one late (5 x 0.376 <= 2), fourteen away.
    workload = Workload(
        arrival_s=np.zeros(20),
        input_tokens=np.full(20, 2000, dtype=np.int64),
        output_tokens=np.full(20, 256, dtype=np.int64),
        start=START,
        duration_s=60.0,
    )
    runs = [
        _run(_engine(workload, REPLICA, demand, **OBJECTIVE), 1, 60.0)
        for demand in (None, SPEEDS, Demand(replica_tokens_per_second=6000))
    ]
    assert [int(np.sum((e.route == 1) & ~e.late)) for e in runs] == [6, 6, 5]
    assert [int(np.sum(e.late)) for e in runs] == [1, 1, 1]
    assert [int(np.sum(e.route == 2)) for e in runs] == [13, 13, 14]
