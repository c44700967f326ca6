"""The lower bound: exact on hand-made cases, and never above any policy's simulated cost."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.sim.runner import OFFLINE, POLICY_NAMES, RunSettings, lower_bound_run, run_one
from controller.sim.traces import read_trace
from controller.sim.workload import build_week, load_profile
from policies.cost import ApiPrice
from policies.lower_bound import lower_bound
from policies.spec import GPUPoolSpec

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "traces"
MONDAY = dt.datetime(2024, 5, 13, tzinfo=dt.UTC)
PRICE = ApiPrice(3.0, 15.0)


def _bound(arrivals: list[float], work: list[float], inputs: list[int], period: float, usd_per_hour: float) -> Any:
    n = len(arrivals)
    return lower_bound(
        np.asarray(arrivals, dtype=np.float64),
        np.asarray(inputs, dtype=np.int64),
        np.zeros(n, dtype=np.int64),
        np.asarray(work, dtype=np.float64),
        period_seconds=period,
        replica_usd_per_hour=usd_per_hour,
        gpus_per_replica=1,
        price=PRICE,
    )


def test_a_busy_hour_buys_a_gpu_and_a_quiet_hour_pays_the_api() -> None:
    # Hour 0: 1,000 requests of 1,000 prompt tokens ($3 of API in all), 10 s of work.
    # Hour 1: 100 such requests ($0.30). A GPU-hour costs $1: buy it in hour 0, pay the API in hour 1.
    arrivals = [float(i) for i in range(1000)] + [3600.0 + i for i in range(100)]
    bound = _bound(arrivals, [0.01] * 1100, [1000] * 1100, 3600.0, 1.0)
    assert bound.gpu_usd == pytest.approx(1.0)
    assert bound.fallback_usd == pytest.approx(0.3)
    assert bound.gpu_periods == 1


def test_capacity_beyond_one_replica_keeps_the_most_valuable_requests() -> None:
    # 5,000 s of work in one hour: one replica (3,600 s) serves the requests that are dearest at the API.
    arrivals = [0.0, 1.0]
    bound = _bound(arrivals, [3600.0, 1400.0], [2_000_000, 100_000], 3600.0, 1.0)
    # One replica keeps the $6 request; the $0.30 one is cheaper at the API than a second replica ($1).
    assert bound.total_usd == pytest.approx(1.0 + 0.3)


def _spec(granularity: str, cold_start: int) -> GPUPoolSpec:
    return GPUPoolSpec.model_validate(
        {
            "target": {"deployment": "vllm", "minReplicas": 0, "maxReplicas": 6},
            "schedule": {
                "timezone": "America/New_York",
                "windows": [
                    {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:00", "minReplicas": 1}
                ],
            },
            "coldStartSeconds": cold_start,
            "billing": {"granularity": granularity, "minimumBilledSeconds": 60},
            "fallback": {"providers": [{"name": "api", "baseUrl": "https://api.example.com/v1"}]},
        }
    )


@pytest.mark.parametrize(
    ("peak_rps", "granularity", "cold_start", "seed"),
    [(0.2, "second", 180, 1), (2.0, "second", 180, 2), (2.0, "hour", 180, 3), (10.0, "minute", 0, 4)],
)
def test_the_lower_bound_is_never_above_any_policy(
    peak_rps: float, granularity: str, cold_start: int, seed: int
) -> None:
    trace = read_trace(EXAMPLES / "azure_code_2023.csv")
    profile = load_profile(EXAMPLES / "azure2024_diurnal.json", "code")
    workload = build_week(trace, profile, days=2, start=MONDAY, peak_rps=peak_rps, seed=seed)
    spec = _spec(granularity, cold_start)
    settings = RunSettings(tick_seconds=30.0)
    bound = lower_bound_run(workload, spec, settings).total_usd
    assert bound > 0
    for name in POLICY_NAMES:
        if name in OFFLINE:
            continue
        run = run_one(name, workload, spec, settings, progress=False)
        assert bound <= run.total_usd + 1e-9, f"{name}: ${run.total_usd:.2f} below the bound ${bound:.2f}"
