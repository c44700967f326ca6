"""Benchmark: how long `ebbtide simulate` takes, for the default run and for a big week of one policy.

    python -m controller.sim.bench [--runs 3] [--jobs N] [--peak-rps 20] [--days 7] [--policy ebbtide]
                                   [--baseline always_on] [--no-week]

First the default run, exactly what `ebbtide simulate` does with no arguments (the seed's week, every
policy, both offline references and the optimum's plan, in `--jobs` worker processes as the command
does), timed `--runs` times in wall-clock and CPU seconds (workers included). Then, unless
`--no-week`, a week at `--peak-rps` (4.39M requests at 20) built once (reported separately) and
simulated `--runs` times under the policy and under a baseline policy, with the medians and their
ratio. It measures this machine; it is not a test and asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import time

from controller.sim.cli import DEFAULTS, load_spec
from controller.sim.runner import OFFLINE, OPTIMUM_PLAN, POLICY_NAMES, RunSettings, run_all, run_policy
from controller.sim.traces import read_trace
from controller.sim.workload import build_week, load_profile, peak_rps_for_monthly_tokens

__all__ = ["main"]


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the worker processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _default_run(runs: int, jobs: int) -> tuple[float, float]:
    """Time the default `ebbtide simulate`: workload built as the CLI builds it, every row computed."""
    spec = load_spec(DEFAULTS["pool"])
    trace = read_trace(DEFAULTS["trace"])
    profile = load_profile(DEFAULTS["profile"], "code")
    start = dt.datetime.fromisoformat(DEFAULTS["start"])
    walls, cpus = [], []
    for i in range(runs):
        began, cpu = time.perf_counter(), _cpu_seconds()
        peak = peak_rps_for_monthly_tokens(trace, profile, DEFAULTS["monthly_tokens"])
        workload = build_week(trace, profile, days=7, start=start, peak_rps=peak, seed=0)
        settings = RunSettings(slo_ttft_seconds=spec.objective.ttft_seconds)
        results = run_all(workload, spec, settings, progress=False, jobs=jobs)
        walls.append(time.perf_counter() - began)
        cpus.append(_cpu_seconds() - cpu)
        print(
            f"default run {i + 1}: {walls[-1]:.2f} s wall, {cpus[-1]:.2f} s CPU "
            f"({len(workload):,} requests, {len(results)} rows, {jobs} job(s))"
        )
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    print(f"default run, median of {runs}: {wall:.2f} s wall, {cpu:.2f} s CPU")
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the median wall times."""
    parser = argparse.ArgumentParser(prog="python -m controller.sim.bench", description=__doc__)
    parser.add_argument("--peak-rps", type=float, default=20.0)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    choices = [n for n in POLICY_NAMES if n not in (*OFFLINE, OPTIMUM_PLAN)]
    parser.add_argument("--policy", choices=choices, default="ebbtide")
    parser.add_argument("--baseline", choices=choices, default="always_on", help="timed side by side")
    parser.add_argument("--no-week", action="store_true", help="time only the default run")
    parser.add_argument("--jobs", type=int, default=min(os.cpu_count() or 1, 4), help="as `ebbtide simulate --jobs`")
    args = parser.parse_args(argv)

    default_wall, default_cpu = _default_run(args.runs, args.jobs)
    if args.no_week:
        return 0
    spec = load_spec(DEFAULTS["pool"])
    trace = read_trace(DEFAULTS["trace"])
    profile = load_profile(DEFAULTS["profile"], "code")
    began = time.perf_counter()
    start = dt.datetime.fromisoformat(DEFAULTS["start"])
    workload = build_week(trace, profile, days=args.days, start=start, peak_rps=args.peak_rps, seed=args.seed)
    built = time.perf_counter() - began
    print(
        f"week: {len(workload):,} requests over {args.days} days at peak {args.peak_rps:g} req/s "
        f"(built in {built:.2f} s)"
    )
    # The baseline runs the same serving model and loop with a policy that does almost no work, so the
    # ratio shows what Ebbtide's decisions cost on top of the simulation itself.
    medians = {}
    for name in dict.fromkeys([args.policy, args.baseline]):
        times = []
        for i in range(args.runs):
            began = time.perf_counter()
            run = run_policy(name, workload, spec, RunSettings(), progress=False)
            elapsed = time.perf_counter() - began
            times.append(elapsed)
            print(f"{name} run {i + 1}: {elapsed:.2f} s (${run.total_usd:,.2f}, SLO {run.slo_attainment:.2%})")
        medians[name] = statistics.median(times)
    print(f"median of {args.runs}: {args.policy} {medians[args.policy]:.2f} s", end="")
    if args.baseline != args.policy:
        ratio = medians[args.policy] / medians[args.baseline]
        print(f", {args.baseline} {medians[args.baseline]:.2f} s, ratio {ratio:.2f}")
    else:
        print()
    print(
        f"side by side: default run {default_wall:.2f} s wall ({default_cpu:.2f} s CPU, {len(POLICY_NAMES)} rows); "
        f"{len(workload):,} requests over {args.days} days, {args.policy} {medians[args.policy]:.2f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
