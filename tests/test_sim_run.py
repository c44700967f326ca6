"""The simulator end to end: the serving model's arithmetic, exact API bills, SLO under ideal GPUs,
and reproducible JSON. Every run goes through controller.loop.ControlLoop with simulated ports."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.sim import cli
from controller.sim.engine import FallbackModel, PoolEngine, ReplicaModel, RouteCode
from controller.sim.runner import RunSettings, run_policy
from controller.sim.traces import read_trace
from controller.sim.workload import Workload, build_week, load_profile
from policies.cost import ApiPrice, api_cost_usd
from policies.overflow import Route, Routing, route_request
from policies.spec import GPUPoolSpec
from tests.sim_support import simulate_args

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "traces"
MONDAY = dt.datetime(2024, 5, 13, tzinfo=dt.UTC)
PRICE = ApiPrice(3.0, 15.0)


def _spec(**overrides: Any) -> GPUPoolSpec:
    raw: dict[str, Any] = {
        "target": {"deployment": "vllm", "minReplicas": 0, "maxReplicas": 4},
        "schedule": {
            "timezone": "Europe/Berlin",
            "windows": [
                {
                    "name": "office",
                    "days": ["mon", "tue", "wed", "thu", "fri"],
                    "start": "08:00",
                    "end": "19:00",
                    "minReplicas": 1,
                }
            ],
        },
        "coldStartSeconds": 180,
        "fallback": {
            "providers": [
                {
                    "name": "api",
                    "baseUrl": "https://api.example.com/v1",
                    "inputUsdPerMillion": 3,
                    "outputUsdPerMillion": 15,
                }
            ]
        },
    }
    raw.update(overrides)
    return GPUPoolSpec.model_validate(raw)


def _workload(arrivals: list[float], inputs: list[int], outputs: list[int], duration: float) -> Workload:
    return Workload(
        arrival_s=np.asarray(arrivals, dtype=np.float64),
        input_tokens=np.asarray(inputs, dtype=np.int64),
        output_tokens=np.asarray(outputs, dtype=np.int64),
        start=MONDAY,
        duration_s=duration,
    )


def _week(days: int, peak_rps: float, seed: int) -> Workload:
    trace = read_trace(EXAMPLES / "azure_code_2023.csv")
    profile = load_profile(EXAMPLES / "azure2024_diurnal.json", "code")
    return build_week(trace, profile, days=days, start=MONDAY, peak_rps=peak_rps, seed=seed)


# The serving model, by hand.


def test_fifo_wait_is_the_work_ahead() -> None:
    # One replica at 1,000 prompt tokens/s: three 1,000-token prompts at t=0 take 1 s each.
    replica = ReplicaModel(1000.0, 1e12, 1e12, 256)
    wl = _workload([0.0, 0.0, 0.0], [1000, 1000, 1000], [0, 0, 0], 10.0)
    engine = PoolEngine(wl, replica, FallbackModel(), routing=Routing.QUEUE, max_wait_seconds=2.0, price=PRICE)
    engine.set_ready(1)
    engine.run_until(10.0)
    engine.sample()
    # Waits 0, 1, 2 s plus the 1 s prefill each.
    assert engine.ttft.tolist() == pytest.approx([1.0, 2.0, 3.0])


def test_a_request_waits_for_the_cold_start_and_speeds_up_with_more_replicas() -> None:
    replica = ReplicaModel(1000.0, 1e12, 1e12, 256)
    wl = _workload([1.0, 1.0, 1.0, 1.0], [2000, 2000, 2000, 2000], [0, 0, 0, 0], 30.0)
    engine = PoolEngine(wl, replica, FallbackModel(), routing=Routing.QUEUE, max_wait_seconds=2.0, price=PRICE)
    engine.run_until(10.0)  # nothing Ready yet: all four queue
    assert engine.sample().waiting == 4
    engine.set_ready(2)  # two replicas Ready at t=10: 8 s of work drains at 2 s/s
    engine.run_until(30.0)
    engine.sample()
    # Starts at 10, 11, 12, 13 (fluid FIFO at 2 replica-seconds per second), plus 2 s prefill.
    assert engine.ttft.tolist() == pytest.approx([11.0, 12.0, 13.0, 14.0])


def _gateway_engine(workload: Workload, replica: ReplicaModel, objective: float | None) -> PoolEngine:
    """Ebbtide's gateway without a fallback, one replica Ready: every request queues, in lanes or not."""
    engine = PoolEngine(
        workload,
        replica,
        FallbackModel(),
        routing=Routing.OVERFLOW,
        max_wait_seconds=1e9,
        price=PRICE,
        objective_ttft_seconds=objective,
        has_fallback=False,
    )
    engine.set_ready(1)
    return engine


def _lanes_engine(arrivals: list[float], objective: float | None) -> PoolEngine:
    # One replica decoding 1 token/s with no prefill: a 1-token request is 1 s of work, TTFT = wait.
    n = len(arrivals)
    return _gateway_engine(_workload(arrivals, [0] * n, [1] * n, 20.0), ReplicaModel(1e12, 1.0, 1e12, 256), objective)


def test_late_requests_queue_behind_those_that_can_still_make_the_objective() -> None:
    arrivals = [0.0] * 6 + [3.5]
    engine = _lanes_engine(arrivals, objective=2.0)
    engine.run_until(3.7)
    engine.sample()  # settles mid-way: r3 started at 3 (late lane), r6 at 3.5 (on time, pausing r3)
    engine.run_until(20.0)
    engine.sample()
    # r0-r2 wait 0-2 s (on time); r3-r5 could not make 2 s and go late; r6 arrives at 3.5 to an empty
    # normal lane and is served at once, r3's remaining half second resumes at 4.5, r4 starts at 5, r5 at 6.
    assert engine.ttft.tolist() == pytest.approx([0.0, 1.0, 2.0, 3.0, 5.0, 6.0, 0.0])
    assert engine.late.tolist() == [False, False, False, True, True, True, False]
    assert engine.route.tolist() == [RouteCode.GPU] * 7

    fifo = _lanes_engine(arrivals, objective=None)
    fifo.run_until(20.0)
    fifo.sample()
    # One FIFO: r6 waits behind all of them. The same work is done by the same time either way.
    assert fifo.ttft.tolist() == pytest.approx([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 2.5])
    assert not fifo.late.any()


def test_late_lane_stands_still_while_no_replica_is_ready() -> None:
    engine = _lanes_engine([0.0] * 4, objective=1.0)
    engine.run_until(0.5)
    engine.set_ready(0)  # the only replica goes away at 0.5 and is back at 10
    engine.run_until(10.0)
    engine.sample()
    engine.set_ready(1)
    engine.run_until(20.0)
    engine.sample()
    # r0 on time, r1 on time (wait 1 s), r2 and r3 late; r0 was half done at 0.5, the rest waits to 10.
    assert engine.late.tolist() == [False, False, True, True]
    assert engine.ttft.tolist() == pytest.approx([0.0, 10.5, 11.5, 12.5])


def test_late_lane_keeps_the_work_and_raises_attainment_on_a_bursty_day() -> None:
    workload = _week(days=1, peak_rps=4.0, seed=3)
    engines = [_gateway_engine(workload, ReplicaModel(), objective) for objective in (2.0, None)]
    lanes, fifo = engines
    for hour in range(1, 25):
        for engine in engines:
            engine.run_until(hour * 3600.0)
            engine.sample()
        # Work-conserving either way: the same work is left at every hour.
        assert lanes.backlog == pytest.approx(fifo.backlog, abs=1e-6)
    for engine in engines:
        engine.finish(workload.duration_s)
    assert np.isfinite(lanes.ttft).all() and np.isfinite(fifo.ttft).all()
    within = [float(np.mean(engine.ttft <= 2.0)) for engine in engines]
    assert lanes.late.any()
    assert within[0] > within[1] + 0.05, within


def test_routing_matches_route_request() -> None:
    replica = ReplicaModel(1000.0, 1e12, 1e12, 256)
    wl = _workload([0.0] * 6, [1000] * 6, [0] * 6, 10.0)
    engine = PoolEngine(wl, replica, FallbackModel(), routing=Routing.OVERFLOW, max_wait_seconds=2.0, price=PRICE)
    engine.set_ready(1)
    engine.run_until(1.0)
    # Expected waits on arrival: 0, 1, 2, 3, 3, 3 s (fallback requests add no work).
    expected = []
    backlog = 0.0
    for _ in range(6):
        decision = route_request(
            waiting=backlog, ready_replicas=1, replica_requests_per_second=1.0, max_wait_seconds=2.0, fallback_open=True
        )
        expected.append(RouteCode.GPU if decision.route is Route.GPU else RouteCode.FALLBACK)
        backlog += 1.0 if decision.route is Route.GPU else 0.0
    assert engine.route.tolist() == expected == [1, 1, 1, 2, 2, 2]


# The four properties the issue names.


def test_api_only_cost_is_the_tokens_times_the_prices_exactly() -> None:
    workload = _week(days=1, peak_rps=2.0, seed=11)
    spec = _spec(
        fallback={
            "providers": [
                {
                    "name": "api",
                    "baseUrl": "https://api.example.com/v1",
                    "inputUsdPerMillion": 2.5,
                    "outputUsdPerMillion": 10,
                }
            ]
        }
    )
    run = run_policy("api_only", workload, spec, RunSettings(tick_seconds=30.0), progress=False)
    tokens_in = int(workload.input_tokens.sum())
    tokens_out = int(workload.output_tokens.sum())
    assert run.fallback_usd == (tokens_in * 2.5 + tokens_out * 10.0) / 1e6
    assert run.total_usd == api_cost_usd(tokens_in, tokens_out, ApiPrice(2.5, 10.0))
    assert run.gpu_usd == 0.0
    assert run.fallback_requests == len(workload)


# keda is not among them by design: it scales to zero without a fallback, so a request arriving at
# zero replicas waits for the next poll (up to 30 s) even with no cold start.
@pytest.mark.parametrize("name", ["ebbtide", "always_on", "hpa"])
def test_zero_cold_start_and_infinite_capacity_meet_the_slo_for_every_request(name: str) -> None:
    workload = _week(days=1, peak_rps=3.0, seed=5)
    spec = _spec(coldStartSeconds=0)
    settings = RunSettings(replica=ReplicaModel.unlimited(), tick_seconds=15.0, initial_replicas=1)
    run = run_policy(name, workload, spec, settings, progress=False)
    assert run.ttft is not None
    assert run.slo_attainment == 1.0, f"{name}: worst TTFT {run.ttft.max():.3f} s"


def test_same_seed_gives_identical_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outputs = []
    for attempt in range(2):
        path = tmp_path / f"run{attempt}.json"
        argv = [
            "--days",
            "1",
            "--peak-rps",
            "1.5",
            "--seed",
            "42",
            "--tick",
            "30",
            "--no-progress",
            "--json",
            str(path),
        ]
        assert cli.run(simulate_args(argv)) == 0
        outputs.append(path.read_bytes())
    assert outputs[0] == outputs[1]
    document = json.loads(outputs[0])
    assert list(document["policies"]) == [
        "ebbtide",
        "always_on",
        "api_only",
        "hpa",
        "keda",
        "lower_bound",
        "offline_optimum",
        "optimum_plan",
    ]
    for figures in document["policies"].values():
        for key in (
            "total_usd",
            "slo_priced_usd",
            "x_lower_bound",
            "x_offline_optimum",
            "gpu_usd",
            "fallback_usd",
            "gpu_hours",
            "requests",
            "fallback_requests",
            "slo_attainment",
            "ttft_p50_s",
            "ttft_p95_s",
            "ttft_p99_s",
            "scale_events",
        ):
            assert key in figures
    assert document["inputs"]["seed"] == 42
    table = capsys.readouterr().out
    assert table.index("ebbtide") < table.index("always_on")


def test_a_fluid_bound_above_the_optimum_is_said_to_be_no_bound(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Billed by the hour, the fluid bound charges each clock hour for a replica's paid hour that straddles
    # two: on the default day it comes out above the optimum's proven bound, and the table says so.
    path = tmp_path / "hourly.json"
    argv = ["--days", "1", "--policy", "api_only", "--no-progress", "--json", str(path)]
    assert cli.run(simulate_args([*argv, "--set", "billing.granularity=hour"])) == 0
    out = capsys.readouterr().out
    figures = json.loads(path.read_text(encoding="utf-8"))["policies"]
    bound, optimum = figures["lower_bound"]["total_usd"], figures["offline_optimum"]["total_usd"]
    assert bound > optimum
    assert f"note: lower_bound (${bound:,.2f}) lies above offline_optimum (${optimum:,.2f})" in out
    assert "billed by units of 3,600 s" in out
    assert cli.run(simulate_args(argv)) == 0  # by the second, the fluid bound is below
    figures = json.loads(path.read_text(encoding="utf-8"))["policies"]
    assert figures["lower_bound"]["total_usd"] <= figures["offline_optimum"]["total_usd"]
    assert "note: lower_bound" not in capsys.readouterr().out


def test_a_gpu_cap_keeps_replicas_pending_and_unbilled() -> None:
    workload = _week(days=1, peak_rps=20.0, seed=2)
    spec = _spec()
    capped = run_policy("ebbtide", workload, spec, RunSettings(tick_seconds=30.0, gpu_cap=1), progress=False)
    assert capped.timeline["ready"].max() == 1
    assert capped.gpu_hours <= 24.0 + 1e-9


def test_set_overrides_one_field_of_the_pool(tmp_path: Path) -> None:
    base = ["--days", "1", "--peak-rps", "3", "--seed", "4", "--tick", "30", "--no-progress", "--policy", "ebbtide"]
    results = {}
    for wait in ("1", "120"):
        path = tmp_path / f"wait{wait}.json"
        assert (
            cli.run(simulate_args([*base, "--set", f"fallback.maxQueueWaitSeconds={wait}", "--json", str(path)])) == 0
        )
        document = json.loads(path.read_text())
        assert document["inputs"]["overrides"] == [f"fallback.maxQueueWaitSeconds={wait}"]
        results[wait] = document["policies"]["ebbtide"]
    # Queueing longer before overflowing sends fewer requests to the paid API.
    assert results["120"]["fallback_requests"] < results["1"]["fallback_requests"]


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("fallback.maxQueueWaitSeconds=-1", "spec.fallback.maxQueueWaitSeconds: Input should be greater than or equal"),
        ("objective.ttftSecond=2", "spec.objective.ttftSecond: Extra inputs are not permitted"),
        ("no-equals-sign", "expected FIELD=VALUE"),
        ("target=3", "spec.target: Input should be a valid dictionary"),
        ("demand.maxScaleUpStep=[", "not valid YAML"),
    ],
)
def test_a_bad_override_names_the_field_and_exits_2(
    assignment: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.run(simulate_args(["--days", "1", "--no-progress", "--set", assignment])) == 2
    assert message in capsys.readouterr().err


def test_the_json_says_whether_the_gateway_knew_the_true_work_and_contradicting_flags_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--days", "1", "--peak-rps", "1", "--seed", "4", "--tick", "60", "--no-progress", "--policy", "hpa"]
    for extra, estimates in (([], True), (["--gateway-estimates"], True), (["--true-work"], False)):
        path = tmp_path / "out.json"
        assert cli.run(simulate_args([*base, *extra, "--json", str(path)])) == 0
        assert json.loads(path.read_text())["inputs"]["gateway_estimates"] is estimates
    assert cli.run(simulate_args([*base, "--true-work", "--gateway-estimates"])) == 2
    assert "--true-work and --gateway-estimates contradict each other" in capsys.readouterr().err


def test_offered_rates_are_over_the_time_observed() -> None:
    # 15 requests of 100 prompt and 10 output tokens in the first 15 s: 100 and 10 tok/s, not a quarter
    # of that over a 60 s window that has not passed yet.
    wl = _workload([float(i) for i in range(15)], [100] * 15, [10] * 15, 120.0)
    engine = PoolEngine(wl, ReplicaModel(), FallbackModel(), routing=Routing.QUEUE, max_wait_seconds=2.0, price=PRICE)
    engine.set_ready(1)
    engine.run_until(15.0)
    reading = engine.sample()
    assert (reading.input_tokens_per_second, reading.output_tokens_per_second) == (100.0, 10.0)
    engine.run_until(90.0)
    reading = engine.sample()  # the window is 60 s now: arrivals 30-89 s hold none of them
    assert reading.input_tokens_per_second == 0.0


def test_only_saturation_counts_as_overflow() -> None:
    # Two requests while nothing is Ready go to the fallback (a cold start, already in the offered
    # rate); of three 1 s requests at t=2 with one replica Ready and a 1 s wait limit, the third is
    # sent away because the replica is busy: only its tokens are overflow.
    replica = ReplicaModel(1000.0, 1e12, 1e12, 256)
    wl = _workload([0.0, 0.0, 2.0, 2.0, 2.0], [1000, 1000, 1000, 1000, 1000], [0] * 5, 10.0)
    engine = PoolEngine(wl, replica, FallbackModel(), routing=Routing.OVERFLOW, max_wait_seconds=1.0, price=PRICE)
    engine.run_until(1.0)
    engine.set_ready(1)
    engine.run_until(3.0)
    reading = engine.sample()
    assert engine.route.tolist() == [
        RouteCode.FALLBACK,
        RouteCode.FALLBACK,
        RouteCode.GPU,
        RouteCode.GPU,
        RouteCode.FALLBACK,
    ]
    assert engine.saturated.tolist() == [False, False, False, False, True]
    assert reading.overflow_tokens_per_second == pytest.approx(1000 / 3.0)
    assert reading.input_tokens_per_second == pytest.approx(5000 / 3.0)


@pytest.mark.parametrize("take_late", [True, False])
def test_a_request_late_on_any_replica_goes_to_the_open_fallback_and_is_not_saturation(take_late: bool) -> None:
    # One replica Ready at 1,000 prompt tokens/s and a 2 s objective: a 3,000-token prompt takes 3 s to
    # prefill, so no number of replicas serves it on time; the 500-token one after it is on time.
    replica = ReplicaModel(1000.0, 1e12, 1e12, 256)
    wl = _workload([2.0, 2.1], [3000, 500], [0, 0], 10.0)
    engine = PoolEngine(
        wl,
        replica,
        FallbackModel(),
        routing=Routing.OVERFLOW,
        max_wait_seconds=2.0,
        price=PRICE,
        objective_ttft_seconds=2.0,
        late_to_fallback=take_late,
    )
    engine.set_ready(1)
    engine.run_until(9.0)
    reading = engine.sample()
    if take_late:
        assert engine.route.tolist() == [RouteCode.FALLBACK, RouteCode.GPU]
        assert engine.ttft.tolist() == pytest.approx([FallbackModel().ttft_seconds, 0.5])
    else:  # the late lane: served late, and the short one ahead of it (preemptive lanes)
        assert engine.route.tolist() == [RouteCode.GPU, RouteCode.GPU]
        assert engine.late.tolist() == [True, False]
        assert engine.ttft[0] > 2.0
    assert engine.saturated.tolist() == [False, False]
    assert reading.overflow_tokens_per_second == 0.0
    # Sent away as late on any replica, the long prompt is no demand for the GPUs (9 s observed so far).
    offered = 500 if take_late else 3500
    assert reading.input_tokens_per_second == pytest.approx(offered / 9.0)
    assert engine.routed_tokens()[3:] == ((3000, 0) if take_late else (0, 0))


@pytest.mark.parametrize("take_late", [True, False])
def test_prompts_too_long_for_the_objective_start_no_replica_while_the_fallback_takes_them(take_late: bool) -> None:
    # Two hours of one 30,000-token prompt every 5 s (6,000 tok/s offered, a replica's worth): 3 s of
    # prefill at 10,000 tok/s each, late for the 2 s objective on any number of replicas. Sent to the
    # fallback, they buy no GPU; kept on the GPUs (the late lane) they are demand, and a replica serves them.
    spec = _spec(
        schedule={"timezone": "UTC"},
        demand={"replicaTokensPerSecond": 6000, "replicaPrefillTokensPerSecond": 10000,
                "replicaDecodeTokensPerSecond": 2500},
        fallback={**_spec().fallback.model_dump(by_alias=True, exclude_none=True), "takeLateRequests": take_late},
    )  # fmt: skip
    arrivals = [float(t) for t in range(0, 7200, 5)]
    workload = _workload(arrivals, [30_000] * len(arrivals), [10] * len(arrivals), 7200.0)
    run = run_policy("ebbtide", workload, spec, RunSettings(tick_seconds=15.0), progress=False)
    if take_late:
        assert run.gpu_hours == 0.0
        assert run.fallback_requests == len(arrivals)
    else:
        assert run.gpu_hours > 1.0
        assert run.fallback_requests < len(arrivals)


@pytest.mark.parametrize("replay", [True, False])
def test_a_request_late_behind_the_queue_is_saturation_only_without_the_replay(replay: bool) -> None:
    # Two 1,500-token prompts at once on one replica (1.5 s of prefill each) and a 2 s objective: the
    # second would start after 1.5 s and be late, although on an idle replica it would be on time.
    replica = ReplicaModel(1000.0, 1e12, 1e12, 256)
    wl = _workload([2.0, 2.0], [1500, 1500], [0, 0], 10.0)
    engine = PoolEngine(
        wl,
        replica,
        FallbackModel(),
        routing=Routing.OVERFLOW,
        max_wait_seconds=2.0,
        price=PRICE,
        objective_ttft_seconds=2.0,
        late_to_fallback=True,
        replay=replay,
    )
    engine.set_ready(1)
    engine.run_until(9.0)
    reading = engine.sample()
    assert engine.route.tolist() == [RouteCode.GPU, RouteCode.FALLBACK]
    assert engine.saturated.tolist() == [False, not replay]
    assert reading.overflow_tokens_per_second == pytest.approx(0.0 if replay else 1500 / 9.0)


def test_a_pool_without_a_fallback_queues_every_request_whatever_its_cap_action() -> None:
    workload = _week(days=1, peak_rps=3.0, seed=8)
    spec = _spec(fallback={"providers": []}, budget={"onFallbackCap": "reject"})
    run = run_policy("ebbtide", workload, spec, RunSettings(tick_seconds=30.0), progress=False)
    assert run.rejected_requests == 0 and run.fallback_requests == 0
    assert run.ttft is not None and np.isfinite(run.ttft).all()


def test_a_request_without_tokens_is_served_when_a_replica_is_ready() -> None:
    wl = _workload([0.0, 1.0], [0, 0], [0, 0], 60.0)
    engine = PoolEngine(wl, ReplicaModel(), FallbackModel(), routing=Routing.QUEUE, max_wait_seconds=2.0, price=PRICE)
    engine.run_until(32.0)  # nothing Ready until 32 s
    engine.set_ready(1)
    engine.finish(60.0)
    assert engine.ttft.tolist() == pytest.approx([32.0, 31.0], abs=1e-5)


def test_rows_in_worker_processes_equal_rows_in_this_process() -> None:
    from controller.sim.report import to_json
    from controller.sim.runner import POLICY_NAMES, run_all

    workload = build_week(
        read_trace(EXAMPLES / "azure_code_2023.csv"),
        load_profile(EXAMPLES / "azure2024_diurnal.json", "code"),
        days=1,
        start=MONDAY,
        peak_rps=1.0,
        seed=7,
    )
    spec, settings = _spec(), RunSettings(tick_seconds=30.0)
    alone = run_all(workload, spec, settings, POLICY_NAMES, progress=False, jobs=1)
    together = run_all(workload, spec, settings, POLICY_NAMES, progress=False, jobs=2)
    assert list(together) == list(alone) == list(POLICY_NAMES)
    assert to_json(together, {}) == to_json(alone, {})
    for name, run in alone.items():
        assert run.log is None or together[name].log is not None
        if run.log is not None:
            assert together[name].log.lines == run.log.lines  # type: ignore[union-attr]


def test_zero_jobs_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(simulate_args(["--days", "1", "--no-progress", "--jobs", "0"])) == 2
    assert "--jobs must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("volume", ["0", "0M"])
def test_a_zero_monthly_volume_is_a_clear_error(volume: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(simulate_args(["--days", "1", "--no-progress", "--monthly-tokens", volume])) == 2
    assert "--monthly-tokens must be more than 0, got 0" in capsys.readouterr().err


def test_the_slo_priced_cost_adds_the_api_price_of_every_late_request() -> None:
    # One replica always on, 1,000 prompt tokens/s, queueing only: four 1,000-token prompts at t=0 have
    # first tokens at 1, 2, 3 and 4 s; with a 2 s SLO the last two are late and priced at the API.
    spec = _spec(target={"deployment": "vllm", "minReplicas": 0, "maxReplicas": 1}, coldStartSeconds=0)
    workload = _workload([60.0] * 4, [1000] * 4, [0] * 4, 120.0)
    settings = RunSettings(replica=ReplicaModel(1000.0, 1e12, 1e12, 256), initial_replicas=1, tick_seconds=15.0)
    run = run_policy("always_on", workload, spec, settings, progress=False)
    assert run.ttft is not None and run.ttft.tolist() == pytest.approx([1.0, 2.0, 3.0, 4.0])
    assert run.slo_attainment == pytest.approx(0.5)
    assert run.slo_priced_usd == pytest.approx(run.gpu_usd + 2 * api_cost_usd(1000, 0, PRICE))


def test_an_optimum_too_large_to_solve_leaves_its_rows_out_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A week at 2-second ticks with up to 16 replicas: 302,400 slots x 17 x 17 counts is beyond the DP's table.
    path = tmp_path / "out.json"
    argv = [
        "--tick",
        "2",
        "--set",
        "target.maxReplicas=16",
        "--policy",
        "api_only",
        "--no-progress",
        "--json",
        str(path),
    ]
    assert cli.run(simulate_args(argv)) == 0
    assert "leaving out offline_optimum and optimum_plan" in capsys.readouterr().err
    assert list(json.loads(path.read_text())["policies"]) == ["api_only", "lower_bound"]


def test_by_default_ebbtide_routes_on_the_gateways_books_and_the_baselines_have_none() -> None:
    # A busy day of the code trace: the blend (6,000 tok/s, this pool gives no replica speeds) over-counts
    # its prompt-heavy requests, so the gateway's books (the default) send more of them to the fallback
    # than an idealized gateway that knows their true work (`true_work`); plain vLLM has no gateway.
    workload = _week(days=1, peak_rps=3.0, seed=8)
    spec = _spec(objective={"ttftSeconds": 2.0, "deferLateRequests": True}, fallback={
        **_spec().fallback.model_dump(by_alias=True, exclude_none=True), "maxQueueWaitSeconds": 2})  # fmt: skip
    true, books = (
        run_policy("ebbtide", workload, spec, RunSettings(tick_seconds=30.0, true_work=knows), progress=False)
        for knows in (True, False)
    )
    assert books.fallback_requests > true.fallback_requests
    plain = [
        run_policy("hpa", workload, spec, RunSettings(tick_seconds=30.0, true_work=knows), progress=False)
        for knows in (True, False)
    ]
    assert plain[0].fallback_requests == plain[1].fallback_requests
    assert plain[0].gpu_hours == plain[1].gpu_hours
