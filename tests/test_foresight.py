"""The foresight ladder: block costs by hand, the block DP against brute force, and whole runs on a
small world through the same control loop as every simulator row."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.sim import foresight
from controller.sim.foresight import (
    block_costs,
    block_plan,
    block_replica_plan,
    constant_unsaved,
    foresight_run,
    hindsight_plan,
    parse_blocks,
)
from controller.sim.runner import OPTIMUM, RunSettings, optimum_problem, run_one, run_policy
from controller.sim.workload import Workload
from policies.overflow import Routing
from policies.plan import ReplicaPlan, follow_plan
from policies.spec import GPUPoolSpec

MONDAY = dt.datetime(2024, 5, 13, tzinfo=dt.UTC)


def _spec() -> GPUPoolSpec:
    raw: dict[str, Any] = {
        "target": {"deployment": "vllm", "minReplicas": 0, "maxReplicas": 3},
        "schedule": {"timezone": "UTC"},
        "coldStartSeconds": 60,
        "billing": {"gpuHourlyUsd": 2.0, "granularity": "second", "minimumBilledSeconds": 60},
        "fallback": {
            "providers": [
                {
                    "name": "api",
                    "baseUrl": "https://api.example.com/v1",
                    "inputUsdPerMillion": 3,
                    "outputUsdPerMillion": 15,
                }
            ]
        },
        "objective": {"ttftSeconds": 2},
    }
    return GPUPoolSpec.model_validate(raw)


def test_blocks_parse_as_minutes_and_bad_ones_are_named() -> None:
    assert parse_blocks("60,15,5") == (60.0, 15.0, 5.0)
    assert parse_blocks("15, 15,2.5") == (15.0, 2.5)
    for text, words in (("0", "> 0 minutes"), ("-5", "> 0 minutes"), ("ten", "'ten' is not a number"), ("inf", "> 0")):
        with pytest.raises(Exception, match=words):
            parse_blocks(text)


def test_block_costs_add_the_replicas_price_and_the_unsaved_requests() -> None:
    arrival = np.array([10.0, 20.0, 4000.0, 5300.0])
    api = np.array([1.0, 2.0, 4.0, 8.0])
    masks = [np.ones(4, dtype=bool), np.array([False, True, False, True])]
    costs = block_costs(arrival, api, masks, horizon_s=5400.0, block_s=3600.0, replica_usd_per_hour=3.6)
    # The last block is half an hour long: one replica costs 1.8 there.
    np.testing.assert_allclose(costs, [[3.0, 12.0], [3.6 + 2.0, 1.8 + 8.0]])
    with pytest.raises(ValueError, match="> 0"):
        block_costs(arrival, api, masks, horizon_s=5400.0, block_s=0.0, replica_usd_per_hour=3.6)


def _path_cost(costs: np.ndarray, path: tuple[int, ...], start_usd: float, initial: int) -> float:
    before = initial
    total = 0.0
    for b, k in enumerate(path):
        total += costs[k, b] + start_usd * max(k - before, 0)
        before = k
    return total


def test_the_block_plan_is_the_cheapest_path_counting_starts() -> None:
    rng = np.random.default_rng(7)
    for case in range(60):
        counts, blocks = int(rng.integers(1, 4)), int(rng.integers(1, 6))
        costs = rng.uniform(0.0, 10.0, size=(counts, blocks)).round(1)
        start_usd = float(rng.choice([0.0, 0.5, 3.0, 20.0]))
        initial = int(rng.integers(0, counts))
        path = tuple(int(k) for k in block_plan(costs, start_usd, initial))
        best = min(_path_cost(costs, p, start_usd, initial) for p in itertools.product(range(counts), repeat=blocks))
        assert _path_cost(costs, path, start_usd, initial) == pytest.approx(best), case


def test_without_start_costs_each_block_takes_its_cheapest_count_and_ties_take_fewer() -> None:
    costs = np.array([[5.0, 1.0, 2.0], [3.0, 1.0, 2.0], [4.0, 2.0, 0.5]])
    assert block_plan(costs).tolist() == [1, 0, 2]
    # A start that costs more than one block saves is not bought.
    assert block_plan(np.array([[2.0, 0.0], [0.0, 0.0]]), start_usd=5.0).tolist() == [0, 0]


def test_hindsight_takes_the_count_of_least_cost_over_the_blocks_before() -> None:
    costs = np.array([[1.0, 9.0, 9.0, 1.0, 1.0], [4.0, 2.0, 2.0, 4.0, 4.0]])
    # Block 0 keeps the initial count; block 3 sees 9+9 against 2+2 over the two blocks before it.
    assert hindsight_plan(costs, window=2, initial=1).tolist() == [1, 0, 1, 1, 1]
    assert hindsight_plan(costs, window=1).tolist() == [0, 0, 1, 1, 0]
    with pytest.raises(ValueError, match="at least one block"):
        hindsight_plan(costs, window=0)


def test_a_hindsight_count_is_asked_for_only_once_its_block_has_begun() -> None:
    start = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
    counts = np.array([0, 3, 1], dtype=np.int64)
    fore = block_replica_plan(start, counts, 300.0, 180.0, hindsight=False)
    hind = block_replica_plan(start, counts, 300.0, 180.0, hindsight=True)
    # Foresight asks for block 1's three one cold start before it begins; hindsight cannot know them then.
    assert fore.wanted(300.0 - 180.0) == 3
    assert hind.wanted(300.0 - 1.0) == 0
    assert hind.wanted(300.0) == 3  # decided at the block's start, Ready a cold start later
    assert hind.wanted(600.0) == 3 and hind.wanted(600.0 + 180.0) == 1


def test_hindsight_needs_only_the_past() -> None:
    rng = np.random.default_rng(3)
    for _ in range(40):
        costs = rng.uniform(0.0, 5.0, size=(4, 12))
        b = int(rng.integers(1, 12))
        changed = costs.copy()
        changed[:, b:] = rng.uniform(0.0, 5.0, size=(4, 12 - b))
        window = int(rng.integers(1, 5))
        assert hindsight_plan(costs, window)[: b + 1].tolist() == hindsight_plan(changed, window)[: b + 1].tolist()


def _busy_then_quiet() -> Workload:
    """An hour with a request every second (one replica keeps up), then an hour without any."""
    arrivals = np.arange(0.0, 3600.0, 1.0) + 0.5
    return Workload(
        arrival_s=arrivals,
        input_tokens=np.full(arrivals.size, 1000, dtype=np.int64),
        output_tokens=np.full(arrivals.size, 200, dtype=np.int64),
        start=MONDAY,
        duration_s=7200.0,
    )


def test_foresight_scales_for_the_busy_hour_and_to_zero_for_the_quiet_one() -> None:
    workload, spec, settings = _busy_then_quiet(), _spec(), RunSettings(slo_ttft_seconds=2.0)
    masks = [constant_unsaved(workload, spec, settings, k) for k in range(4)]
    # Without replicas every request is unsaved; with one, only those of the first cold start.
    assert masks[0].all()
    assert 0 < masks[1].sum() < 100
    run = foresight_run(workload, spec, settings, 3600.0, masks, optimum_problem(workload, spec, settings))
    assert run.name == "foresight_60m"
    t, ready = run.timeline["t"], run.timeline["ready"]
    assert ready[(t > 600) & (t < 3600)].min() == 1
    assert ready[t > 3600 + 60].max() == 0
    # One replica for the first hour only: about half the GPU-hours of holding it both hours.
    assert run.gpu_hours == pytest.approx(1.0, abs=0.02)
    assert run.slo_priced_usd is not None
    for k in range(4):  # cheaper than holding any one count through both hours
        plan = ReplicaPlan(MONDAY, np.zeros(1), np.array([k]), 60.0)
        held = run_policy(
            "held", workload, spec, settings, policy=partial(follow_plan, plan=plan), routing=Routing.OVERFLOW
        )
        assert held.slo_priced_usd is not None
        assert run.slo_priced_usd < held.slo_priced_usd, k
    optimum = run_one(OPTIMUM, workload, spec, settings, False)
    assert optimum.total_usd <= run.slo_priced_usd + 1e-9


def test_the_ladder_prints_every_row_and_bad_input_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_json = tmp_path / "ladder.json"
    code = foresight.main(
        ["--days", "1", "--peak-rps", "0.05", "--jobs", "1", "--blocks", "60", "--json", str(out_json)]
    )
    out = capsys.readouterr().out
    assert code == 0
    rows = ("ebbtide", "hindsight_60m", "foresight_60m", "optimum_plan", "offline_optimum", "lower_bound")
    for row in rows:
        assert f"\n{row} " in out
    document = json.loads(out_json.read_text())
    assert list(document["policies"]) == list(rows)
    assert document["inputs"]["blocks_min"] == [60.0]
    assert document["policies"]["offline_optimum"]["x_offline_optimum"] == pytest.approx(1.0)
    hourly = ["--days", "1", "--peak-rps", "0.05", "--jobs", "1", "--blocks", "60", "--set", "billing.granularity=hour"]
    assert foresight.main(hourly) == 0
    assert "chosen on GPU time by the second; billed by the hour" in capsys.readouterr().err
    for flag in ("--policy=ebbtide", "--plot=x.png", "--decisions=d.jsonl"):
        assert foresight.main([flag]) == 2
        assert f"{flag.split('=')[0]} is not supported here" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        foresight.main(["--blocks", "0"])
    assert exit_.value.code == 2
    assert "block length must be > 0 minutes" in capsys.readouterr().err
    assert foresight.main(["--days", "0"]) == 2
    assert "--days must be at least 1" in capsys.readouterr().err
