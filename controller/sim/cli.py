"""`ebbtide simulate`: what a policy would have cost on real traffic, against the baselines.

With no arguments: a week built from the shipped hour of the Azure code trace and the 2024 diurnal
profile, at the seed's example volume (400M tokens a month), through examples/gpupool.yaml, every
policy compared. Bad input (missing file, wrong format, unparsable row) prints one line naming the
file, line and field, and exits with code 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from controller.breakeven import parse_tokens
from controller.sim.engine import (
    DEFAULT_DECODE_TPS,
    DEFAULT_FALLBACK_TTFT,
    DEFAULT_MAX_NUM_SEQS,
    DEFAULT_PREFILL_TPS,
    DEFAULT_SEQUENCE_TPS,
    FallbackModel,
    ReplicaModel,
)
from controller.sim.hours import by_hour, by_hour_json, render_by_hour
from controller.sim.report import bound_note, render_table, to_json
from controller.sim.runner import (
    EBBTIDE,
    OFFLINE,
    OPTIMUM,
    OPTIMUM_PLAN,
    POLICY_NAMES,
    PolicyRun,
    RunSettings,
    optimum_problem,
    run_all,
)
from controller.sim.traces import TraceError, TraceFormat, read_trace
from controller.sim.verdict import render_verdict, verdict, verdict_json
from controller.sim.workload import Workload, build_week, load_profile, peak_rps_for_monthly_tokens, replay
from controller.validate import field_path, load_pools
from policies.optimum import too_large
from policies.spec import GPUPoolSpec

__all__ = ["DEFAULTS", "register", "run"]

_ROOT = Path(__file__).resolve().parents[2]


def _default(relative: str) -> Path:
    """A shipped example: next to the package in a checkout, else relative to the working directory."""
    candidate = _ROOT / relative
    return candidate if candidate.exists() else Path(relative)


DEFAULTS: dict[str, Any] = {
    "trace": _default("examples/traces/azure_code_2023.csv"),
    "profile": _default("examples/traces/azure2024_diurnal.json"),
    "pool": _default("examples/gpupool.yaml"),
    "start": "2024-05-13T00:00:00+00:00",  # a Monday, in the profile's own week of May 2024
    "monthly_tokens": 400e6,  # the seed's example: 300M input + 100M output tokens a month
}


class InputError(Exception):
    """Bad input the command reports in one line (exit code 2)."""


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def _start(text: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 date-time") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a UTC offset, e.g. 2024-05-13T00:00:00Z")
    return moment


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `simulate` subcommand."""
    p = subparsers.add_parser(
        "simulate",
        help="replay a trace through the control loop: cost and SLO against baselines and a lower bound",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("workload")
    src.add_argument("--trace", type=Path, default=DEFAULTS["trace"], help="request trace (default: shipped hour)")
    src.add_argument("--trace-format", choices=[f.value for f in TraceFormat], help="default: detected")
    src.add_argument("--profile", type=Path, default=DEFAULTS["profile"], help="hourly profile JSON for the week")
    src.add_argument("--profile-key", default="code", help="service in the profile: code or conv (default code)")
    src.add_argument("--replay", action="store_true", help="replay the trace as is instead of building a week")
    src.add_argument("--days", type=int, default=7, help="days to build (default 7)")
    src.add_argument("--start", type=_start, default=_start(DEFAULTS["start"]), help="ISO 8601 start (a Monday)")
    volume = src.add_mutually_exclusive_group()
    volume.add_argument("--peak-rps", type=_positive, help="busiest hour's mean requests per second")
    volume.add_argument(
        "--monthly-tokens", type=parse_tokens, help="or: tokens per 730-hour month (default 400M, the seed's example)"
    )
    src.add_argument("--seed", type=int, default=0, help="random seed (same seed, same workload)")

    world = p.add_argument_group("simulated world")
    world.add_argument(
        "--pool", type=Path, default=DEFAULTS["pool"], help="GPUPool YAML (default examples/gpupool.yaml)"
    )
    world.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override one field of the pool's spec, e.g. fallback.maxQueueWaitSeconds=120 (repeat)",
    )
    world.add_argument("--gpu-cap", type=int, help="GPUs available; replicas beyond stay Pending")
    world.add_argument("--tick", type=_positive, default=15.0, help="control-loop period, simulated s (default 15)")
    world.add_argument("--prefill-tps", type=_positive, default=DEFAULT_PREFILL_TPS)
    world.add_argument("--decode-tps", type=_positive, default=DEFAULT_DECODE_TPS)
    world.add_argument("--sequence-tps", type=_positive, default=DEFAULT_SEQUENCE_TPS)
    world.add_argument("--max-num-seqs", type=int, default=DEFAULT_MAX_NUM_SEQS)
    world.add_argument(
        "--true-work",
        action="store_true",
        help="Ebbtide's gateway knows each request's true work, an idealized gateway (default: it routes on "
        "its own estimates of the work ahead, as the shipped gateway does)",
    )
    # The default since the release after it came; still taken, so that scripts which pass it keep working.
    world.add_argument("--gateway-estimates", action="store_true", help=argparse.SUPPRESS)
    world.add_argument(
        "--scrape-fail-every",
        type=int,
        default=0,
        help="every n-th metrics read fails (0: never), to see no-data holds",
    )
    world.add_argument("--fallback-ttft", type=float, default=DEFAULT_FALLBACK_TTFT, help="fallback latency, s")

    out = p.add_argument_group("results")
    out.add_argument("--policy", choices=POLICY_NAMES, action="append", help="run only these (repeat)")
    out.add_argument("--compare", action="store_true", help="every policy in one table (the default)")
    out.add_argument(
        "--slo-ttft", type=_positive, help="time-to-first-token SLO, s (default: the pool's objective.ttftSeconds)"
    )
    out.add_argument(
        "--by-hour", action="store_true", help="also each row's SLO-priced cost per hour of day (the pool's timezone)"
    )
    out.add_argument("--json", type=Path, help="write the results as JSON")
    out.add_argument("--plot", type=Path, help="write a PNG of demand, replicas, windows and cumulative cost")
    out.add_argument("--decisions", type=Path, help="write every policy's decision log (JSON lines)")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    out.add_argument(
        "--jobs",
        type=int,
        default=min(os.cpu_count() or 1, 4),
        help="rows simulated at once in worker processes (default: the CPUs, at most 4; 1: in this process)",
    )
    p.set_defaults(func=run)


def load_spec(path: Path) -> GPUPoolSpec:
    """The first GPUPool in a YAML file, or an InputError naming the file and the field."""
    pools, problems = load_pools(path)
    if problems:
        raise InputError(f"{path}: " + "; ".join(str(problem) for problem in problems))
    return pools[0].spec


def apply_overrides(spec: GPUPoolSpec, assignments: list[str]) -> GPUPoolSpec:
    """The spec with each `field.path=value` (camelCase, value read as YAML) set, validated again."""
    if not assignments:
        return spec
    raw: dict[str, Any] = spec.model_dump(by_alias=True, mode="json", exclude_none=True)
    for assignment in assignments:
        path, sep, text = assignment.partition("=")
        if not sep or not path.strip():
            raise InputError(f"--set {assignment!r}: expected FIELD=VALUE, e.g. fallback.maxQueueWaitSeconds=120")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or exc
            raise InputError(f"--set {assignment!r}: the value is not valid YAML ({problem})") from exc
        keys = path.strip().split(".")
        node = raw
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise InputError(f"--set {assignment!r}: {key} is not a section of the spec")
            node = child
        node[keys[-1]] = value
    try:
        return GPUPoolSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{field_path(('spec', *error['loc']))}: {error['msg']}" for error in exc.errors())
        raise InputError(f"--set: {problems}") from exc


def build_workload(args: argparse.Namespace) -> Workload:
    """The workload the arguments describe."""
    fmt = TraceFormat(args.trace_format) if args.trace_format else None
    trace = read_trace(args.trace, fmt)
    if args.replay:
        return replay(trace, args.start)
    if args.days < 1:
        raise InputError(f"--days must be at least 1, got {args.days}")
    profile = load_profile(args.profile, args.profile_key)
    peak = args.peak_rps
    if peak is None:
        monthly = args.monthly_tokens if args.monthly_tokens is not None else DEFAULTS["monthly_tokens"]
        if not monthly > 0:
            raise InputError(f"--monthly-tokens must be more than 0, got {monthly:g}")
        peak = peak_rps_for_monthly_tokens(trace, profile, monthly)
    workload = build_week(trace, profile, days=args.days, start=args.start, peak_rps=peak, seed=args.seed)
    if len(workload) == 0:
        raise InputError("the workload is empty: raise --peak-rps or --monthly-tokens")
    return workload


def settings_from(args: argparse.Namespace, spec: GPUPoolSpec) -> RunSettings:
    """The simulated world's settings from the arguments (the SLO from the pool's objective by default)."""
    if args.max_num_seqs < 1:
        raise InputError("--max-num-seqs must be at least 1")
    if args.gpu_cap is not None and args.gpu_cap < 0:
        raise InputError("--gpu-cap must be >= 0")
    if args.true_work and args.gateway_estimates:
        raise InputError(
            "--true-work and --gateway-estimates contradict each other: give one (estimates are the default)"
        )
    if args.jobs < 1:
        raise InputError(f"--jobs must be at least 1, got {args.jobs}")
    return RunSettings(
        replica=ReplicaModel(args.prefill_tps, args.decode_tps, args.sequence_tps, args.max_num_seqs),
        fallback=FallbackModel(ttft_seconds=max(args.fallback_ttft, 0.0)),
        tick_seconds=args.tick,
        gpu_cap=args.gpu_cap,
        scrape_fail_every=max(args.scrape_fail_every, 0),
        slo_ttft_seconds=args.slo_ttft if args.slo_ttft is not None else spec.objective.ttft_seconds,
        true_work=args.true_work,
    )


def load_inputs(args: argparse.Namespace, prog: str) -> tuple[GPUPoolSpec, Workload, RunSettings] | None:
    """The pool, workload and world the arguments describe, or None after naming what is wrong on
    stderr as `prog`."""
    try:
        spec = apply_overrides(load_spec(args.pool), args.set)
        workload = build_workload(args)
        settings = settings_from(args, spec)
    except (TraceError, InputError, ValueError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return None
    return spec, workload, settings


def fixed_rows_parser(prog: str) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """A command's parser taking `ebbtide simulate`'s options, and its `simulate` part to add its own."""
    parser = argparse.ArgumentParser(prog=prog)
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    simulate = sub.choices["simulate"]
    simulate.prog = prog
    return parser, simulate


def fixed_rows_inputs(args: argparse.Namespace, prog: str) -> tuple[GPUPoolSpec, Workload, RunSettings] | None:
    """The pool, workload and world of a command whose rows are fixed (the foresight ladder, offline
    routing), or None, after saying why on stderr as `prog`: a flag that chooses rows, bad input, or an
    optimum too large to solve."""
    for flag, given in (("--policy", args.policy), ("--plot", args.plot), ("--decisions", args.decisions)):
        if given:
            print(f"{prog}: error: {flag} is not supported here (the rows are fixed)", file=sys.stderr)
            return None
    loaded = load_inputs(args, prog)
    if loaded is None:
        return None
    spec, workload, settings = loaded
    problem = too_large(optimum_problem(workload, spec, settings))
    if problem:
        print(f"{prog}: error: {problem}", file=sys.stderr)
        return None
    return loaded


def run_inputs(args: argparse.Namespace, workload: Workload, settings: RunSettings) -> dict[str, Any]:
    """What a run was given, for the JSON report's `inputs`."""
    return {
        **workload.inputs,
        "pool": str(args.pool),
        "overrides": list(args.set),
        "requests": len(workload),
        "total_tokens": workload.total_tokens,
        "duration_s": workload.duration_s,
        "slo_ttft_s": settings.slo_ttft_seconds,
        "tick_s": settings.tick_seconds,
        "gpu_cap": settings.gpu_cap,
        "scrape_fail_every": settings.scrape_fail_every,
        "gateway_estimates": not settings.true_work,
        "replica": {
            "prefill_tokens_per_second": settings.replica.prefill_tokens_per_second,
            "decode_tokens_per_second": settings.replica.decode_tokens_per_second,
            "sequence_tokens_per_second": settings.replica.sequence_tokens_per_second,
            "max_num_seqs": settings.replica.max_num_seqs,
        },
        "fallback_ttft_s": settings.fallback.ttft_seconds,
    }


def run(args: argparse.Namespace) -> int:
    """Run the simulation the arguments describe; 0 on success, 2 on bad input."""
    loaded = load_inputs(args, "ebbtide simulate")
    if loaded is None:
        return 2
    spec, workload, settings = loaded
    names = list(dict.fromkeys(args.policy)) if args.policy else list(POLICY_NAMES)
    for reference in OFFLINE:
        if reference not in names:
            names.append(reference)  # cheap, and every row's cost is read against them
    unsolvable = too_large(optimum_problem(workload, spec, settings))
    if unsolvable:  # the policies still run; only the optimum's rows (and ×OPT) are left out
        print(f"ebbtide simulate: note: {unsolvable}; leaving out {OPTIMUM} and {OPTIMUM_PLAN}", file=sys.stderr)
        names = [n for n in names if n not in (OPTIMUM, OPTIMUM_PLAN)]
    names.sort(key=POLICY_NAMES.index)
    tokens = workload.total_tokens
    days = workload.duration_s / 86400
    mode = workload.inputs.get("mode")
    print(f"workload: {len(workload):,} requests, {tokens / 1e6:,.1f}M tokens over {days:.1f} days", end=" ")
    print(f"from {workload.start.isoformat()} ({mode}); pool {args.pool}")
    progress = False if args.no_progress else None
    began = time.perf_counter()
    try:
        runs: dict[str, PolicyRun] = run_all(workload, spec, settings, names, progress=progress, jobs=args.jobs)
    except ImportError as exc:  # the Ebbtide policy module missing from an incomplete install
        print(f"ebbtide simulate: error: cannot load the {EBBTIDE} policy: {exc}", file=sys.stderr)
        return 2

    elapsed = time.perf_counter() - began
    print(render_table(runs))
    print(f"(simulated in {elapsed:.1f} s; SLO: first token within {settings.slo_ttft_seconds:g} s)")
    note = bound_note(runs, spec.billing.granularity.seconds)
    if note is not None:
        print(note)
    chosen = verdict(runs)
    if chosen is not None:
        print(render_verdict(chosen))
    hours = by_hour(runs, workload, spec) if args.by_hour else None
    if hours is not None:
        print()
        print(render_by_hour(hours))
    try:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            document = to_json(runs, run_inputs(args, workload, settings))
            if chosen is not None:
                document["verdict"] = verdict_json(chosen)
            if hours is not None:
                document["by_hour"] = by_hour_json(hours)
            args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        if args.decisions:
            args.decisions.parent.mkdir(parents=True, exist_ok=True)
            with args.decisions.open("w", encoding="utf-8") as handle:
                for r in runs.values():
                    if r.log is not None:
                        handle.write(r.log.json_lines())
        if args.plot:
            from controller.sim.plot import plot_runs

            plot_runs(args.plot, workload, spec, runs)
    except OSError as exc:
        print(f"ebbtide simulate: error: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run `simulate` on its own (the `ebbtide` command registers it as a subcommand)."""
    parser = argparse.ArgumentParser(prog="ebbtide")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(["simulate", *(sys.argv[1:] if argv is None else argv)])
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
