"""Foresight: what scaling would cost if the load of each block of time were known in advance.

    python -m controller.sim.foresight [the options of `ebbtide simulate`] [--blocks 60,15,5] [--json F]

(`--policy`, `--plot` and `--decisions` are refused: the rows are fixed.)

`offline_optimum` knows every request to the second; an online policy such as Ebbtide's knows only the
past. This measures what lies between: how much a forecast of each block of `--blocks` minutes could
buy, with the same replicas, cold starts, billing and gateway as every row of `ebbtide simulate`.

Method. For every Ready count `k` from 0 to the pool's maximum (or `--gpu-cap`), the workload runs
through the simulated world with `k` replicas asked for throughout (`policies.plan.follow_plan`,
Ebbtide's gateway routing). In each block, `k` costs its replicas' price for the block plus the
fallback price of every request arriving in it that was not served on the GPUs within the objective
(the SLO-priced cost of the report's ×OPT column). The plan takes the counts of least total cost, each
replica started paying one cold start (a DP over blocks), and the workload runs once more following
it, each block's replicas started one cold start ahead. That run's row is printed, as achieved: its
billing and routing are the simulated world's, not the estimate's.

Hindsight rows. The same constant runs also give a plan that needs only the past: at each block's
start, the count that would have cost least over the hour before it is asked for, Ready one cold start
later (block 0 keeps the initial count). It is what an online policy could do if it replayed the last
hour's requests through `k` replicas for every `k` (the gateway sees each request it routes),
re-deciding once a block; Ebbtide's `replay` rule does so at every tick.

What it is, and is not. A foresight row is an achievable cost for a planner that knows each block's
outcome and holds one count through it. It is not a bound: a policy that also reacts within a block can do better
than the block's one count, and blocks run in sequence are not quite the constant runs they were
picked from. Read it as the price of a forecast: what scaling to a perfect forecast at that horizon
costs, against what Ebbtide pays without one. It measures the simulated world; it asserts nothing.
The plans are chosen on GPU time by the second (a start pays its cold start): with coarser billing
their rows, billed as the pool is, pay for time the plan did not count, and a note says so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
import time
from collections.abc import Sequence
from functools import partial

import numpy as np
import numpy.typing as npt

from controller.sim import cli
from controller.sim.parallel import process_pool
from controller.sim.report import render_table, to_json
from controller.sim.runner import (
    EBBTIDE,
    LOWER_BOUND,
    OPTIMUM,
    OPTIMUM_PLAN,
    PolicyRun,
    RunSettings,
    not_on_time,
    optimum_problem,
    run_all,
    run_policy,
)
from controller.sim.workload import Workload
from policies.optimum import OptimumProblem
from policies.overflow import Routing
from policies.plan import ReplicaPlan, follow_plan
from policies.spec import GPUPoolSpec

__all__ = [
    "block_costs",
    "block_plan",
    "block_replica_plan",
    "constant_unsaved",
    "foresight_run",
    "hindsight_plan",
    "ladder",
    "main",
    "parse_blocks",
    "unsaved",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

DEFAULT_BLOCKS = (60.0, 15.0, 5.0)
"""Block lengths in minutes: an hour, a quarter, five minutes."""
HINDSIGHT_S = 3600.0
"""The past a hindsight row looks back on: the last hour, as Ebbtide's own mean does."""


def parse_blocks(text: str) -> tuple[float, ...]:
    """`60,15,5` as minutes; an argparse error naming the bad part otherwise."""
    out = []
    for part in text.split(","):
        try:
            minutes = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part.strip()!r} is not a number of minutes") from None
        if not math.isfinite(minutes) or minutes <= 0:
            raise argparse.ArgumentTypeError(f"block length must be > 0 minutes, got {part.strip()!r}")
        out.append(minutes)
    return tuple(dict.fromkeys(out))


def _plan_run(name: str, workload: Workload, spec: GPUPoolSpec, settings: RunSettings, plan: ReplicaPlan) -> PolicyRun:
    policy = partial(follow_plan, plan=plan)
    return run_policy(
        name, workload, spec, settings, policy=policy, routing=Routing.OVERFLOW, progress=False, static=False
    )


def unsaved(run: PolicyRun) -> BoolArray:
    """Requests a run did not serve on the GPUs within its SLO (the ones ×OPT prices at the fallback)."""
    if run.route is None or run.ttft is None:
        raise ValueError(f"{run.name}: a bound's row has no per-request outcome")
    return not_on_time(run.route, run.ttft, run.slo_ttft_seconds)


def constant_unsaved(workload: Workload, spec: GPUPoolSpec, settings: RunSettings, k: int) -> BoolArray:
    """Which requests `k` replicas, asked for throughout, leave unserved within the SLO."""
    plan = ReplicaPlan(workload.start, np.zeros(1), np.array([k], dtype=np.int64), float(spec.cold_start_seconds))
    return unsaved(_plan_run(f"constant_{k}", workload, spec, settings, plan))


def block_costs(
    arrival_s: FloatArray,
    api_usd: FloatArray,
    unsaved_by_k: Sequence[BoolArray],
    *,
    horizon_s: float,
    block_s: float,
    replica_usd_per_hour: float,
) -> FloatArray:
    """cost[k, b]: k replicas' price over block b plus the fallback price of b's unsaved requests."""
    if block_s <= 0 or horizon_s <= 0:
        raise ValueError("block and horizon must be > 0 s")
    blocks = max(math.ceil(horizon_s / block_s - 1e-9), 1)
    starts = np.arange(blocks) * block_s
    lengths = np.minimum(starts + block_s, horizon_s) - starts
    index = np.clip((arrival_s // block_s).astype(np.int64), 0, blocks - 1)
    out = np.empty((len(unsaved_by_k), blocks))
    for k, mask in enumerate(unsaved_by_k):
        fallback = np.bincount(index, weights=np.where(mask, api_usd, 0.0), minlength=blocks)
        out[k] = k * replica_usd_per_hour * lengths / 3600.0 + fallback
    return out


def block_plan(costs: FloatArray, start_usd: float = 0.0, initial: int = 0) -> IntArray:
    """The counts per block of least total cost, each rise paying `start_usd` per replica started.

    A DP over blocks (state: the count), so that a block's cheapest count is not bought when starting
    it costs more than it saves; on a tie the fewer replicas. `initial` is the count before block 0.
    """
    counts, blocks = costs.shape
    k = np.arange(counts)
    rise = start_usd * np.maximum(k[None, :] - k[:, None], 0)  # rise[previous, next]
    best = costs[:, 0] + rise[min(initial, counts - 1)]
    choice = np.zeros((blocks, counts), dtype=np.int64)
    for b in range(1, blocks):
        total = best[:, None] + rise
        choice[b] = np.argmin(total, axis=0)
        best = total[choice[b], k] + costs[:, b]
    path = np.empty(blocks, dtype=np.int64)
    path[-1] = int(np.argmin(best))
    for b in range(blocks - 1, 0, -1):
        path[b - 1] = choice[b, path[b]]
    return path


def hindsight_plan(costs: FloatArray, window: int, initial: int = 0) -> IntArray:
    """Each block's count from the past only: the one of least cost over the `window` blocks before it.

    Block 0 has no past and keeps `initial`; a tie takes the fewer replicas.
    """
    if window < 1:
        raise ValueError("the window must hold at least one block")
    counts, blocks = costs.shape
    before = np.concatenate((np.zeros((counts, 1)), np.cumsum(costs, axis=1)), axis=1)
    ends = np.arange(blocks)
    past = before[:, ends] - before[:, np.maximum(ends - window, 0)]
    out = np.asarray(np.argmin(past, axis=0), dtype=np.int64)
    out[0] = min(initial, counts - 1)
    return out


def foresight_run(
    workload: Workload,
    spec: GPUPoolSpec,
    settings: RunSettings,
    block_s: float,
    unsaved_by_k: Sequence[BoolArray],
    problem: OptimumProblem,
    *,
    hindsight: bool = False,
) -> PolicyRun:
    """The run that follows each block's cheapest count, or with `hindsight` the count of least cost
    over the hour before each block (see the module docstring); `problem` gives the horizon and prices."""
    costs = block_costs(
        workload.arrival_s,
        problem.api_usd,
        unsaved_by_k,
        horizon_s=problem.horizon_s,
        block_s=block_s,
        replica_usd_per_hour=spec.replica_usd_per_hour,
    )
    if hindsight:
        window = max(round(HINDSIGHT_S / block_s), 1)
        counts = hindsight_plan(costs, window, settings.initial_replicas)
        name = f"hindsight_{block_s / 60:g}m"
    else:
        start_usd = spec.replica_usd_per_hour * spec.cold_start_seconds / 3600.0
        counts = block_plan(costs, start_usd, settings.initial_replicas)
        name = f"foresight_{block_s / 60:g}m"
    plan = block_replica_plan(workload.start, counts, block_s, float(spec.cold_start_seconds), hindsight=hindsight)
    return _plan_run(name, workload, spec, settings, plan)


def block_replica_plan(
    start: dt.datetime, counts: IntArray, block_s: float, cold_start_s: float, *, hindsight: bool
) -> ReplicaPlan:
    """The replica plan of per-block counts: a foresight plan has each block's count Ready at its start
    (asked for one cold start ahead); a hindsight count is decided at its block's start from the hour
    before it, so its replicas are Ready one cold start later (asking earlier would see the future)."""
    starts = np.arange(counts.size, dtype=np.float64) * block_s
    if hindsight:
        starts = starts + cold_start_s
    return ReplicaPlan(start, starts, counts, cold_start_s)


def _row(
    workload: Workload,
    spec: GPUPoolSpec,
    settings: RunSettings,
    masks: Sequence[BoolArray],
    problem: OptimumProblem,
    job: tuple[float, bool],
) -> PolicyRun:
    block_s, hindsight = job
    return foresight_run(workload, spec, settings, block_s, masks, problem, hindsight=hindsight)


def ladder(
    workload: Workload, spec: GPUPoolSpec, settings: RunSettings, blocks_min: Sequence[float], jobs: int
) -> dict[str, PolicyRun]:
    """Ebbtide, a hindsight and a foresight row per block length, the optimum's plan and the references."""
    problem = optimum_problem(workload, spec, settings)  # its pool size, horizon and prices are the optimum's own
    counts = range(problem.max_replicas + 1)
    plans = [(b * 60.0, True) for b in blocks_min] + [(b * 60.0, False) for b in blocks_min]
    if jobs > 1:
        with process_pool(jobs) as pool:
            masks = list(pool.map(partial(constant_unsaved, workload, spec, settings), counts))
            rows = list(pool.map(partial(_row, workload, spec, settings, masks, problem), plans))
    else:
        masks = [constant_unsaved(workload, spec, settings, k) for k in counts]
        rows = [_row(workload, spec, settings, masks, problem, job) for job in plans]
    runs = run_all(workload, spec, settings, [EBBTIDE, OPTIMUM_PLAN, OPTIMUM, LOWER_BOUND], progress=False, jobs=jobs)
    out = {EBBTIDE: runs[EBBTIDE]}
    out.update({r.name: r for r in rows})
    out.update({n: runs[n] for n in (OPTIMUM_PLAN, OPTIMUM, LOWER_BOUND)})
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the ladder for the workload `ebbtide simulate`'s options describe; 2 on bad input."""
    parser, simulate = cli.fixed_rows_parser("python -m controller.sim.foresight")
    simulate.add_argument(
        "--blocks",
        type=parse_blocks,
        default=DEFAULT_BLOCKS,
        help="block lengths in minutes, comma-separated (default 60,15,5)",
    )
    args = parser.parse_args(["simulate", *(sys.argv[1:] if argv is None else argv)])
    # The ladder's rows are fixed: options that choose rows or write what it does not make are refused.
    loaded = cli.fixed_rows_inputs(args, "foresight")
    if loaded is None:
        return 2
    spec, workload, settings = loaded
    if spec.billing.granularity.seconds > 1:
        print(
            f"foresight: note: the plans are chosen on GPU time by the second; billed by the "
            f"{spec.billing.granularity.value}, their rows pay for time they did not plan for",
            file=sys.stderr,
        )
    began = time.perf_counter()
    runs = ladder(workload, spec, settings, args.blocks, args.jobs)
    print(f"workload: {len(workload):,} requests over {workload.duration_s / 86400:.1f} days; pool {args.pool}")
    print(render_table(runs))
    print(f"(in {time.perf_counter() - began:.1f} s; SLO: first token within {settings.slo_ttft_seconds:g} s)")
    if args.json:
        inputs = {**cli.run_inputs(args, workload, settings), "blocks_min": list(args.blocks)}
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(to_json(runs, inputs), indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            print(f"foresight: error: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
