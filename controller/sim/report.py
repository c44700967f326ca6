"""The simulator's results: the comparison table and the JSON document.

How to read the table: each row is one policy on the same workload. `total $` is GPU $ (billed
replica time, rounded to the provider's billing unit and minimum) plus fallback $ (the API's
per-token bill). `×LB` divides it by the fluid lower bound (per billing period, whole GPUs and the API
with no queueing, cold start or idle capacity). `×OPT` divides the run's SLO-priced cost (its GPU $
plus the fallback's price of every request it did not serve on the GPUs within the SLO, what sending
it to the API on time would have cost) by `offline_optimum`, a proven lower bound of serving every
request within the SLO in the same simulated world; it is never below 1.00, and a policy that leaves
requests late reads as dear as the API it would have needed. `SLO` is the share of requests whose
first token came within `--slo-ttft`; TTFT is queue wait plus prefill on the GPUs, or the fallback's
own latency. A policy is only better if it is cheaper at an equal or better SLO.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from controller.sim.runner import LOWER_BOUND, OPTIMUM, PolicyRun

__all__ = ["bound_note", "render_table", "to_json"]

_COLUMNS: tuple[tuple[str, str], ...] = (
    ("policy", "<"),
    ("requests", ">"),
    ("to API", ">"),
    ("GPU-h", ">"),
    ("GPU $", ">"),
    ("API $", ">"),
    ("total $", ">"),
    ("$/1M tok", ">"),
    ("×LB", ">"),
    ("×OPT", ">"),
    ("scale ev", ">"),
    ("TTFT p50", ">"),
    ("p95", ">"),
    ("p99", ">"),
    ("SLO", ">"),
)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return "never"
    return f"{value:.2f}s" if value < 100 else f"{value:.0f}s"


def _ratio(value: float | None, reference: float | None) -> float | None:
    return None if value is None or not reference else value / reference


def _row(run: PolicyRun, bound: float | None, optimum: float | None) -> list[str]:
    x_lb = _ratio(run.total_usd, bound)
    x_opt = _ratio(run.slo_priced_usd, optimum)
    slo = run.slo_attainment
    return [
        run.name,
        f"{run.requests:,}",
        f"{run.fallback_requests:,}",
        f"{run.gpu_hours:.1f}",
        f"{run.gpu_usd:,.2f}",
        f"{run.fallback_usd:,.2f}",
        f"{run.total_usd:,.2f}",
        f"{run.usd_per_million_tokens:.3f}",
        "-" if x_lb is None else f"{x_lb:.2f}",
        "-" if x_opt is None else f"{x_opt:.2f}",
        "-" if run.scale_events is None else str(run.scale_events),
        _seconds(run.ttft_percentile(50)),
        _seconds(run.ttft_percentile(95)),
        _seconds(run.ttft_percentile(99)),
        "-" if slo is None else f"{slo:.2%}",
    ]


def _references(runs: Mapping[str, PolicyRun]) -> tuple[float | None, float | None]:
    """The lower bound's and offline optimum's totals (None when absent or zero)."""
    found = []
    for name in (LOWER_BOUND, OPTIMUM):
        run = runs.get(name)
        found.append(run.total_usd if run is not None and run.total_usd > 0 else None)
    return found[0], found[1]


def bound_note(runs: Mapping[str, PolicyRun], unit_seconds: int) -> str | None:
    """A line saying why `lower_bound` lies above `offline_optimum`, when it does (None otherwise).

    The fluid bound charges each billing period, aligned to the start, for a replica whose paid unit
    straddles two (`policies/lower_bound.py`): with a unit longer than a second it is not a proven bound,
    and on bursty load it can come out above the optimum's, which is."""
    bound, optimum = _references(runs)
    if bound is None or optimum is None or bound <= optimum:
        return None
    return (
        f"note: lower_bound (${bound:,.2f}) lies above offline_optimum (${optimum:,.2f}): billed by units of "
        f"{unit_seconds:,} s, it charges each unit from the start for a replica whose paid unit straddles two, "
        "so it is no proven bound here; offline_optimum is (read ×OPT)"
    )


def render_table(runs: Mapping[str, PolicyRun]) -> str:
    """A fixed-width table, rows in the given order, costs also as ratios to the two offline references."""
    bound, optimum = _references(runs)
    rows = [[name for name, _ in _COLUMNS], *(_row(run, bound, optimum) for run in runs.values())]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    lines = []
    for n, row in enumerate(rows):
        cells = [
            cell.ljust(widths[i]) if _COLUMNS[i][1] == "<" else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _num(value: float | None, digits: int = 6) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)


def run_json(run: PolicyRun, bound: float | None = None, optimum: float | None = None) -> dict[str, Any]:
    """One policy's figures for the JSON report (infinite latencies, i.e. never served, are null)."""
    return {
        "total_usd": _num(run.total_usd),
        "slo_priced_usd": _num(run.slo_priced_usd),
        "x_lower_bound": _num(_ratio(run.total_usd, bound)),
        "x_offline_optimum": _num(_ratio(run.slo_priced_usd, optimum)),
        "gpu_usd": _num(run.gpu_usd),
        "fallback_usd": _num(run.fallback_usd),
        "gpu_hours": _num(run.gpu_hours),
        "requests": run.requests,
        "fallback_requests": run.fallback_requests,
        "rejected_requests": run.rejected_requests,
        "fallback_input_tokens": run.fallback_input_tokens,
        "fallback_output_tokens": run.fallback_output_tokens,
        "usd_per_million_tokens": _num(run.usd_per_million_tokens),
        "slo_attainment": _num(run.slo_attainment),
        "ttft_p50_s": _num(run.ttft_percentile(50)),
        "ttft_p95_s": _num(run.ttft_percentile(95)),
        "ttft_p99_s": _num(run.ttft_percentile(99)),
        "scale_events": run.scale_events,
        "decision_reasons": dict(sorted(run.log.reasons.items())) if run.log is not None else None,
    }


def to_json(runs: Mapping[str, PolicyRun], inputs: Mapping[str, Any]) -> dict[str, Any]:
    """`{"policies": {NAME: {...}}, "inputs": {...}}`; deterministic for a given workload and settings."""
    bound, optimum = _references(runs)
    return {
        "policies": {name: run_json(run, bound, optimum) for name, run in runs.items()},
        "inputs": dict(inputs),
    }
