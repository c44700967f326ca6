"""The offline bounds as report rows: the fluid lower bound and the offline optimum.

Costs without latencies (a bound is not a schedule): `lower_bound_run` and `optimum_run`, and the
constrained problem the optimum solves for a workload in the simulated world (`optimum_problem`). The
optimum's replica plan run through the simulated world is `controller.sim.runner.optimum_plan_run`.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from controller.sim.rows import LOWER_BOUND, OPTIMUM, PolicyRun, RunSettings, request_api_usd
from controller.sim.workload import Workload
from policies.lower_bound import lower_bound
from policies.optimum import Optimum, OptimumProblem, offline_optimum
from policies.spec import GPUPoolSpec

__all__ = ["lower_bound_run", "optimum_problem", "optimum_run", "serving_lanes"]


def lower_bound_run(workload: Workload, spec: GPUPoolSpec, settings: RunSettings) -> PolicyRun:
    """The offline lower bound as a report row (no latencies, no scale events)."""
    bound = lower_bound(
        workload.arrival_s,
        workload.input_tokens,
        workload.output_tokens,
        settings.replica.work_seconds(workload.input_tokens, workload.output_tokens),
        period_seconds=float(spec.billing.granularity.seconds),
        replica_usd_per_hour=spec.replica_usd_per_hour,
        gpus_per_replica=spec.target.gpus_per_replica,
        price=spec.fallback.price,
    )
    return _bound_row(LOWER_BOUND, workload, settings, bound)


def serving_lanes(spec: GPUPoolSpec) -> int:
    """The FIFO lanes a request can be on time in, in the simulated world of every policy of the report.

    Plain vLLM (the baselines) has one lane. Ebbtide's gateway adds the late lane only where a request
    that would miss the objective can be queued there: with `objective.deferLateRequests`, unless it goes
    to a fallback that is always open instead (`fallback.takeLateRequests` with a provider and no daily
    fallback cap, which would close it). A request queues in the late lane only when its expected first
    token is late, but the estimate can err, so a late-lane request may yet be on time: where that lane
    is reachable the bound counts two lanes.
    """
    if not spec.objective.defer_late_requests:
        return 1
    always_open = spec.fallback.base_url is not None and spec.budget.max_fallback_usd_per_day is None
    return 1 if spec.fallback.take_late_requests and always_open else 2


def optimum_problem(workload: Workload, spec: GPUPoolSpec, settings: RunSettings) -> OptimumProblem:
    """The constrained problem `offline_optimum` solves: this workload in this simulated world."""
    replica = settings.replica
    price = spec.fallback.price
    top = spec.target.max_replicas
    if settings.gpu_cap is not None:
        top = min(top, settings.gpu_cap // spec.target.gpus_per_replica)
    return OptimumProblem(
        arrival_s=workload.arrival_s,
        # The engine's work: every request takes at least a moment of a replica.
        work_s=np.maximum(replica.work_seconds(workload.input_tokens, workload.output_tokens), 1e-6),
        prefill_s=workload.input_tokens / replica.prefill_tokens_per_second,
        api_usd=request_api_usd(workload, price),
        horizon_s=max(workload.duration_s, settings.tick_seconds),
        step_s=settings.tick_seconds,
        cold_start_s=float(spec.cold_start_seconds),
        objective_s=settings.slo_ttft_seconds,
        max_replicas=top,
        replica_usd_per_hour=spec.replica_usd_per_hour,
        gpus_per_replica=spec.target.gpus_per_replica,
        initial_replicas=min(settings.initial_replicas, top),
        lanes=serving_lanes(spec),
        billing_unit_s=float(spec.billing.granularity.seconds),
        minimum_billed_s=float(spec.billing.minimum_billed_seconds),
    )


def optimum_run(
    workload: Workload, spec: GPUPoolSpec, settings: RunSettings, *, best: Optimum | None = None
) -> PolicyRun:
    """`offline_optimum` as a report row (no latencies: it is a bound, not a schedule); `best` if known."""
    best = best or offline_optimum(optimum_problem(workload, spec, settings))
    row = _bound_row(OPTIMUM, workload, settings, best)
    row.timeline = {"t": best.slot_start_s, "ready": best.ready}
    row.slo_priced_usd = best.total_usd
    return row


class _Bound(Protocol):
    """What a bound's report row reads: the fluid lower bound's result and the optimum both have it."""

    @property
    def fallback_requests(self) -> float: ...
    @property
    def gpu_hours(self) -> float: ...
    @property
    def gpu_usd(self) -> float: ...
    @property
    def fallback_usd(self) -> float: ...


def _bound_row(name: str, workload: Workload, settings: RunSettings, bound: _Bound) -> PolicyRun:
    """A report row for a bound: costs without latencies (it is not a schedule)."""
    return PolicyRun(
        name=name,
        requests=len(workload),
        fallback_requests=round(bound.fallback_requests),
        rejected_requests=0,
        gpu_hours=bound.gpu_hours,
        gpu_usd=bound.gpu_usd,
        fallback_input_tokens=0,
        fallback_output_tokens=0,
        fallback_usd=bound.fallback_usd,
        scale_events=None,
        ttft=None,
        slo_ttft_seconds=settings.slo_ttft_seconds,
        total_tokens=workload.total_tokens,
    )
