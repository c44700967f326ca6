"""Each row's SLO-priced cost by hour of day (`ebbtide simulate --by-hour`)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.sim import cli
from controller.sim.hours import _billed_by_hour, _LocalClock, by_hour
from controller.sim.runner import RunSettings, request_api_usd, run_policy
from controller.sim.workload import Workload
from policies.spec import GPUPoolSpec
from tests.sim_support import simulate_args

MONDAY = dt.datetime(2024, 5, 13, tzinfo=dt.UTC)


def _spec(timezone: str = "UTC", granularity: str = "second", **overrides: Any) -> GPUPoolSpec:
    raw: dict[str, Any] = {
        "target": {"deployment": "vllm", "minReplicas": 0, "maxReplicas": 2},
        "schedule": {"timezone": timezone},
        "coldStartSeconds": 60,
        "billing": {"gpuHourlyUsd": 3.6, "granularity": granularity},
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
        **overrides,
    }
    return GPUPoolSpec.model_validate(raw)


def test_a_replicas_billed_time_is_split_over_the_hours_it_spans_and_the_rounding_falls_after_it() -> None:
    clock = _LocalClock(MONDAY, 3 * 3600.0, "UTC")
    # By the second: 30 minutes in hour 0 and 10 in hour 1.
    by_second = _billed_by_hour([(1800.0, 4200.0)], _spec(), clock)
    assert by_second[0] == pytest.approx(1800.0) and by_second[1] == pytest.approx(600.0)
    assert by_second.sum() == pytest.approx(2400.0)
    # By the hour the 40 minutes are billed 60: the 20 paid after the stop fall in hour 1.
    by_hour_ = _billed_by_hour([(1800.0, 4200.0)], _spec(granularity="hour"), clock)
    assert by_hour_[0] == pytest.approx(1800.0) and by_hour_[1] == pytest.approx(1800.0)
    assert by_hour_.sum() == pytest.approx(3600.0)


def test_hours_are_the_pools_local_hours_with_their_offset_and_daylight_saving() -> None:
    t = np.array([0.0, 1800.0, 3600.0])
    # Kolkata is 5:30 ahead: midnight UTC is 05:30 there, 00:30 UTC is 06:00.
    assert _LocalClock(MONDAY, 7200.0, "Asia/Kolkata").hour_of(t).tolist() == [5, 6, 6]
    # New York is 4 hours behind in May, 5 in January.
    assert _LocalClock(MONDAY, 7200.0, "America/New_York").hour_of(t).tolist() == [20, 20, 21]
    january = dt.datetime(2024, 1, 8, tzinfo=dt.UTC)
    assert _LocalClock(january, 7200.0, "America/New_York").hour_of(t).tolist() == [19, 19, 20]
    # A Kolkata replica from 00:00 to 01:00 UTC is billed half in local 05:00, half in 06:00.
    split = _billed_by_hour([(0.0, 3600.0)], _spec(), _LocalClock(MONDAY, 7200.0, "Asia/Kolkata"))
    assert split[5] == pytest.approx(1800.0) and split[6] == pytest.approx(1800.0)


def _workload() -> Workload:
    rng = np.random.default_rng(7)
    n = 600
    return Workload(
        arrival_s=np.sort(rng.uniform(0, 6 * 3600.0, n)),
        input_tokens=rng.integers(100, 4000, n),
        output_tokens=rng.integers(10, 800, n),
        start=MONDAY,
        duration_s=6 * 3600.0,
        inputs={},
    )


@pytest.mark.parametrize("granularity", ["second", "hour"])
def test_each_rows_hours_add_up_to_its_slo_priced_cost_and_the_api_only_row_is_its_prices(granularity: str) -> None:
    workload, spec = _workload(), _spec("Europe/Berlin", granularity)
    settings = RunSettings(tick_seconds=30.0, slo_ttft_seconds=2.0)
    runs = {name: run_policy(name, workload, spec, settings, progress=False) for name in ("ebbtide", "api_only", "hpa")}
    table = by_hour(runs, workload, spec)
    assert table is not None and table.timezone == "Europe/Berlin"
    for name, run in runs.items():
        assert run.slo_priced_usd is not None
        assert table.slo_priced_usd[name].sum() == pytest.approx(run.slo_priced_usd, rel=1e-9, abs=1e-9), name
    # api_only pays exactly each request's price in the hour it arrives (Berlin is 2 hours ahead in May).
    hours = ((workload.arrival_s // 3600).astype(int) + 2) % 24
    expected = np.bincount(hours, weights=request_api_usd(workload, spec.fallback.price), minlength=24)
    np.testing.assert_allclose(table.slo_priced_usd["api_only"], expected, rtol=1e-12, atol=1e-12)
    assert table.requests.sum() == len(workload) and table.requests[2:8].sum() == len(workload)
    # An hour with nothing in it costs api_only nothing, so it is cheapest there (with any row that ties).
    assert "api_only" in table.cheapest[12]
    for h in range(24):
        least = min(table.slo_priced_usd[n][h] for n in runs)
        assert all(table.slo_priced_usd[n][h] <= least + 0.005 for n in table.cheapest[h])


def test_simulate_by_hour_prints_the_table_and_writes_it_to_the_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "out.json"
    argv = ["--days", "1", "--peak-rps", "1.5", "--seed", "3", "--tick", "30", "--no-progress", "--json", str(path)]
    assert cli.run(simulate_args([*argv, "--by-hour"])) == 0
    out = capsys.readouterr().out
    document = json.loads(path.read_text())
    hours = document["by_hour"]
    assert out.index("By hour of day (America/New_York)") > out.index("Choose ")
    # Every policy run has its hours, the optimum's plan too; the bounds are one number each.
    assert set(hours["slo_priced_usd"]) == {"ebbtide", "always_on", "api_only", "hpa", "keda", "optimum_plan"}
    for name, cells in hours["slo_priced_usd"].items():
        assert len(cells) == 24
        assert sum(cells) == pytest.approx(document["policies"][name]["slo_priced_usd"], abs=1e-4)
    # The optimum's plan knows the future: it is never an hour's cheapest row.
    assert all(c and "optimum_plan" not in c for c in hours["cheapest"])
    assert sum(hours["requests"]) == document["policies"]["ebbtide"]["requests"]
    # Without the flag, neither.
    assert cli.run(simulate_args(argv)) == 0
    assert "By hour of day" not in capsys.readouterr().out
    assert "by_hour" not in json.loads(path.read_text())
