"""Benchmark: how long `ebbtide simulate` takes for one policy over a week of traffic.

    python -m controller.sim.bench [--peak-rps 20] [--days 7] [--runs 3] [--policy ebbtide]

Builds the week once (reported separately), then simulates it `--runs` times and prints each time and
the median. It measures this machine; it is not a test and asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time

from controller.sim.cli import DEFAULTS, load_spec
from controller.sim.runner import POLICY_NAMES, RunSettings, run_policy
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
    parser.add_argument("--policy", choices=[n for n in POLICY_NAMES if n != "lower_bound"], default="ebbtide")
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
    times = []
    for i in range(args.runs):
        began = time.perf_counter()
        run = run_policy(args.policy, workload, spec, RunSettings(), progress=False)
        elapsed = time.perf_counter() - began
        times.append(elapsed)
        print(f"run {i + 1}: {elapsed:.2f} s ({args.policy}: ${run.total_usd:,.2f}, SLO {run.slo_attainment:.2%})")
    print(f"median of {args.runs}: {statistics.median(times):.2f} s to simulate {args.policy}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
