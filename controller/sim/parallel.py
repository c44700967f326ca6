"""Report rows in worker processes: each policy's run and each offline reference is independent.

Workers are forked where the platform allows it (the workload is then shared, not copied), else
spawned. Longest rows are started first so the slowest one does not start last.
"""

from __future__ import annotations

import multiprocessing
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from tqdm import tqdm

from controller.sim.runner import EBBTIDE, OPTIMUM, OPTIMUM_PLAN, PolicyRun, RunSettings, optimum_problem, run_one
from controller.sim.workload import Workload
from policies.optimum import Optimum, offline_optimum
from policies.spec import GPUPoolSpec

__all__ = ["run_parallel"]

# Rough cost of each row relative to a plain policy run, for the start order.
_WEIGHT = {EBBTIDE: 3.0, OPTIMUM_PLAN: 1.5, OPTIMUM: 0.5, "always_on": 0.2, "api_only": 0.2, "lower_bound": 0.0}


def _solve(workload: Workload, spec: GPUPoolSpec, settings: RunSettings) -> Optimum:
    return offline_optimum(optimum_problem(workload, spec, settings))


def run_parallel(
    names: list[str],
    workload: Workload,
    spec: GPUPoolSpec,
    settings: RunSettings,
    *,
    jobs: int,
    progress: bool | None = None,
    best: Optimum | None = None,
) -> dict[str, PolicyRun]:
    """Run every named row in up to `jobs` processes; a worker's exception is raised here.

    When both the optimum's row and its plan's are asked for and `best` is not given, one worker solves
    the optimum first and both rows are queued once it is known, while the policies already run.
    """
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    show = sys.stderr.isatty() if progress is None else progress
    needs_best = (
        [n for n in names if n in (OPTIMUM, OPTIMUM_PLAN)]
        if best is None and {OPTIMUM, OPTIMUM_PLAN} <= set(names)
        else []
    )
    out: dict[str, PolicyRun] = {}
    with ProcessPoolExecutor(max_workers=min(jobs, len(names)), mp_context=context) as pool:
        solving: Future[Optimum] | None = pool.submit(_solve, workload, spec, settings) if needs_best else None
        futures: dict[Future[PolicyRun], str] = {}
        for name in sorted((n for n in names if n not in needs_best), key=lambda n: -_WEIGHT.get(n, 1.0)):
            futures[pool.submit(run_one, name, workload, spec, settings, False, best)] = name
        bar = tqdm(total=len(names), desc="rows", unit="row", disable=not show, leave=False)
        pending: set[Future[Any]] = {*futures, *([solving] if solving is not None else [])}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                if future is solving:
                    solved = solving.result()
                    for name in needs_best:
                        queued = pool.submit(run_one, name, workload, spec, settings, False, solved)
                        futures[queued] = name
                        pending.add(queued)
                    continue
                out[futures[future]] = future.result()
                bar.update(1)
        bar.close()
    return out
