"""Offline routing over a run's replicas: equal to every routing of a tiny world tried, achievable when
thinned, never below offline_optimum, and its command's output and bad input."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from controller.sim import offline_routing
from controller.sim.offline_routing import fifo_savings, routed, window_limits
from controller.sim.runner import OPTIMUM, OPTIMUM_PLAN, RunSettings, run_one
from controller.sim.traces import read_trace
from controller.sim.workload import build_week, load_profile
from tests.test_optimum import (
    EXAMPLES,
    HORIZON,
    MONDAY,
    OBJECTIVE,
    STEP,
    _problem,
    _random_case,
    _spec,
    _world_cost,
    plan_world,
)


def _timeline(plan: tuple[int, ...], usd_per_hour: float) -> tuple[np.ndarray, np.ndarray, float]:
    changes, gpu_usd, after = plan_world(plan, usd_per_hour)
    times = np.asarray([t for t, _ in changes] + [HORIZON], dtype=np.float64)
    ready = np.asarray([r for _, r in changes] + [after], dtype=np.float64)
    return times, ready, gpu_usd


@pytest.mark.parametrize("seed", range(30))
def test_it_finds_the_cheapest_routing_over_one_lane_of_a_tiny_world(seed: int) -> None:
    # Every plan of 0..2 replicas per tick, and for each every routing of the requests to the API or the
    # normal lane, served by the event-by-event reference engine: the DP's cost is the least of them.
    rng = np.random.default_rng(3100 + seed)
    arrivals, inputs, outputs = _random_case(rng)
    usd_per_hour = float(rng.choice([360.0, 3600.0]))
    p = _problem(arrivals, inputs, outputs, top=2, usd_per_hour=usd_per_hour)
    total = float(p.api_usd.sum())
    for plan in itertools.product(range(3), repeat=int(HORIZON / STEP)):
        times, ready, gpu_usd = _timeline(plan, usd_per_hour)
        saved, exact = fifo_savings(p.arrival_s, p.work_s, p.prefill_s, p.api_usd, times, ready, OBJECTIVE)
        brute = min(
            _world_cost(plan, assignment, arrivals, inputs, outputs, usd_per_hour)
            for assignment in itertools.product(range(2), repeat=len(arrivals))
        )
        assert exact
        assert gpu_usd + total - saved == pytest.approx(brute, abs=1e-9), (plan, arrivals, inputs, outputs)


def test_a_thinned_frontier_still_finds_a_real_routing() -> None:
    # A burst on one replica, many ways to route it: each frontier size gives a routing the world can
    # run (saving at most what the exact frontier saves), and a frontier of one point saves less.
    rng = np.random.default_rng(7)
    n = 60
    arrival = np.sort(rng.uniform(0.0, 6.0, n))
    prefill = rng.uniform(0.0, 0.6, n)
    work = prefill + rng.uniform(0.0, 0.5, n)
    usd = work * rng.uniform(1.0, 1.3, n)
    times, ready = np.asarray([0.0, 3.0]), np.asarray([1.0, 2.0])
    exact, is_exact = fifo_savings(arrival, work, prefill, usd, times, ready, 2.0, keep=10**6)
    assert is_exact
    for keep in (1, 2, 4, 16, 64):
        saved, thinned_exact = fifo_savings(arrival, work, prefill, usd, times, ready, 2.0, keep=keep)
        assert 0.0 < saved <= exact + 1e-12
        assert not thinned_exact
    assert fifo_savings(arrival, work, prefill, usd, times, ready, 2.0, keep=1)[0] < exact


def test_the_on_time_limit_counts_the_prefill_in_wall_time_and_pauses() -> None:
    # One replica from 0, none from 1 s to 3 s, one again after: a request arriving at 0 with 0.5 s of
    # prefill needs the lane to have served its position plus its prefill by 2 s, and V(2) = 1 (the
    # pause), so it is on time at positions up to 0.5 (inclusive), not up to V(1.5) = 1.
    times, ready = np.asarray([0.0, 1.0, 3.0]), np.asarray([1.0, 0.0, 1.0])
    arrived, limit, inclusive = window_limits(np.asarray([0.0, 3.0]), np.asarray([0.5, 2.5]), times, ready, 2.0)
    assert arrived.tolist() == [0.0, 1.0]
    assert limit[0] == pytest.approx(0.5) and inclusive[0]
    assert limit[1] == -np.inf  # its prefill is longer than the objective: never on time
    # A pause right at its latest start: at a position of exactly V(1) = 1 it would start after the
    # pause, at 1.5 s, and be late; just below it starts before 1 s and is on time.
    times, ready = np.asarray([0.0, 1.0, 1.5]), np.asarray([1.0, 0.0, 4.0])
    _, limit, inclusive = window_limits(np.asarray([0.0]), np.asarray([1.0]), times, ready, 2.0)
    assert limit[0] == pytest.approx(1.0) and not inclusive[0]


def test_bad_timelines_are_refused() -> None:
    one = np.ones(1)
    with pytest.raises(ValueError, match="keep must be at least 1"):
        fifo_savings(one, one, one, one, np.zeros(1), one, 2.0, keep=0)
    with pytest.raises(ValueError, match="sorted times"):
        fifo_savings(one, one, one, one, np.asarray([1.0, 0.0]), np.ones(2), 2.0)


def test_the_optimums_plan_routed_offline_is_never_below_the_bound_and_beats_its_online_run() -> None:
    trace = read_trace(EXAMPLES / "azure_code_2023.csv")
    profile = load_profile(EXAMPLES / "azure2024_diurnal.json", "code")
    workload = build_week(trace, profile, days=1, start=MONDAY, peak_rps=2.0, seed=3)
    spec = _spec("second", 180, 4, 2.0)
    settings = RunSettings()
    bound = run_one(OPTIMUM, workload, spec, settings, False).total_usd
    plan = run_one(OPTIMUM_PLAN, workload, spec, settings, False)
    row = routed(plan, workload, spec, settings, keep=64)
    assert plan.slo_priced_usd is not None
    assert bound <= row.routed_usd + 1e-9
    assert row.routed_usd <= plan.slo_priced_usd + 1e-9
    with pytest.raises(ValueError, match="only a policy's run"):
        routed(run_one(OPTIMUM, workload, spec, settings, False), workload, spec, settings, keep=64)


def test_the_command_prints_both_rows_and_the_interval_and_bad_input_is_named(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_json = tmp_path / "routed.json"
    code = offline_routing.main(["--days", "1", "--peak-rps", "0.05", "--jobs", "1", "--json", str(out_json)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "\noptimum_plan " in out and "\nebbtide " in out
    assert "The true optimum lies between $" in out
    document = json.loads(out_json.read_text())
    assert set(document["rows"]) == {"optimum_plan", "ebbtide"}
    bound = document["offline_optimum_usd"]
    for row in document["rows"].values():
        assert bound <= row["routed_usd"] + 1e-9
    for flag in ("--policy=ebbtide", "--plot=x.png", "--decisions=d.jsonl"):
        assert offline_routing.main([flag]) == 2
        assert f"{flag.split('=')[0]} is not supported here" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        offline_routing.main(["--keep", "0"])
    assert exit_.value.code == 2
    assert "--keep must be at least 1" in capsys.readouterr().err
    assert offline_routing.main(["--days", "0"]) == 2
    assert "--days must be at least 1" in capsys.readouterr().err
