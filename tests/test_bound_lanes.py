"""How many FIFO lanes `offline_optimum` counts, and that the simulated world keeps to that count.

The bound exempts one last request's decode per lane a request can be on time in. It counts one lane
where Ebbtide's gateway cannot queue a request in its late lane (requests that would be late go to a
fallback that is always open), two where it can. If the engine ever put a request in the late lane of
a world the bound counts as one lane, the bound would no longer be proven there: the second test runs
Ebbtide on a day that saturates the pool and reads the engine's own record of late-lane requests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import controller.sim.runner as runner
from controller.sim.bounds import serving_lanes
from controller.sim.engine import PoolEngine
from controller.sim.runner import RunSettings, run_one
from controller.sim.traces import read_trace
from controller.sim.workload import build_week, load_profile
from policies.spec import GPUPoolSpec
from tests.test_optimum import MONDAY

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "traces"


def _spec(**sections: dict[str, Any]) -> GPUPoolSpec:
    raw: dict[str, Any] = {
        "target": {"deployment": "vllm", "minReplicas": 0, "maxReplicas": 2},
        "coldStartSeconds": 180,
        "fallback": {"providers": [{"name": "api", "baseUrl": "https://api.example.com/v1"}]},
        "objective": {"ttftSeconds": 2},
    }
    for key, values in sections.items():
        raw[key] = {**raw.get(key, {}), **values}
    return GPUPoolSpec.model_validate(raw)


@pytest.mark.parametrize(
    ("sections", "lanes"),
    [
        ({}, 1),  # late requests to a fallback that is always open
        ({"fallback": {"takeLateRequests": False}}, 2),  # late requests in the late lane
        ({"budget": {"maxFallbackUsdPerDay": 50}}, 2),  # the cap closes the fallback: the late lane again
        ({"fallback": {"providers": []}}, 2),  # no fallback: every request queues on the GPUs
        ({"objective": {"deferLateRequests": False}}, 1),  # no late lane at all
        ({"objective": {"deferLateRequests": False}, "fallback": {"takeLateRequests": False}}, 1),
    ],
)
def test_the_bound_counts_the_late_lane_only_where_a_request_can_reach_it(
    sections: dict[str, dict[str, Any]], lanes: int
) -> None:
    assert serving_lanes(_spec(**sections)) == lanes


def test_no_request_reaches_the_late_lane_of_a_world_the_bound_counts_as_one_lane(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A busy day on at most two replicas: bursts leave requests that would be late. With the fallback
    # taking them the engine queues none in the late lane; with `takeLateRequests: false` it does, so
    # the check can tell the two worlds apart.
    engines: list[PoolEngine] = []

    class Recorded(PoolEngine):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            engines.append(self)

    monkeypatch.setattr(runner, "PoolEngine", Recorded)
    workload = build_week(
        read_trace(EXAMPLES / "azure_code_2023.csv"),
        load_profile(EXAMPLES / "azure2024_diurnal.json", "code"),
        days=1,
        start=MONDAY,
        peak_rps=6.0,
        seed=11,
    )
    settings = RunSettings(tick_seconds=30.0, slo_ttft_seconds=2.0)
    late_counts = {}
    for take_late in (True, False):
        spec = _spec(fallback={"takeLateRequests": take_late})
        run = run_one("ebbtide", workload, spec, settings, progress=False)
        assert run.fallback_requests > 0
        late_counts[serving_lanes(spec)] = int(engines[-1].late.sum())
    assert late_counts[1] == 0
    assert late_counts[2] > 0
