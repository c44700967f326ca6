"""Offline routing: the most a run's replicas could have saved had each request been routed with hindsight.

    python -m controller.sim.offline_routing [the options of `ebbtide simulate`] [--keep K]

(`--policy`, `--plot` and `--decisions` are refused: the rows are fixed.)

`offline_optimum` is a proven lower bound of the true optimum; `optimum_plan` (the bound's replica plan
run with Ebbtide's gateway, which routes without knowing the future) is one achievable cost above it.
This module gives a second, lower achievable cost for the same replicas: the same Ready counts, tick by
tick, with every request sent either to the normal lane (one FIFO, as the simulated world serves it) or
to the fallback, chosen knowing every request. The true optimum lies between the bound and the least
of the achievable costs, and the same routing applied to Ebbtide's own replicas shows how much of its
cost is routing and how much scaling.

The world's rules (`controller/sim/engine.py`). `V(t)` is the replica-seconds the Ready replicas serve
by `t`. A request of work `w` and prefill `p` arriving at `a` that joins the lane when the work ahead
of it ends at position `x` starts once `V` has passed `x' = max(x, V(a))` (at the first moment after
that with a replica Ready), gets its first token at `max(start + p, the moment V reaches x' + p)`, and
moves the lane's end to `x' + w`. It is on time when that first token comes by `a + T`: `x' <= V(a + T)
- p`, and `x' < V(a + T - p)` (or equal, if a replica is Ready just after `a + T - p`). Requests the lane
does not take are priced at the fallback, as ×OPT prices every request not on time.

The method. A dynamic programme over requests in arrival order keeps the Pareto frontier of (lane end,
dollars saved) over every routing of the requests so far: a routing whose lane ends later and saves no
more can never do better. Each request either joins (where it is on time) or does not. When the lane
runs empty before an arrival all points with an end before it merge, so the frontier stays small outside
bursts. With `keep` points at most, a larger frontier is thinned to `keep` points whose savings are
spread evenly from its least to its most (with one point, the one that saved most):
every point kept is still a real routing, so the cost found is achievable, and exact whenever no
frontier was thinned (the report says which).

What it is, and is not. Each row is an achievable cost of the simulated world: its replicas billed as
the run billed them, its requests routed with hindsight over one lane. It is not a bound: two lanes can
do better than one (a request in the late lane lets later ones overtake it), and other replica plans can
cost less. It asserts nothing beyond the simulated world.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import sys
import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from controller.sim import cli
from controller.sim.runner import (
    EBBTIDE,
    OPTIMUM,
    OPTIMUM_PLAN,
    PolicyRun,
    RunSettings,
    optimum_problem,
    run_all,
)
from controller.sim.workload import Workload
from policies.spec import GPUPoolSpec

__all__ = ["DEFAULT_KEEP", "Routed", "fifo_savings", "main", "routed", "window_limits"]

FloatArray = npt.NDArray[np.float64]

DEFAULT_KEEP = 256
"""Frontier points kept at most. On the default week at 10x the optimum's plan routed offline costs
$447.19, $446.15 and $445.87 with 64, 256 and 1,024 points (11 s with 256, 37 s with 1,024)."""


def _segment(times: FloatArray, at: FloatArray) -> npt.NDArray[np.int64]:
    """The index `k` of the Ready count in force at each moment (right-continuous, the first before `times[0]`)."""
    return np.clip(np.searchsorted(times, at, side="right") - 1, 0, times.size - 1)


def window_limits(
    arrival: FloatArray, prefill: FloatArray, times: FloatArray, ready: FloatArray, objective: float
) -> tuple[FloatArray, FloatArray, npt.NDArray[np.bool_]]:
    """Per request: `V(a)`, the latest lane position `x'` at which it is still on time, and whether that
    position itself is on time (False: only positions strictly below it are)."""
    served = np.concatenate(([0.0], np.cumsum(np.diff(times) * ready[:-1])))  # V at each of `times`

    def capacity(at: FloatArray) -> FloatArray:
        k = _segment(times, at)
        return np.asarray(served[k] + np.maximum(at - times[k], 0.0) * ready[k], dtype=np.float64)

    arrived = capacity(arrival)
    by_deadline = capacity(arrival + objective) - prefill
    start_by = arrival + objective - prefill
    at_start = capacity(start_by)
    running_after = ready[_segment(times, start_by)] > 0
    limit = np.minimum(by_deadline, at_start)
    # At the limit itself: on time if the deadline term set it, or a replica is Ready to start it there.
    inclusive = np.where(by_deadline < at_start, True, running_after)
    limit = np.where(start_by < arrival, -math.inf, limit)  # its own prefill is longer than the objective
    return arrived, limit, inclusive


def fifo_savings(
    arrival: FloatArray,
    work: FloatArray,
    prefill: FloatArray,
    usd: FloatArray,
    times: FloatArray,
    ready: FloatArray,
    objective: float,
    *,
    keep: int = DEFAULT_KEEP,
) -> tuple[float, bool]:
    """The most fallback dollars the requests (sorted by arrival) save by being on time in one FIFO lane,
    with `ready[k]` replicas Ready from `times[k]` (sorted, `times[0]` at or before the first arrival;
    the last count holds from then on). Returns (saved, exact): exact when no frontier was thinned."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    times = np.asarray(times, dtype=np.float64)
    ready = np.asarray(ready, dtype=np.float64)
    if times.size == 0 or times.size != ready.size or np.any(np.diff(times) < 0) or np.any(ready < 0):
        raise ValueError("need sorted times and as many non-negative Ready counts")
    arrived, limit, inclusive_at = window_limits(arrival, prefill, times, ready, objective)
    xs: list[float] = [-math.inf]
    vs: list[float] = [0.0]
    exact = True
    for c, lim, inclusive, w, u in zip(
        arrived.tolist(), limit.tolist(), inclusive_at.tolist(), work.tolist(), usd.tolist(), strict=True
    ):
        # Every routing whose lane has ended by this arrival starts it at V(a): keep the best of them.
        j = bisect.bisect_right(xs, c)
        if j:
            xs = [c, *xs[j:]]
            vs = [vs[j - 1], *vs[j:]]
        if u <= 0 or lim < c or (lim == c and not inclusive):
            continue
        m = bisect.bisect_right(xs, lim) if inclusive else bisect.bisect_left(xs, lim)
        if not m:
            continue
        xs, vs = _merge(xs, vs, [x + w for x in xs[:m]], [v + u for v in vs[:m]])
        if len(xs) > keep:
            exact = False
            # Savings spread evenly from its least to its most, the first point at or above each (with one
            # point, the one that saved most: a greedy lane).
            targets = np.linspace(vs[0] if keep > 1 else vs[-1], vs[-1], keep)
            pick = np.unique(np.searchsorted(np.asarray(vs), targets, side="left")).tolist()
            xs, vs = [xs[q] for q in pick], [vs[q] for q in pick]
    return vs[-1], exact


def _merge(xa: list[float], va: list[float], xb: list[float], vb: list[float]) -> tuple[list[float], list[float]]:
    """Two frontiers (ends ascending, savings ascending) as one, dominated points dropped."""
    xs: list[float] = []
    vs: list[float] = []
    i = k = 0
    while i < len(xa) or k < len(xb):
        if k >= len(xb) or (i < len(xa) and xa[i] <= xb[k]):
            x, v = xa[i], va[i]
            i += 1
        else:
            x, v = xb[k], vb[k]
            k += 1
        if vs and v <= vs[-1]:
            continue
        if xs and x == xs[-1]:
            vs[-1] = v
            continue
        xs.append(x)
        vs.append(v)
    return xs, vs


@dataclass(frozen=True, slots=True)
class Routed:
    """A run's replicas with its requests routed offline."""

    name: str
    gpu_usd: float
    online_usd: float
    """The run's own SLO-priced cost (its gateway routing online)."""
    routed_usd: float
    """Its GPU bill plus the fallback price of every request the offline routing does not serve on time."""
    exact: bool


def routed(run: PolicyRun, workload: Workload, spec: GPUPoolSpec, settings: RunSettings, keep: int) -> Routed:
    """`run`'s Ready counts, tick by tick, with its requests routed offline (`fifo_savings`)."""
    if run.route is None or "t" not in run.timeline or run.slo_priced_usd is None:
        raise ValueError(f"{run.name}: only a policy's run has replicas to route over")
    p = optimum_problem(workload, spec, settings)
    saved, exact = fifo_savings(
        p.arrival_s,
        p.work_s,
        p.prefill_s,
        p.api_usd,
        np.asarray(run.timeline["t"], dtype=np.float64),
        np.asarray(run.timeline["ready"], dtype=np.float64),
        p.objective_s,
        keep=keep,
    )
    total = float(p.api_usd.sum())
    return Routed(run.name, run.gpu_usd, run.slo_priced_usd, run.gpu_usd + total - saved, exact)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"--keep must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Print the rows for the workload `ebbtide simulate`'s options describe; 2 on bad input."""
    parser, simulate = cli.fixed_rows_parser("python -m controller.sim.offline_routing")
    simulate.add_argument(
        "--keep", type=_positive_int, default=DEFAULT_KEEP, help=f"frontier points kept (default {DEFAULT_KEEP})"
    )
    args = parser.parse_args(["simulate", *(sys.argv[1:] if argv is None else argv)])
    loaded = cli.fixed_rows_inputs(args, "offline_routing")
    if loaded is None:
        return 2
    spec, workload, settings = loaded
    began = time.perf_counter()
    runs = run_all(workload, spec, settings, (EBBTIDE, OPTIMUM, OPTIMUM_PLAN), progress=False, jobs=args.jobs)
    bound = runs[OPTIMUM].total_usd
    rows = [routed(runs[name], workload, spec, settings, args.keep) for name in (OPTIMUM_PLAN, EBBTIDE)]
    print(f"workload: {len(workload):,} requests over {workload.duration_s / 86400:.1f} days; pool {args.pool}")
    print(_table(rows, bound))
    best = min(r.routed_usd for r in rows)
    print(
        f"The true optimum lies between ${bound:,.2f} (offline_optimum, a proven lower bound) and "
        f"${best:,.2f} (achieved above). In {time.perf_counter() - began:.1f} s, keeping {args.keep} points; "
        f"SLO: first token within {settings.slo_ttft_seconds:g} s."
    )
    if args.json:
        document = {
            "inputs": {**cli.run_inputs(args, workload, settings), "keep": args.keep},
            "offline_optimum_usd": bound,
            "rows": {
                r.name: {"gpu_usd": r.gpu_usd, "online_usd": r.online_usd, "routed_usd": r.routed_usd, "exact": r.exact}
                for r in rows
            },
        }
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            print(f"offline_routing: error: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
            return 2
    return 0


def _table(rows: list[Routed], bound: float) -> str:
    head = f"{'replicas of':<14}  {'GPU $':>9}  {'online $':>9}  {'×OPT':>5}  "
    head += f"{'routed offline $':>16}  {'×OPT':>5}  exact"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.name:<14}  {r.gpu_usd:>9,.2f}  {r.online_usd:>9,.2f}  {r.online_usd / bound:>5.2f}  "
            f"{r.routed_usd:>16,.2f}  {r.routed_usd / bound:>5.2f}  {'yes' if r.exact else 'no'}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
