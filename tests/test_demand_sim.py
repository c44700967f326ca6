"""The simulator reads demand through the daemon's aggregate and gets what its serving model measured."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from controller.ports import NoData, PoolRef
from controller.sim.engine import FallbackModel, PoolEngine, ReplicaModel
from controller.sim.workload import Workload
from controller.sim.world import SimClock, SimMetrics
from policies.cost import ApiPrice
from policies.overflow import Routing
from policies.types import DemandSample

MONDAY = dt.datetime(2024, 5, 13, tzinfo=dt.UTC)
POOL = PoolRef("sim", "default", "vllm", "default")
# Ready replicas over the run: none at first (requests are held), then a burst that saturates one.
READY = [(0.0, 0), (240.0, 1), (900.0, 2), (1500.0, 0), (1620.0, 1)]


def _workload(seed: int) -> Workload:
    rng = np.random.default_rng(seed)
    rate = np.where(np.arange(1800) % 600 < 200, 3.0, 0.3)  # bursts every 10 minutes
    counts = rng.poisson(rate)
    arrivals = np.sort(np.concatenate([s + rng.random(c) for s, c in enumerate(counts)]))
    n = arrivals.size
    return Workload(
        arrival_s=arrivals,
        input_tokens=rng.integers(10, 4000, n).astype(np.int64),
        output_tokens=rng.integers(1, 600, n).astype(np.int64),
        start=MONDAY,
        duration_s=1800.0,
    )


def _engine(workload: Workload) -> PoolEngine:
    return PoolEngine(
        workload,
        ReplicaModel(2000.0, 60.0, 60.0, 8),
        FallbackModel(),
        routing=Routing.OVERFLOW,
        max_wait_seconds=1.0,
        price=ApiPrice(3.0, 15.0),
        objective_ttft_seconds=2.0,
    )


def _ready_at(t: float) -> int:
    return [ready for start, ready in READY if start <= t][-1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sim_metrics_through_aggregate_equal_the_serving_models_own_windowed_reading(seed: int) -> None:
    workload = _workload(seed)
    through_seam, reference = _engine(workload), _engine(workload)
    clock = SimClock(MONDAY)
    metrics = SimMetrics(through_seam, clock)
    saw = {"held": False, "saturation": False, "fallback": False}
    for i in range(121):  # 30 minutes of 15 s ticks
        t = i * 15.0
        for engine in (through_seam, reference):
            engine.run_until(t)
            engine.set_ready(_ready_at(t))
        clock.offset = t
        got = metrics.sample(POOL, clock.now())
        want = reference.sample()
        assert isinstance(got, DemandSample), got
        assert (got.waiting, got.running, got.overflow_in_flight) == (
            want.waiting,
            want.running,
            want.overflow_in_flight,
        )
        if t == 0.0:
            # Nothing observed yet: the rates are unknown, where the model's window said 0 over 1 s.
            assert got.input_tokens_per_second is None and want.input_tokens_per_second == 0.0
            continue
        # Bit for bit: counters of whole tokens over the same 60 s (or the run so far) as the model's window.
        assert got.input_tokens_per_second == want.input_tokens_per_second
        assert got.output_tokens_per_second == want.output_tokens_per_second
        assert got.overflow_tokens_per_second == want.overflow_tokens_per_second
        assert got.kv_cache_usage is None
        saw["held"] |= _ready_at(t) == 0 and got.waiting > 0
        saw["saturation"] |= (got.overflow_tokens_per_second or 0.0) > 0
        saw["fallback"] |= got.overflow_in_flight > 0
    assert all(saw.values()), saw  # the run exercised held requests, saturation and the fallback


def test_a_simulated_scrape_failure_is_no_data_and_leaves_no_baseline() -> None:
    workload = _workload(0)
    engine = _engine(workload)
    clock = SimClock(MONDAY)
    metrics = SimMetrics(engine, clock, fail_every=2)
    results = []
    for i in range(5):
        clock.offset = i * 15.0
        engine.run_until(clock.offset)
        engine.set_ready(1)
        results.append(metrics.sample(POOL, clock.now()))
    assert [isinstance(r, NoData) for r in results] == [False, True, False, True, False]
    # The failed reads left no reading behind: the window holds only the three good ones.
    assert [r.at for r in metrics.window._readings] == [clock.at(0), clock.at(30), clock.at(60)]
