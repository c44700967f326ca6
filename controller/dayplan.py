"""`ebbtide day`: a dry trace of the policy's decisions over one local day, without a cluster.

Demand is a piecewise-constant queue given as HH:MM=N steps (local time). The steps go through the same
`ControlLoop` as the daemon and the simulator, on the simulator's cluster: replicas become Ready one
cold start after they are asked for, and today's GPU-hours count against the budget. Each decision that
changes something is printed with its reason.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
from pathlib import Path

from controller.demand.aggregate import EngineTotals, aggregate
from controller.loop import ControlLoop, Ports
from controller.ports import NoData, PoolRef, StepReport, Usage
from controller.sim.world import SimClock, SimCluster
from controller.validate import load_pools
from policies.scaling import decide
from policies.spec import GPUPool, GPUPoolSpec, parse_clock
from policies.types import DemandSample, PolicyState

__all__ = ["parse_queue_steps", "register", "trace_day"]

DEFAULT_QUEUE = "00:00=0,08:30=6,10:00=40,12:00=20,13:00=90,16:00=30,18:30=2,19:30=0"


def parse_queue_steps(text: str) -> list[tuple[int, float]]:
    """'08:00=12,12:00=30' → [(480, 12.0), (720, 30.0)], minutes after local midnight, sorted."""
    steps = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = re.match(r"^(\d\d:\d\d)\s*=\s*(\d+(?:\.\d+)?)$", part)
        if not match:
            raise ValueError(f"{part!r} is not HH:MM=QUEUE")
        steps.append((parse_clock(match.group(1)), float(match.group(2))))
    if not steps:
        raise ValueError("the queue profile is empty")
    return sorted(steps)


def _queue_at(steps: list[tuple[int, float]], minute: int) -> float:
    value = 0.0
    for start, queue in steps:
        if start <= minute:
            value = queue
    return value


class _QueueSteps:
    """Demand from the HH:MM=N steps, read through the daemon's own demand seam (`aggregate`): the
    replicas Ready run up to `targetQueuePerReplica` each, the rest waits."""

    def __init__(self, steps: list[tuple[int, float]], spec: GPUPoolSpec, cluster: SimCluster) -> None:
        self.steps = steps
        self.zone = spec.schedule.zone
        self.per_replica = spec.demand.target_queue_per_replica
        self.cluster = cluster

    def sample(self, pool: PoolRef, now: dt.datetime) -> DemandSample | NoData:
        local = now.astimezone(self.zone)
        queue = _queue_at(self.steps, local.hour * 60 + local.minute)
        running = min(queue, self.cluster.ready_count(self.cluster.clock.offset) * self.per_replica)
        totals = EngineTotals(queue - running, running, None, None, None, now)
        return aggregate(totals, (), None, None, now)[0]


class _DayLedger:
    """Today's GPU-hours from the simulated replicas' lifetimes (the trace starts at local midnight, so
    it is one day), and no fallback spend: nothing is sent to a fallback here."""

    def __init__(self, cluster: SimCluster) -> None:
        self.cluster = cluster

    def usage_today(self, pool: PoolRef, now: dt.datetime) -> Usage:
        until = self.cluster.clock.offset
        seconds = sum(end - start for start, end in self.cluster.lifetimes(until))
        return Usage(seconds / 3600.0 * self.cluster.gpus_per_replica, 0.0)


class _Lines:
    """One line per change of the desired replicas or of the reason."""

    def __init__(self, zone: dt.tzinfo) -> None:
        self.zone = zone
        self.lines: list[str] = []
        self._last = ("", -1)

    def record(self, step: StepReport) -> None:
        decision = step.decision
        if decision is None:  # the simulated cluster never fails; kept for the port's contract
            self.lines.append(f"{step.now.astimezone(self.zone):%H:%M:%S}  {step.error}")
            return
        key = (decision.reason.value, decision.desired_replicas)
        if key != self._last:
            local = step.now.astimezone(self.zone)
            self.lines.append(
                f"{local:%H:%M:%S}  {decision.desired_replicas:>3}  {decision.reason.value:<18} {decision.message}"
            )
            self._last = key


def trace_day(pool: GPUPool, day: dt.date, steps: list[tuple[int, float]], step_seconds: int = 30) -> list[str]:
    """Run the control loop every `step_seconds` over the local day; one line per change of replicas or
    reason. The loop is the daemon's and the simulator's `ControlLoop` with the simulator's cluster
    (replicas Ready one cold start after they get a GPU), so budget caps and the billing hold apply."""
    if step_seconds <= 0:
        raise ValueError(f"--step-seconds must be positive, got {step_seconds}")
    spec = pool.spec
    zone = spec.schedule.zone
    midnight = dt.datetime(day.year, day.month, day.day, tzinfo=zone)
    start = midnight.astimezone(dt.UTC)
    end = (midnight + dt.timedelta(days=1)).astimezone(dt.UTC)
    clock = SimClock(start)
    cluster = SimCluster(clock, spec)
    lines = _Lines(zone)
    ports = Ports(clock=clock, cluster=cluster, metrics=_QueueSteps(steps, spec, cluster),
                  ledger=_DayLedger(cluster), recorder=lines)  # fmt: skip
    loop = ControlLoop(ports, decide)
    ref = PoolRef(pool.metadata.name, pool.metadata.namespace, spec.target.deployment,
                  spec.target.namespace or pool.metadata.namespace)  # fmt: skip
    state = PolicyState()
    while clock.now() < end:
        state = loop.reconcile(ref, spec, state).state
        clock.offset += step_seconds
    return lines.lines


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--date {text!r}: expected a date as YYYY-MM-DD") from None


def run(args: argparse.Namespace) -> int:
    """Print the day's decisions."""
    pools, problems = load_pools(Path(args.pool))
    if problems:
        for problem in problems:
            print(f"{args.pool}: {problem}")
        return 2
    try:
        steps = parse_queue_steps(args.queue)
        day = _date(args.date) if args.date else dt.date.today()
        if args.step_seconds <= 0:
            raise ValueError(f"--step-seconds must be positive, got {args.step_seconds}")
    except ValueError as exc:
        print(f"ebbtide day: {exc}")
        return 2
    for pool in pools:
        print(f"# {pool.metadata.namespace}/{pool.metadata.name} on {day:%a %Y-%m-%d} ({pool.spec.schedule.timezone})")
        print("time      replicas reason             message")
        for line in trace_day(pool, day, steps, args.step_seconds):
            print(line)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `day` subcommand."""
    p = subparsers.add_parser("day", help="dry trace of one local day's decisions for a pool file", description=__doc__)
    p.add_argument(
        "pool", nargs="?", default="examples/gpupool.yaml", help="GPUPool YAML (default examples/gpupool.yaml)"
    )
    p.add_argument("--date", help="local date YYYY-MM-DD (default today)")
    p.add_argument("--queue", default=DEFAULT_QUEUE, help=f"queue steps HH:MM=N (default {DEFAULT_QUEUE})")
    p.add_argument("--step-seconds", type=int, default=30, help="decision interval (default 30)")
    p.set_defaults(func=run)
