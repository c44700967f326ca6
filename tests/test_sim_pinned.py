"""The simulator's results, pinned: two days of the default run, every row, digest for digest.

Speed work on the simulator (the loop, the serving model, the observation seam, the schedule's memo)
must not move a single byte of what `ebbtide simulate` reports. This test runs the README's main
command on its first two days (the example pool and volume, Monday and Tuesday: an overnight zero, an
opening with pre-warm, a busy office day) and compares the JSON report's rows and every decision log
with the digests recorded when they were last checked by hand.

A change meant to alter results (a policy's behaviour, a default in the spec, the serving model) changes
the digests too: check the new numbers, then paste the digests this test prints into PINNED.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json

from controller.sim.cli import DEFAULTS, load_spec
from controller.sim.report import to_json
from controller.sim.runner import POLICY_NAMES, RunSettings, run_all
from controller.sim.traces import read_trace
from controller.sim.workload import build_week, load_profile, peak_rps_for_monthly_tokens

PINNED = {
    "report": "a9ad1f130d2cb19b",
    "ebbtide": "b0de5045ab7ef23c",
    "always_on": "928c575cef5d31d3",
    "api_only": "719d8fb559a43d3a",
    "hpa": "69acc8cb4c716f5d",
    "keda": "7c7373f884823101",
    "optimum_plan": "4961f401dcd1599f",
}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def digests() -> dict[str, str]:
    """The report's rows and each policy's decision log, hashed, for two days of the default run."""
    spec = load_spec(DEFAULTS["pool"])
    trace = read_trace(DEFAULTS["trace"])
    profile = load_profile(DEFAULTS["profile"], "code")
    peak = peak_rps_for_monthly_tokens(trace, profile, DEFAULTS["monthly_tokens"])
    start = dt.datetime.fromisoformat(DEFAULTS["start"])
    workload = build_week(trace, profile, days=2, start=start, peak_rps=peak, seed=0)
    runs = run_all(workload, spec, RunSettings(slo_ttft_seconds=spec.objective.ttft_seconds), POLICY_NAMES)
    out = {"report": _digest(json.dumps(to_json(runs, {})["policies"], indent=2))}
    out.update({name: _digest(run.log.json_lines()) for name, run in runs.items() if run.log is not None})
    return out


def test_two_days_of_the_default_run_are_byte_for_byte_as_pinned() -> None:
    got = digests()
    assert got == PINNED, f"results changed; if that is intended, set PINNED = {got!r}"
