"""`ebbtide day`: the policy's day for a pool, through the same ControlLoop as the daemon and simulator."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.cli import main
from controller.dayplan import parse_queue_steps, trace_day
from policies.spec import GPUPool

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "gpupool.yaml"
WEDNESDAY = dt.date(2026, 12, 2)


def pool(**spec: Any) -> GPUPool:
    doc = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    merged = copy.deepcopy(doc)
    for key, value in spec.items():
        merged["spec"][key] = {**merged["spec"].get(key, {}), **value} if isinstance(value, dict) else value
    return GPUPool.model_validate(merged)


def at(lines: list[str], clock: str) -> str:
    found = [line for line in lines if line.startswith(clock)]
    assert found, f"no line at {clock}:\n" + "\n".join(lines)
    return found[0]


def test_the_window_is_pre_warmed_one_cold_start_ahead() -> None:
    lines = trace_day(pool(), WEDNESDAY, parse_queue_steps("00:00=0"))
    # 09:00 opening, 180 s cold start: the replica is asked for at 08:57 and the window holds it.
    assert " prewarm " in at(lines, "08:57:00") and "0 → 1" in at(lines, "08:57:00")
    assert " window-open " in at(lines, "09:00:00")
    assert any(" idle-to-zero " in line for line in lines if line >= "18:00")


def test_the_queue_per_replica_comes_from_the_spec() -> None:
    lines = trace_day(pool(demand={"targetQueuePerReplica": 10}), WEDNESDAY, parse_queue_steps("10:00=40"))
    assert "queue 40 at 10 per replica wants 4" in at(lines, "10:00:00")


def test_the_gpu_budget_cap_fires_on_the_days_billed_hours() -> None:
    # Four replicas from 00:00 and a 2 GPU-hour cap: the cap is reached at 00:30 of replica time.
    capped = pool(
        demand={"targetQueuePerReplica": 10, "maxScaleUpStep": 4},
        budget={"maxGpuHoursPerDay": 2, "onGpuCap": "scaleToZero"},
    )
    lines = trace_day(capped, WEDNESDAY, parse_queue_steps("00:00=40"))
    cap = [line for line in lines if " gpu-budget-cap " in line]
    assert cap, "\n".join(lines)
    assert "00:30:00" <= cap[0][:8] <= "00:31:00" and cap[0][8:15].strip() == "0", cap[0]


def test_bad_queue_steps_are_named() -> None:
    with pytest.raises(ValueError, match="'08:00=x' is not HH:MM=QUEUE"):
        parse_queue_steps("00:00=0,08:00=x")
    with pytest.raises(ValueError, match="empty"):
        parse_queue_steps(" , ")


def test_the_command_prints_the_day_and_refuses_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["day", str(EXAMPLE), "--date", "2026-12-02", "--queue", "10:00=40"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# inference/chat on Wed 2026-12-02 (America/New_York)")
    assert "queue-high" in out
    assert main(["day", str(EXAMPLE), "--queue", "10=40"]) == 2
    assert "'10=40' is not HH:MM=QUEUE" in capsys.readouterr().out
    assert main(["day", str(EXAMPLE), "--date", "Wednesday"]) == 2
    assert "--date 'Wednesday': expected a date as YYYY-MM-DD" in capsys.readouterr().out
    assert main(["day", str(EXAMPLE), "--step-seconds", "0"]) == 2
    assert "--step-seconds must be positive" in capsys.readouterr().out
