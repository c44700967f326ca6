"""Report rows in worker processes: each policy's run and each offline reference is independent.

Workers are forked where the platform allows it (the workload is then shared, not copied), else
spawned. Each free worker takes the costliest row not yet started, so the slowest one does not start last.
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

__all__ = ["process_pool", "run_parallel"]

# Each row's CPU seconds on the default week (measured with `--jobs 1`), for the start order: the
# costliest pending row goes to the next free worker, so the slowest rows never start last.
_WEIGHT = {
    EBBTIDE: 3.4,
    "hpa": 2.2,
    "keda": 2.2,
    OPTIMUM_PLAN: 1.8,
    "always_on": 0.2,
    "api_only": 0.2,
    OPTIMUM: 0.05,
    "lower_bound": 0.0,
}


def process_pool(workers: int) -> ProcessPoolExecutor:
    """Worker processes, forked where the platform allows it (the workload is shared, not copied)."""
    methods = multiprocessing.get_all_start_methods()
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("fork" if "fork" in methods else None)
    )


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
    show = sys.stderr.isatty() if progress is None else progress
    needs_best = (
        [n for n in names if n in (OPTIMUM, OPTIMUM_PLAN)]
        if best is None and {OPTIMUM, OPTIMUM_PLAN} <= set(names)
        else []
    )
    out: dict[str, PolicyRun] = {}
    workers = min(jobs, len(names))
    # Rows are handed out one per free worker (the pool's own queue would run them in submission order).
    waiting = sorted((n for n in names if n not in needs_best), key=lambda n: -_WEIGHT.get(n, 2.0))
    with process_pool(workers) as pool:
        solving: Future[Optimum] | None = pool.submit(_solve, workload, spec, settings) if needs_best else None
        solved: Optimum | None = best
        futures: dict[Future[PolicyRun], str] = {}
        bar = tqdm(total=len(names), desc="rows", unit="row", disable=not show, leave=False)
        pending: set[Future[Any]] = {*([solving] if solving is not None else [])}
        while True:
            while waiting and len(pending) < workers:
                name = waiting.pop(0)
                started = pool.submit(run_one, name, workload, spec, settings, False, solved)
                futures[started] = name
                pending.add(started)
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            pending -= done
            for future in done:
                if future is solving:
                    solved = solving.result()
                    waiting = sorted([*waiting, *needs_best], key=lambda n: -_WEIGHT.get(n, 2.0))
                    continue
                out[futures[future]] = future.result()
                bar.update(1)
        bar.close()
    return out
