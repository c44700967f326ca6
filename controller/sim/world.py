"""The simulated world behind the control loop's ports: clock, cluster, metrics, ledger, recorder.

The cluster starts replicas that become Ready after the cold start, bills each from the moment it is
scheduled onto a GPU, and can be given a cap on available GPUs (replicas beyond it stay Pending and
unbilled until a GPU frees). Scale-downs remove Pending replicas first, then starting ones, then the
newest Ready ones, as a Deployment's ReplicaSet does.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from controller.daemon.decisionlog import DecisionFilter
from controller.demand.aggregate import GatewayCounters, GatewaySeries, ReadingWindow, aggregate
from controller.ports import NoData, PoolRef, ReplicaStatus, StepReport, Usage
from controller.scrape.sample import EngineSample
from controller.sim.engine import PoolEngine
from controller.sim.workload import Workload
from policies.billing import gpu_cost_usd
from policies.replay import Replay, request_terms
from policies.spec import GPUPoolSpec
from policies.types import DemandSample

__all__ = ["DecisionLog", "Pod", "SimClock", "SimCluster", "SimLedger", "SimMetrics", "SimReplay"]


class SimClock:
    """A manual clock the runner moves forward."""

    def __init__(self, start: dt.datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("the simulation start must be timezone-aware")
        self.start = start
        self.offset = 0.0
        self._now = (0.0, start)

    def now(self) -> dt.datetime:
        """The current simulated moment."""
        # Asked several times per tick; the same offset gives the same (immutable) moment.
        offset, moment = self._now
        if offset != self.offset:
            moment = self.start + dt.timedelta(seconds=self.offset)
            self._now = (self.offset, moment)
        return moment

    def at(self, offset: float) -> dt.datetime:
        """The moment `offset` seconds after the start."""
        return self.start + dt.timedelta(seconds=offset)


@dataclass(slots=True)
class Pod:
    """One replica: scheduled (billed) from `scheduled_at`, Ready from `ready_at`, gone at `removed_at`."""

    created_at: float
    scheduled_at: float | None = None
    ready_at: float | None = None
    removed_at: float | None = None


class SimCluster:
    """A Deployment whose replicas take `cold_start` seconds to become Ready, on at most `gpu_cap` GPUs."""

    def __init__(self, clock: SimClock, spec: GPUPoolSpec, *, gpu_cap: int | None = None) -> None:
        self.clock = clock
        self.cold_start = float(spec.cold_start_seconds)
        self.gpus_per_replica = spec.target.gpus_per_replica
        self.gpu_cap = gpu_cap
        self.pods: list[Pod] = []
        self.finished: list[Pod] = []
        self.scale_events = 0
        self._starts: tuple[dt.datetime, ...] | None = None
        """The live pods' billing starts; cleared whenever `scale` changes the pods."""

    def replicas(self, pool: PoolRef) -> ReplicaStatus:
        """Current and ready replicas with their billing starts."""
        now = self.clock.offset
        ready = sum(1 for p in self.pods if p.ready_at is not None and p.ready_at <= now)
        starts = self._starts
        if starts is None:
            starts = tuple(self.clock.at(p.scheduled_at) for p in self.pods if p.scheduled_at is not None)
            self._starts = starts
        return ReplicaStatus(current=len(self.pods), ready=ready, billing_starts=starts)

    def ready_count(self, at: float) -> int:
        """Replicas Ready at `at`."""
        return sum(1 for p in self.pods if p.ready_at is not None and p.ready_at <= at)

    def ready_times_between(self, after: float, until: float) -> list[float]:
        """Moments in (after, until] at which a replica becomes Ready, sorted."""
        return sorted(p.ready_at for p in self.pods if p.ready_at is not None and after < p.ready_at <= until)

    def scale(self, pool: PoolRef, replicas: int) -> None:
        """Set the desired replicas now."""
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {replicas}")
        now = self.clock.offset
        if replicas == len(self.pods):
            return
        self.scale_events += 1
        self._starts = None
        while len(self.pods) < replicas:
            self.pods.append(Pod(created_at=now))
        if len(self.pods) > replicas:
            # Pending first, then not yet Ready (latest first), then the newest Ready.
            def victim_order(p: Pod) -> tuple[int, float]:
                if p.scheduled_at is None:
                    return (0, -p.created_at)
                if p.ready_at is None or p.ready_at > now:
                    return (1, -p.created_at)
                return (2, -p.created_at)

            doomed = sorted(self.pods, key=victim_order)[: len(self.pods) - replicas]
            for pod in doomed:
                pod.removed_at = now
                if pod.scheduled_at is not None:
                    self.finished.append(pod)
            ids = {id(p) for p in doomed}
            self.pods = [p for p in self.pods if id(p) not in ids]
        self._schedule(now)

    def _schedule(self, now: float) -> None:
        """Put Pending pods on free GPUs; each starts its cold start when scheduled."""
        running = sum(1 for p in self.pods if p.scheduled_at is not None)
        for pod in self.pods:
            if pod.scheduled_at is not None:
                continue
            if self.gpu_cap is not None and (running + 1) * self.gpus_per_replica > self.gpu_cap:
                break
            pod.scheduled_at = now
            pod.ready_at = now + self.cold_start
            running += 1

    def lifetimes(self, until: float) -> list[tuple[float, float]]:
        """(billing start, end) of every pod that held a GPU, open ones ending at `until`."""
        out = [(p.scheduled_at, p.removed_at) for p in self.finished if p.scheduled_at is not None]
        out += [(p.scheduled_at, until) for p in self.pods if p.scheduled_at is not None]
        return [(s, e) for s, e in out if s is not None and e is not None]


class SimMetrics:
    """Demand as the engines and the gateway report it, read through the daemon's own aggregate.

    The serving model emits what real processes export: one EngineSample per Ready replica (its share
    of waiting and running requests) and the gateway's cumulative counters (offered and saturation
    tokens, requests held at zero Ready replicas, requests in flight at the fallback);
    `controller.demand.aggregate` turns them into the DemandSample, with rates over the engine's rate
    window, exactly as the daemon's poller does.
    """

    def __init__(
        self, engine: PoolEngine, clock: SimClock, *, fail_every: int = 0, replay: SimReplay | None = None
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.fail_every = fail_every
        self.replay = replay
        self.reads = 0
        self.window = ReadingWindow(engine.rate_window_seconds)
        self._names: list[str] = []
        """Replica names by index, made once."""

    def _gateway(self, held: float, in_flight: float) -> GatewayCounters:
        """The simulated gateway's counters: tokens of every request that has arrived (offered load)."""
        prompt, completion, saturation, beyond_prompt, beyond_completion = self.engine.routed_tokens()
        series = GatewaySeries(
            prompt_tokens_total=float(prompt),
            completion_tokens_total=float(completion),
            saturation_tokens_total=float(saturation),
            beyond_prompt_tokens_total=float(beyond_prompt),
            beyond_completion_tokens_total=float(beyond_completion),
            fallback_usd_total=self.engine.fallback_usd_day,
            fallback_in_flight=in_flight,
            held=held,
        )
        return GatewayCounters({"sim-gateway": series})

    def _engines(self, waiting: int, running: int) -> dict[str, EngineSample]:
        """One sample per Ready replica, the pool's queue shared out as evenly as whole requests go."""
        ready = self.engine.ready
        out: dict[str, EngineSample] = {}
        names = self._names
        while len(names) < ready:
            names.append(f"replica-{len(names)}")
        previous: EngineSample | None = None
        for i in range(ready):
            replica_waiting = waiting // ready + (1 if i < waiting % ready else 0)
            replica_running = running // ready + (1 if i < running % ready else 0)
            # Samples are frozen: replicas with the same share can hold the same one.
            if previous is None or (previous.waiting, previous.running) != (replica_waiting, replica_running):
                previous = EngineSample(
                    waiting=replica_waiting,
                    running=replica_running,
                    kv_cache_usage=None,
                    prompt_tokens_total=None,
                    generation_tokens_total=None,
                    request_success_total=None,
                    admission_rejections_total=None,
                    engines=1,
                )
            out[names[i]] = previous
        return out

    def sample(self, pool: PoolRef, now: dt.datetime) -> DemandSample | NoData:
        """The latest reading; every `fail_every`-th read fails (0: never) to exercise no-data handling."""
        self.reads += 1
        reading = self.engine.sample()
        waiting, running = round(reading.waiting), round(reading.running)
        # With no Ready replica the requests queued are the ones the gateway holds for a replica.
        held = 0 if self.engine.ready else waiting
        engines = self._engines(waiting - held, running)
        gateway = self._gateway(float(held), reading.overflow_in_flight)
        if self.fail_every and self.reads % self.fail_every == 0:
            return NoData("simulated scrape failure")
        replay_usd = None if self.replay is None else self.replay.costs_at(self.clock.offset)
        demand, counters = aggregate(
            engines, engines.keys(), gateway, self.window.baseline(now), now, replay_usd=replay_usd
        )
        if counters is not None:
            self.window.add(counters)
        return demand


class SimReplay:
    """The controller's replay of the last hour (`policies.replay`), fed every request the simulated
    gateway routed once it is `lag_seconds` old, as the daemon feeds it the requests the gateway reports."""

    def __init__(self, workload: Workload, spec: GPUPoolSpec) -> None:
        self.arrival = workload.arrival_s
        self.work, self.prefill, self.usd = request_terms(
            spec.demand, spec.fallback.price, workload.input_tokens.astype(np.float64), workload.output_tokens
        )
        self.usd_per_hour = spec.replica_usd_per_hour
        self.replay = Replay(spec.target.max_replicas, spec.objective.ttft_seconds)
        self.replay.begin(0.0)
        self._next = 0

    def costs_at(self, offset: float) -> tuple[float, ...] | None:
        """The replay's costs at `offset` seconds into the run."""
        until = offset - self.replay.lag_seconds
        if until <= 0:
            return None
        lo = self._next
        hi = int(self.arrival.searchsorted(until, side="right"))
        if hi > lo:
            self.replay.feed(
                self.arrival[lo:hi].tolist(),
                self.work[lo:hi].tolist(),
                self.prefill[lo:hi].tolist(),
                self.usd[lo:hi].tolist(),
            )
            self._next = hi
        self.replay.serve_to(until)
        return self.replay.costs(self.usd_per_hour)


class SimLedger:
    """Today's GPU-hours (replica time within the local day) and fallback spend."""

    def __init__(self, cluster: SimCluster, engine: PoolEngine, spec: GPUPoolSpec) -> None:
        self.cluster = cluster
        self.engine = engine
        self.zone = ZoneInfo(spec.schedule.timezone)
        self.spec = spec
        self._since = -math.inf
        self._closed_seconds = 0.0
        self._seen = 0
        self._day_cache: tuple[dt.date, dt.datetime] | None = None
        self._last_day: tuple[dt.datetime, dt.datetime] | None = None

    def day_start(self, now: dt.datetime) -> dt.datetime:
        """Local midnight of the day containing `now`."""
        last = self._last_day
        if last is not None and last[0] is now:
            return last[1]  # the runner and the ledger's read ask for the same moment each tick
        midnight = self._midnight(now)
        self._last_day = (now, midnight)
        return midnight

    def _midnight(self, now: dt.datetime) -> dt.datetime:
        local = now.astimezone(self.zone)
        cached = self._day_cache
        if cached is not None and cached[0] == local.date():
            return cached[1]
        # Local midnight as an aware datetime (zoneinfo resolves it; where a DST change skips or repeats
        # 00:00, as in a few zones, it takes the offset in force before the change: fold=0).
        midnight = dt.datetime.combine(local.date(), dt.time(0), tzinfo=self.zone)
        self._day_cache = (local.date(), midnight)
        return midnight

    def usage_today(self, pool: PoolRef, now: dt.datetime) -> Usage:
        """GPU-hours of replica time since local midnight, and the fallback spend of the day."""
        clock = self.cluster.clock
        since = (self.day_start(now) - clock.start).total_seconds()
        until = clock.offset
        if since != self._since:
            self._since, self._closed_seconds = since, 0.0
        # Pods that ended since the last call add their time within today once; live pods are summed anew.
        finished = self.cluster.finished
        for pod in finished[self._seen :]:
            if pod.scheduled_at is not None and pod.removed_at is not None:
                self._closed_seconds += max(min(pod.removed_at, until) - max(pod.scheduled_at, since), 0.0)
        self._seen = len(finished)
        pods = self.cluster.pods
        live = (
            sum(max(until - max(p.scheduled_at, since), 0.0) for p in pods if p.scheduled_at is not None) if pods else 0
        )
        hours = (self._closed_seconds + live) / 3600.0 * self.cluster.gpus_per_replica
        return Usage(hours, self.engine.fallback_usd_day)

    def gpu_bill(self, until: float) -> tuple[float, float]:
        """Billed GPU-hours and dollars of the whole run, with the provider's granularity and minimum."""
        return gpu_cost_usd(self.cluster.lifetimes(until), self.spec.billing, self.spec.target.gpus_per_replica)


@dataclass(slots=True)
class DecisionLog:
    """Collects decisions as JSON-ready lines: one line whenever the decision changes or is applied."""

    policy: str
    lines: list[dict[str, Any]] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)
    _filter: DecisionFilter = field(default_factory=DecisionFilter)

    def record(self, step: StepReport) -> None:
        """Count the reason; keep a line when the decision changes or it applied (the daemon's rule)."""
        decision, pool, applied, now = step.decision, step.pool, step.applied, step.now
        if decision is None:  # the simulated cluster is always readable
            return
        previous = step.previous
        self.reasons[decision.reason.value] = self.reasons.get(decision.reason.value, 0) + 1
        if not self._filter.changed(step):
            return
        self.lines.append(
            {
                "time": now.isoformat(),
                "policy": self.policy,
                "pool": f"{pool.namespace}/{pool.name}",
                "previous": previous,
                "desired": decision.desired_replicas,
                "valid": decision.valid,
                "applied": applied,
                "reason": decision.reason.value,
                "message": decision.message,
                **(
                    {"details": {k: v if math.isfinite(v) else None for k, v in decision.details}}
                    if decision.details
                    else {}
                ),
            }
        )

    def json_lines(self) -> str:
        """The log as JSON lines."""
        return "".join(json.dumps(line, sort_keys=True, allow_nan=False, default=_finite) + "\n" for line in self.lines)


def _finite(value: object) -> object:
    # json calls this only for what it cannot encode itself (never a float: allow_nan refuses those first).
    return str(value)
