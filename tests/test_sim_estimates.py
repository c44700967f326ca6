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
    est.send(False, 100, 0, served_by=1.0)  # (100 prompt + 256 expected) / 100 = 3.56 s
    assert est.normal == 3.56 and est.mean_completion == 256 + 0.05 * (0 - 256)
    est.send(True, 44, 0, served_by=0.5)  # its own estimate used the mean before it learned from this one
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
    est.send(False, 100, 0, served_by=2.0)
    before = est.normal
    est.advance(10.0, 0, served_normal=1.0, served_late=0.5)
    assert est.normal == before


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
    replica = ReplicaModel(10_000.0, 2_500.0, 60.0, 256)
    kw = {"max_wait_seconds": 2.0, "objective_ttft_seconds": 2.0}
    speeds = Demand(replica_tokens_per_second=6000, replica_prefill_tokens_per_second=10_000,
                    replica_decode_tokens_per_second=2_500)  # fmt: skip
    runs = [
        _run(_engine(workload, replica, demand, **kw), 1, 60.0)
        for demand in (None, speeds, Demand(replica_tokens_per_second=6000))
    ]
    assert [int(np.sum((e.route == 1) & ~e.late)) for e in runs] == [6, 6, 5]
    assert [int(np.sum(e.late)) for e in runs] == [1, 1, 1]
    assert [int(np.sum(e.route == 2)) for e in runs] == [13, 13, 14]
