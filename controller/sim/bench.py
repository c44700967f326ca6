"""Benchmark: how long `ebbtide simulate` takes for one policy over a week of traffic.

    python -m controller.sim.bench [--peak-rps 20] [--days 7] [--runs 3] [--policy ebbtide] [--baseline always_on]

Builds the week once (reported separately), then simulates it `--runs` times under the policy and under
a baseline policy, and prints each time, the medians and their ratio. It measures this machine; it is
not a test and asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time

from controller.sim.cli import DEFAULTS, load_spec
from controller.sim.runner import OFFLINE, POLICY_NAMES, RunSettings, run_policy
from controller.sim.traces import read_trace
from controller.sim.workload import build_week, load_profile

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the median wall time."""
    parser = argparse.ArgumentParser(prog="python -m controller.sim.bench", description=__doc__)
    parser.add_argument("--peak-rps", type=float, default=20.0)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    choices = [n for n in POLICY_NAMES if n not in OFFLINE]
    parser.add_argument("--policy", choices=choices, default="ebbtide")
    parser.add_argument("--baseline", choices=choices, default="always_on", help="timed side by side")
    args = parser.parse_args(argv)

    spec = load_spec(DEFAULTS["pool"])
    trace = read_trace(DEFAULTS["trace"])
    profile = load_profile(DEFAULTS["profile"], "code")
    began = time.perf_counter()
    start = dt.datetime.fromisoformat(DEFAULTS["start"])
    workload = build_week(trace, profile, days=args.days, start=start, peak_rps=args.peak_rps, seed=args.seed)
    built = time.perf_counter() - began
    print(
        f"workload: {len(workload):,} requests over {args.days} days at peak {args.peak_rps:g} req/s "
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
