"""The simulator's results: the comparison table and the JSON document.

How to read the table: each row is one policy on the same workload. `total $` is GPU $ (billed
replica time, rounded to the provider's billing unit and minimum) plus fallback $ (the API's
per-token bill). `×LB` divides it by the offline lower bound, a cost no online policy can reach;
1.0 would be perfect foresight. `SLO` is the share of requests whose first token came within
`--slo-ttft`; TTFT is queue wait plus prefill on the GPUs, or the fallback's own latency. A policy is
only better if it is cheaper at an equal or better SLO.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from controller.sim.runner import PolicyRun

__all__ = ["render_table", "to_json"]

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


def _row(run: PolicyRun, bound: float | None) -> list[str]:
    ratio = "-" if not bound else f"{run.total_usd / bound:.2f}"
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
        ratio,
        "-" if run.scale_events is None else str(run.scale_events),
        _seconds(run.ttft_percentile(50)),
        _seconds(run.ttft_percentile(95)),
        _seconds(run.ttft_percentile(99)),
        "-" if slo is None else f"{slo:.2%}",
    ]


def render_table(runs: Mapping[str, PolicyRun]) -> str:
    """A fixed-width table, rows in the given order, costs also as ratios to the lower bound."""
    bound_run = runs.get("lower_bound")
    bound = bound_run.total_usd if bound_run is not None and bound_run.total_usd > 0 else None
    rows = [[name for name, _ in _COLUMNS], *(_row(run, bound) for run in runs.values())]
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


def run_json(run: PolicyRun) -> dict[str, Any]:
    """One policy's figures for the JSON report (infinite latencies, i.e. never served, are null)."""
    return {
        "total_usd": _num(run.total_usd),
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
    return {"policies": {name: run_json(run) for name, run in runs.items()}, "inputs": dict(inputs)}
