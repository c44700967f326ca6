"""`ebbtide day`: a dry trace of the policy's decisions over one local day, without a cluster.

Demand is a piecewise-constant queue given as HH:MM=N steps (local time). Replicas become Ready one cold
start after they are asked for; each decision that changes something is printed with its reason.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
from pathlib import Path

from controller.validate import load_pools
from policies.scaling import decide
from policies.spec import GPUPool, parse_clock
from policies.types import DemandSample, Observation, PolicyState

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


def trace_day(pool: GPUPool, day: dt.date, steps: list[tuple[int, float]], step_seconds: int = 30) -> list[str]:
    """Run the policy every `step_seconds` over the local day; one line per change of replicas or reason."""
    spec = pool.spec
    zone = spec.schedule.zone
    start = dt.datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(dt.UTC)
    end = (dt.datetime(day.year, day.month, day.day, tzinfo=zone) + dt.timedelta(days=1)).astimezone(dt.UTC)
    state = PolicyState()
    starts: list[dt.datetime] = []
    lines: list[str] = []
    last = ("", -1)
    now = start
    while now < end:
        local = now.astimezone(zone)
        queue = _queue_at(steps, local.hour * 60 + local.minute)
        ready = sum(1 for s in starts if (now - s).total_seconds() >= spec.cold_start_seconds)
        obs = Observation(
            current_replicas=len(starts),
            ready_replicas=ready,
            demand=DemandSample(observed_at=now, waiting=max(queue - 8 * ready, 0), running=min(queue, 8 * ready)),
            replica_billing_starts=tuple(starts),
        )
        decision, state = decide(spec, obs, state, now)
        if decision.valid:
            while len(starts) < decision.desired_replicas:
                starts.append(now)
            del starts[decision.desired_replicas :]
        key = (decision.reason.value, decision.desired_replicas)
        if key != last:
            lines.append(
                f"{local:%H:%M:%S}  {decision.desired_replicas:>3}  {decision.reason.value:<18} {decision.message}"
            )
            last = key
        now += dt.timedelta(seconds=step_seconds)
    return lines


def run(args: argparse.Namespace) -> int:
    """Print the day's decisions."""
    pools, problems = load_pools(Path(args.pool))
    if problems:
        for problem in problems:
            print(f"{args.pool}: {problem}")
        return 2
    try:
        steps = parse_queue_steps(args.queue)
        day = dt.date.fromisoformat(args.date) if args.date else dt.date.today()
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
