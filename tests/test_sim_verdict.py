"""GPU, API or both: the verdict under the simulator's table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from controller.sim import cli
from controller.sim.runner import PolicyRun
from controller.sim.verdict import kind_of, render_verdict, verdict, verdict_json
from tests.sim_support import simulate_args


def _run(name: str, gpu_usd: float, api_usd: float, slo_priced: float | None, on_time: float) -> PolicyRun:
    """A row of 100 requests of which `on_time` (a share) came within the 2 s objective."""
    within = round(on_time * 100)
    ttft = np.array([0.5] * within + [30.0] * (100 - within))
    return PolicyRun(
        name=name,
        requests=100,
        fallback_requests=0,
        rejected_requests=0,
        gpu_hours=1.0,
        gpu_usd=gpu_usd,
        fallback_input_tokens=0,
        fallback_output_tokens=0,
        fallback_usd=api_usd,
        scale_events=1,
        ttft=ttft,
        slo_ttft_seconds=2.0,
        total_tokens=1000,
        slo_priced_usd=slo_priced,
    )


def test_kinds_come_from_the_registry_and_references_have_none() -> None:
    assert kind_of("ebbtide") == "both"
    assert {kind_of(n) for n in ("always_on", "hpa", "keda")} == {"GPU"}
    assert kind_of("api_only") == "API"
    for reference in ("lower_bound", "offline_optimum", "optimum_plan", "no_such_policy"):
        assert kind_of(reference) is None


def test_the_kind_that_serves_the_objective_for_least_is_chosen_not_the_cheapest_in_dollars() -> None:
    runs = {
        "ebbtide": _run("ebbtide", 400.0, 100.0, 550.0, 0.99),
        "always_on": _run("always_on", 276.0, 0.0, 1600.0, 0.55),
        "hpa": _run("hpa", 320.0, 0.0, 1150.0, 0.73),
        "api_only": _run("api_only", 0.0, 2900.0, 2900.0, 1.0),
        # A reference far below everything is not a kind: it must not be chosen.
        "offline_optimum": _run("offline_optimum", 380.0, 25.0, 405.0, 1.0),
    }
    v = verdict(runs)
    assert v is not None
    assert [(p.kind, p.name) for p in v.picks] == [("both", "ebbtide"), ("GPU", "hpa"), ("API", "api_only")]
    assert v.choice.name == "ebbtide"
    assert v.cheapest.name == "always_on"
    text = render_verdict(v)
    assert "Choose both (ebbtide): 52% below GPU only, 81% below API only." in text
    assert "always_on spends less ($276.00 against $500.00) but serves 55.00% within 2 s against 99.00%." in text
    assert verdict_json(v) == {
        "choice": "both",
        "policy": "ebbtide",
        "cheapest_in_dollars": "always_on",
        "kinds": {"both": "ebbtide", "GPU": "hpa", "API": "api_only"},
    }


def test_gpus_alone_win_when_they_serve_the_objective_for_less() -> None:
    runs = {
        "ebbtide": _run("ebbtide", 300.0, 20.0, 330.0, 0.99),
        "always_on": _run("always_on", 280.0, 0.0, 281.0, 0.999),
        "api_only": _run("api_only", 0.0, 2900.0, 2900.0, 1.0),
    }
    v = verdict(runs)
    assert v is not None and v.choice.name == "always_on" and v.cheapest.name == "always_on"
    text = render_verdict(v)
    assert "Choose GPU (always_on): 15% below both, 90% below API only." in text
    assert "spends less" not in text


def test_a_near_tie_is_told_in_dollars() -> None:
    runs = {
        "ebbtide": _run("ebbtide", 270.0, 6.32, 276.32, 1.0),
        "always_on": _run("always_on", 276.16, 0.0, 276.35, 0.999),
        "api_only": _run("api_only", 0.0, 448.4, 448.4, 1.0),
    }
    v = verdict(runs)
    assert v is not None
    assert "Choose both (ebbtide): $0.03 below GPU only, 38% below API only." in render_verdict(v)


def test_no_verdict_with_one_kind_or_rows_without_outcomes() -> None:
    assert verdict({"ebbtide": _run("ebbtide", 1.0, 1.0, 2.0, 1.0)}) is None
    assert verdict({"hpa": _run("hpa", 1.0, 0.0, 1.0, 1.0), "keda": _run("keda", 2.0, 0.0, 2.0, 1.0)}) is None
    # A row with no SLO-priced cost is not weighed.
    runs = {"ebbtide": _run("ebbtide", 1.0, 1.0, 2.0, 1.0), "api_only": _run("api_only", 0.0, 3.0, None, 1.0)}
    assert verdict(runs) is None


def test_simulate_prints_the_verdict_and_writes_it_to_the_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "out.json"
    argv = ["--days", "1", "--peak-rps", "1.5", "--seed", "3", "--tick", "30", "--no-progress", "--json", str(path)]
    assert cli.run(simulate_args(argv)) == 0
    out = capsys.readouterr().out
    document = json.loads(path.read_text())
    chosen = document["verdict"]
    rows = document["policies"]
    # The choice is the kind's row of least SLO-priced cost among the policies a pool can run.
    runnable = {n: f for n, f in rows.items() if kind_of(n) is not None}
    assert chosen["policy"] == min(runnable, key=lambda n: runnable[n]["slo_priced_usd"])
    assert set(chosen["kinds"]) == {"both", "GPU", "API"}
    assert f"Choose {chosen['choice']} ({chosen['policy']})" in out
    assert out.index("GPU, API or both?") > out.index("optimum_plan")


def test_one_policy_alone_gets_no_verdict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "out.json"
    argv = ["--days", "1", "--peak-rps", "1.5", "--tick", "30", "--no-progress", "--policy", "ebbtide"]
    assert cli.run(simulate_args([*argv, "--json", str(path)])) == 0
    assert "GPU, API or both?" not in capsys.readouterr().out
    assert "verdict" not in json.loads(path.read_text())
