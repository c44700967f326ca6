"""A picture of a run: demand, Ready replicas and windows over time; cumulative cost by policy."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path

import matplotlib
import numpy as np

from controller.sim.engine import RouteCode
from controller.sim.runner import PolicyRun
from controller.sim.workload import Workload
from policies.schedules import open_spans
from policies.spec import GPUPoolSpec

__all__ = ["plot_runs"]

# One colour per policy in both panels.
_COLOURS = {
    "ebbtide": "tab:blue",
    "always_on": "tab:orange",
    "api_only": "tab:green",
    "hpa": "tab:red",
    "keda": "tab:purple",
    "lower_bound": "black",
    "offline_optimum": "dimgray",
    "optimum_plan": "tab:brown",
}


def _cumulative_cost(run: PolicyRun, workload: Workload, spec: GPUPoolSpec, grid: np.ndarray) -> np.ndarray:
    """Spend up to each grid time: replica time at the hourly price (unrounded) plus fallback bills."""
    if "t" not in run.timeline or run.route is None:
        return np.zeros_like(grid)
    t, replicas = run.timeline["t"], run.timeline["replicas"].astype(np.float64)
    step = np.diff(t, append=t[-1] + (t[1] - t[0] if t.size > 1 else 0.0))
    usd_per_second = spec.replica_usd_per_hour / 3600.0
    gpu = np.interp(grid, t, np.cumsum(replicas * step * usd_per_second))
    fallback = run.route == RouteCode.FALLBACK
    api = np.where(
        fallback,
        (
            workload.input_tokens * spec.fallback.input_usd_per_million
            + workload.output_tokens * spec.fallback.output_usd_per_million
        )
        / 1e6,
        0.0,
    )
    spent = np.concatenate(([0.0], np.cumsum(api)))
    total: np.ndarray = gpu + spent[np.searchsorted(workload.arrival_s, grid, side="right")]
    return total


def plot_runs(path: Path, workload: Workload, spec: GPUPoolSpec, runs: Mapping[str, PolicyRun]) -> None:
    """Write a two-panel PNG: demand with Ready replicas and open windows; cumulative cost by policy."""
    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    hours = max(workload.duration_s / 3600.0, 1e-9)
    start = workload.start
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(13, 8), sharex=True, constrained_layout=True)
    # Demand: requests per minute.
    minutes = max(int(np.ceil(workload.duration_s / 60.0)), 1)
    per_minute = np.bincount((workload.arrival_s // 60).astype(np.int64), minlength=minutes)[:minutes]
    x_minutes = np.arange(minutes) / 60.0
    top.plot(x_minutes, per_minute, color="0.6", linewidth=0.6, label="requests / min")
    top.set_ylabel("requests per minute")
    # Windows, sampled every 5 minutes.
    grid = np.arange(0.0, workload.duration_s, 300.0)
    is_open = np.array([bool(open_spans(spec.schedule, start + dt.timedelta(seconds=float(s)))) for s in grid])
    if is_open.any():
        top.fill_between(
            grid / 3600.0,
            0,
            1,
            where=is_open,
            transform=top.get_xaxis_transform(),
            color="tab:green",
            alpha=0.08,
            label="window open",
        )
    replicas_axis = top.twinx()
    for name, run in reversed(list(runs.items())):
        if "t" in run.timeline and name != "api_only":
            replicas_axis.step(
                run.timeline["t"] / 3600.0,
                run.timeline["ready"],
                where="post",
                linewidth=1.6 if name == "ebbtide" else 0.8,
                alpha=1.0 if name == "ebbtide" else 0.6,
                color=_COLOURS.get(name),
                label=f"{name} ready",
            )
    replicas_axis.set_ylabel("Ready replicas")
    handles = top.get_legend_handles_labels()
    more = replicas_axis.get_legend_handles_labels()
    top.legend(handles[0] + more[0], handles[1] + more[1], loc="upper left", fontsize=8, ncol=4)
    top.set_title(f"Demand, windows and Ready replicas from {start.isoformat()}")
    # Cumulative cost.
    cost_grid = np.linspace(0.0, workload.duration_s, 600)
    for name, run in runs.items():
        if name in ("lower_bound", "offline_optimum"):
            colour, style = ("black", ":") if name == "lower_bound" else ("dimgray", "--")
            bottom.axhline(run.total_usd, color=colour, linestyle=style, linewidth=1.0, label=f"{name} (total)")
            continue
        bottom.plot(
            cost_grid / 3600.0, _cumulative_cost(run, workload, spec, cost_grid), label=name, color=_COLOURS.get(name)
        )
    bottom.set_ylabel("cumulative cost ($)")
    bottom.set_xlabel("hours since start")
    bottom.set_xlim(0, hours)
    bottom.legend(loc="upper left", fontsize=8)
    bottom.set_title("Cumulative cost by policy (GPU time unrounded; the table's totals apply the billing unit)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
