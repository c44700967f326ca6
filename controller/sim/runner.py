"""Runs a workload through the controller's own loop with simulated ports, once per policy.

The runner moves a manual clock in control ticks. Between ticks the serving model routes and serves
the arrivals, switching its Ready replicas exactly when a replica finishes its cold start; at each tick
`ControlLoop.reconcile` (the step the daemon runs) observes the simulated world, asks the policy and
scales the simulated Deployment.

Here: that run (`run_policy`), the optimum's plan replayed through it (`optimum_plan_run`) and every row
of the report (`run_one`, `run_all`). The rows' names, the settings and a row's outcome are in
`controller.sim.rows`, the offline bounds' rows in `controller.sim.bounds`; they are importable from here too.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable
from functools import partial

import numpy as np
from tqdm import tqdm

from controller.loop import ControlLoop, Policy, Ports
from controller.ports import PoolRef
from controller.sim.bounds import lower_bound_run, optimum_problem, optimum_run
from controller.sim.engine import PoolEngine, ReplicaModel, RouteCode
from controller.sim.estimates import GatewayEstimate
from controller.sim.rows import (
    EBBTIDE,
    LOWER_BOUND,
    OFFLINE,
    OPTIMUM,
    OPTIMUM_PLAN,
    POLICY_NAMES,
    PolicyRun,
    RunSettings,
    not_on_time,
    request_api_usd,
)
from controller.sim.workload import Workload
from controller.sim.world import DecisionLog, SimClock, SimCluster, SimLedger, SimMetrics, SimReplay
from policies.baselines import Sizing, baseline
from policies.cost import ApiPrice
from policies.optimum import Optimum, offline_optimum
from policies.overflow import Routing
from policies.plan import ReplicaPlan, follow_plan
from policies.spec import GPUPoolSpec
from policies.types import PolicyState

__all__ = [
    "EBBTIDE",
    "LOWER_BOUND",
    "OFFLINE",
    "OPTIMUM",
    "OPTIMUM_PLAN",
    "POLICY_NAMES",
    "PolicyRun",
    "RunSettings",
    "lower_bound_run",
    "not_on_time",
    "optimum_plan_run",
    "optimum_problem",
    "optimum_run",
    "request_api_usd",
    "run_all",
    "run_one",
    "run_policy",
    "sizing_for",
]


def sizing_for(workload: Workload, replica: ReplicaModel) -> Sizing:
    """The busiest hour's work per second (for sizing always_on) and the replica's throughput."""
    work = replica.work_seconds(workload.input_tokens, workload.output_tokens)
    hours = math.ceil(workload.duration_s / 3600.0) or 1
    per_hour = np.bincount((workload.arrival_s // 3600).astype(np.int64), weights=work, minlength=hours)
    span = min(3600.0, max(workload.duration_s, 1.0))
    return Sizing(
        peak_hour_work=float(per_hour.max()) / span if per_hour.size else 0.0,
        prefill_tokens_per_second=replica.prefill_tokens_per_second,
        decode_tokens_per_second=replica.effective_decode_tps,
    )


def _ebbtide_policy() -> Policy:
    from policies.scaling import decide

    return decide


def policy_for(name: str, spec: GPUPoolSpec, sizing: Sizing) -> tuple[Policy, Routing]:
    """The policy function and gateway routing for a name in POLICY_NAMES (not lower_bound)."""
    if name == EBBTIDE:
        return _ebbtide_policy(), Routing.OVERFLOW
    entry = baseline(name)
    if entry.build is None:
        raise ValueError(f"{name} is an offline bound, not a policy to run")
    return entry.build(spec, sizing), entry.routing


def _is_static(name: str) -> bool:
    return name not in (EBBTIDE, OPTIMUM_PLAN) and baseline(name).static


def _ticks(duration: float, step: float) -> Iterable[float]:
    count = math.floor(duration / step) + 1
    return (i * step for i in range(count))


def run_policy(
    name: str,
    workload: Workload,
    spec: GPUPoolSpec,
    settings: RunSettings,
    *,
    policy: Policy | None = None,
    routing: Routing | None = None,
    progress: bool | None = None,
    pool: PoolRef | None = None,
    static: bool | None = None,
) -> PolicyRun:
    """Simulate one policy (by name, or the given function and routing) over the workload.

    A `static` policy (default: as the registry says; False for a given function) is asked until two
    ticks in a row return the same decision unapplied; its later ticks could only repeat it, so they
    are counted in the decision log's reasons without being run.
    """
    if policy is None or routing is None:
        policy, routing = policy_for(name, spec, sizing_for(workload, settings.replica))
        static = _is_static(name) if static is None else static
    pool = pool or PoolRef("sim", "default", spec.target.deployment, spec.target.namespace or "default")
    price = spec.fallback.price
    clock = SimClock(workload.start)
    cluster = SimCluster(clock, spec, gpu_cap=settings.gpu_cap)
    engine = PoolEngine(
        workload,
        settings.replica,
        settings.fallback,
        routing=routing,
        max_wait_seconds=spec.fallback.max_queue_wait_seconds,
        price=price,
        objective_ttft_seconds=spec.objective.ttft_seconds if spec.routes_late_requests else None,
        late_lane=spec.objective.defer_late_requests,
        late_to_fallback=spec.fallback.take_late_requests,
        replay=spec.demand.replay,
        has_fallback=spec.fallback.base_url is not None,  # without one, every request queues on the GPUs
        estimate=None if settings.true_work else GatewayEstimate(spec.demand),
    )
    if routing is Routing.OVERFLOW:
        engine.set_fallback_cap(spec.budget.max_fallback_usd_per_day, spec.budget.on_fallback_cap.value == "reject")
    # The controller replays the requests its gateway reports: only Ebbtide's world has one.
    replay = SimReplay(workload, spec) if routing is Routing.OVERFLOW and spec.demand.replay else None
    metrics = SimMetrics(engine, clock, fail_every=settings.scrape_fail_every, replay=replay)
    ledger = SimLedger(cluster, engine, spec)
    log = DecisionLog(name)
    loop = ControlLoop(Ports(clock, cluster, metrics, ledger, log), policy)
    if settings.initial_replicas:
        cluster.scale(pool, settings.initial_replicas)
        for pod in cluster.pods:
            pod.ready_at = 0.0
        cluster.scale_events = 0
        engine.set_ready(cluster.ready_count(0.0))
    state = PolicyState()
    step = settings.tick_seconds
    steps = math.floor(workload.duration_s / step) + 1
    show = sys.stderr.isatty() if progress is None else progress
    day = ledger.day_start(clock.now())
    times = np.empty(steps)
    ready_series = np.empty(steps, dtype=np.int64)
    desired_series = np.empty(steps, dtype=np.int64)
    previous = 0.0
    repeats: str | None = None  # the reason a static policy repeats from now on
    skipped = 0
    last: tuple[object, ...] | None = None
    for i, t in enumerate(
        tqdm(_ticks(workload.duration_s, step), total=steps, desc=name, disable=not show, unit="tick", leave=False)
    ):
        for ready_at in cluster.ready_times_between(previous, t):
            engine.run_until(ready_at)
            clock.offset = ready_at
            engine.set_ready(cluster.ready_count(ready_at))
        engine.run_until(t)
        clock.offset = t
        engine.set_ready(cluster.ready_count(t))
        today = ledger.day_start(clock.now())
        if today != day:
            day = today
            engine.new_day()
        if repeats is None:
            outcome = loop.reconcile(pool, spec, state)
            state = outcome.state
            if static and outcome.decision is not None and not outcome.applied:
                key = (outcome.decision, len(cluster.pods))
                if key == last:
                    repeats = outcome.decision.reason.value
                last = key
            if outcome.applied:  # otherwise the pods, and so the Ready count, are as before the step
                engine.set_ready(cluster.ready_count(t))
        else:
            skipped += 1
        times[i] = t
        ready_series[i] = engine.ready
        desired_series[i] = len(cluster.pods)
        previous = t
    if repeats is not None and skipped:
        log.reasons[repeats] = log.reasons.get(repeats, 0) + skipped
    engine.finish(workload.duration_s)
    gpu_hours, gpu_usd = ledger.gpu_bill(workload.duration_s)
    fb_in, fb_out = engine.fallback_tokens()
    return PolicyRun(
        name=name,
        requests=len(workload),
        fallback_requests=int(np.count_nonzero(engine.route == RouteCode.FALLBACK)),
        rejected_requests=int(np.count_nonzero(engine.route == RouteCode.REJECT)),
        gpu_hours=gpu_hours,
        gpu_usd=gpu_usd,
        fallback_input_tokens=fb_in,
        fallback_output_tokens=fb_out,
        fallback_usd=engine.fallback_cost_usd(),
        scale_events=cluster.scale_events,
        ttft=engine.ttft,
        slo_ttft_seconds=settings.slo_ttft_seconds,
        total_tokens=workload.total_tokens,
        log=log,
        route=engine.route,
        timeline={"t": times, "ready": ready_series, "replicas": desired_series},
        lifetimes=tuple(cluster.lifetimes(workload.duration_s)),
        slo_priced_usd=gpu_usd + _late_api_usd(workload, price, engine.route, engine.ttft, settings.slo_ttft_seconds),
    )


def _late_api_usd(workload: Workload, price: ApiPrice, route: np.ndarray, ttft: np.ndarray, slo: float) -> float:
    """The fallback's price of every request not served on the GPUs within `slo` (fallback ones included)."""
    return float(request_api_usd(workload, price)[not_on_time(route, ttft, slo)].sum())


def optimum_plan_run(
    workload: Workload,
    spec: GPUPoolSpec,
    settings: RunSettings,
    *,
    progress: bool | None = None,
    best: Optimum | None = None,
) -> PolicyRun:
    """`offline_optimum`'s replica plan run through the simulated world with Ebbtide's gateway.

    Foresight in scaling only (the gateway routes online, as Ebbtide's does): an achievable cost, so
    the true optimum lies between `offline_optimum` and this row's SLO-priced cost.
    """
    best = best or offline_optimum(optimum_problem(workload, spec, settings))
    plan = ReplicaPlan(workload.start, best.slot_start_s, best.ready, float(spec.cold_start_seconds))
    return run_policy(
        OPTIMUM_PLAN,
        workload,
        spec,
        settings,
        policy=partial(follow_plan, plan=plan),
        routing=Routing.OVERFLOW,
        progress=progress,
        static=False,
    )


def run_one(
    name: str,
    workload: Workload,
    spec: GPUPoolSpec,
    settings: RunSettings,
    progress: bool | None,
    best: Optimum | None = None,
) -> PolicyRun:
    """One row of the report: a policy's run, or an offline reference (`best`: the optimum, if known)."""
    if name == LOWER_BOUND:
        return lower_bound_run(workload, spec, settings)
    if name == OPTIMUM:
        return optimum_run(workload, spec, settings, best=best)
    if name == OPTIMUM_PLAN:
        return optimum_plan_run(workload, spec, settings, progress=progress, best=best)
    return run_policy(name, workload, spec, settings, progress=progress)


def run_all(
    workload: Workload,
    spec: GPUPoolSpec,
    settings: RunSettings,
    names: Iterable[str] = POLICY_NAMES,
    *,
    progress: bool | None = None,
    on_done: Callable[[PolicyRun], None] | None = None,
    jobs: int = 1,
) -> dict[str, PolicyRun]:
    """Every named policy (and reference) on the same workload, in report order.

    With `jobs` > 1 the rows run in that many worker processes (each row is independent and
    deterministic, so the results are the same); progress is then one bar over finished rows.
    """
    order = list(dict.fromkeys(names))
    if jobs <= 1 or len(order) <= 1:
        # Both the optimum's row and its plan's need the optimum: solve it once.
        both = {OPTIMUM, OPTIMUM_PLAN} <= set(order)
        best = offline_optimum(optimum_problem(workload, spec, settings)) if both else None
        out: dict[str, PolicyRun] = {}
        for name in order:
            out[name] = run_one(name, workload, spec, settings, progress, best)
            if on_done is not None:
                on_done(out[name])
        return out
    from controller.sim.parallel import run_parallel

    done = run_parallel(order, workload, spec, settings, jobs=jobs, progress=progress)
    out = {name: done[name] for name in order}
    if on_done is not None:
        for run in out.values():
            on_done(run)
    return out
