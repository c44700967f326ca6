"""Runs a workload through the controller's own loop with simulated ports, once per policy.

The runner moves a manual clock in control ticks. Between ticks the serving model routes and serves
the arrivals, switching its Ready replicas exactly when a replica finishes its cold start; at each tick
`ControlLoop.reconcile` (the step the daemon runs) observes the simulated world, asks the policy and
scales the simulated Deployment.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import numpy as np
from tqdm import tqdm

from controller.loop import ControlLoop, Policy, Ports
from controller.ports import PoolRef
from controller.sim.engine import FallbackModel, PoolEngine, ReplicaModel, RouteCode
from controller.sim.estimates import GatewayEstimate
from controller.sim.workload import Workload
from controller.sim.world import DecisionLog, SimClock, SimCluster, SimLedger, SimMetrics, SimReplay
from policies.baselines import BASELINES, Sizing, baseline
from policies.cost import ApiPrice
from policies.lower_bound import lower_bound
from policies.optimum import Optimum, OptimumProblem, offline_optimum
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

EBBTIDE = "ebbtide"
LOWER_BOUND = "lower_bound"
OPTIMUM = "offline_optimum"
OPTIMUM_PLAN = "optimum_plan"
OFFLINE: tuple[str, ...] = (LOWER_BOUND, OPTIMUM)
"""Rows computed offline, with no policy to run."""
POLICY_NAMES: tuple[str, ...] = (EBBTIDE, *(b.name for b in BASELINES), OPTIMUM_PLAN)
"""Report order: Ebbtide first, then the registry's baselines (sorted), then the optimum's plan replayed."""


@dataclass(frozen=True, slots=True)
class RunSettings:
    """How the simulated world behaves, beyond the pool's own spec."""

    replica: ReplicaModel = field(default_factory=ReplicaModel)
    fallback: FallbackModel = field(default_factory=FallbackModel)
    tick_seconds: float = 15.0
    """Control-loop period in simulated time."""
    gpu_cap: int | None = None
    """GPUs available to the pool; replicas beyond stay Pending (None: unlimited)."""
    initial_replicas: int = 0
    """Replicas running (and Ready) when the simulation starts."""
    scrape_fail_every: int = 0
    """Every n-th metrics read fails (0: never), to see the no-data handling at work."""
    slo_ttft_seconds: float = 2.0
    true_work: bool = False
    """Ebbtide's gateway routes on each request's true work, an idealized gateway; by default it routes
    on the work ahead as the shipped gateway estimates it (`estimates`). The baselines (plain vLLM, no
    gateway) are unaffected."""


@dataclass(slots=True)
class PolicyRun:
    """One policy's outcome on one workload."""

    name: str
    requests: int
    fallback_requests: int
    rejected_requests: int
    gpu_hours: float
    gpu_usd: float
    fallback_input_tokens: int
    fallback_output_tokens: int
    fallback_usd: float
    scale_events: int | None
    ttft: np.ndarray | None
    slo_ttft_seconds: float
    total_tokens: int
    log: DecisionLog | None = None
    route: np.ndarray | None = None
    """Per-request route codes (engine.RouteCode), for cost over time."""
    timeline: dict[str, np.ndarray] = field(default_factory=dict)
    lifetimes: tuple[tuple[float, float], ...] = ()
    """(billing start, end) of every replica that held a GPU, in seconds from the start (policy runs)."""
    slo_priced_usd: float | None = None
    """GPU $ plus the fallback's price of every request not served on the GPUs within the SLO: what
    the run costs when each late request is priced as sent to the API (comparable to offline_optimum)."""

    @property
    def total_usd(self) -> float:
        """GPU plus fallback spend."""
        return self.gpu_usd + self.fallback_usd

    @property
    def usd_per_million_tokens(self) -> float:
        """Effective price of 1M tokens served."""
        return self.total_usd / self.total_tokens * 1e6 if self.total_tokens else math.inf

    def ttft_percentile(self, q: float) -> float | None:
        """TTFT percentile in seconds (None without per-request latencies)."""
        if self.ttft is None or self.ttft.size == 0:
            return None
        return float(np.percentile(self.ttft, q))

    @property
    def slo_attainment(self) -> float | None:
        """Share of requests whose first token came within the SLO."""
        if self.ttft is None or self.ttft.size == 0:
            return None
        return float(np.count_nonzero(self.ttft <= self.slo_ttft_seconds)) / self.ttft.size


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
        objective_ttft_seconds=spec.objective.ttft_seconds if spec.objective.defer_late_requests else None,
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


def request_api_usd(workload: Workload, price: ApiPrice) -> np.ndarray:
    """What the fallback charges for each request of the workload."""
    return np.asarray(
        (workload.input_tokens * price.input_usd_per_million + workload.output_tokens * price.output_usd_per_million)
        / 1e6,
        dtype=np.float64,
    )


def not_on_time(route: np.ndarray, ttft: np.ndarray, slo: float) -> np.ndarray:
    """Requests not served on the GPUs within `slo` (fallback ones included): those ×OPT prices at the API."""
    return np.asarray(~((route == RouteCode.GPU) & (ttft <= slo)))


def _late_api_usd(workload: Workload, price: ApiPrice, route: np.ndarray, ttft: np.ndarray, slo: float) -> float:
    """The fallback's price of every request not served on the GPUs within `slo` (fallback ones included)."""
    return float(request_api_usd(workload, price)[not_on_time(route, ttft, slo)].sum())


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
