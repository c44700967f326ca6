"""Report rows in worker processes: each policy's run and each offline reference is independent.

Workers are forked where the platform allows it (the workload is then shared, not copied), else
spawned. Longest rows are started first so the slowest one does not start last.
"""

from __future__ import annotations

import multiprocessing
import sys
from concurrent.futures import Future, ProcessPoolExecutor, as_completed

from tqdm import tqdm

from controller.sim.runner import EBBTIDE, OPTIMUM, OPTIMUM_PLAN, PolicyRun, RunSettings, run_one
from controller.sim.workload import Workload
from policies.optimum import Optimum
from policies.spec import GPUPoolSpec

__all__ = ["run_parallel"]

# Rough cost of each row relative to a plain policy run, for the start order.
_WEIGHT = {EBBTIDE: 3.0, OPTIMUM_PLAN: 1.5, OPTIMUM: 0.5, "always_on": 0.2, "api_only": 0.2, "lower_bound": 0.0}


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
    """Run every named row in up to `jobs` processes; a worker's exception is raised here."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    show = sys.stderr.isatty() if progress is None else progress
    out: dict[str, PolicyRun] = {}
    with ProcessPoolExecutor(max_workers=min(jobs, len(names)), mp_context=context) as pool:
        futures: dict[Future[PolicyRun], str] = {}
        for name in sorted(names, key=lambda n: -_WEIGHT.get(n, 1.0)):
            futures[pool.submit(run_one, name, workload, spec, settings, False, best)] = name
        bar = tqdm(total=len(futures), desc="rows", unit="row", disable=not show, leave=False)
        for future in as_completed(futures):
            out[futures[future]] = future.result()
            bar.update(1)
        bar.close()
    return out
