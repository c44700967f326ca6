"""offline_optimum: its DP against brute force, and a true lower bound of the simulated world.

Three checks: (1) the DP finds the least model cost over every replica plan, as an enumeration of all
plans does; (2) on tiny worlds, no plan of scale-ups at ticks and no routing of requests (to the API,
the normal lane or the late lane, each served by the event-by-event reference engine) costs less than
the bound once late requests are priced at the API; (3) on shipped and random small scenarios, every
policy's SLO-priced cost is at least the bound, and the bound is at least the fluid lower bound.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
from pathlib import Path

import numpy as np
import pytest

from controller.ports import PoolRef
from controller.sim.engine import ReplicaModel
from controller.sim.runner import OFFLINE, POLICY_NAMES, RunSettings, lower_bound_run, optimum_run, run_one
from controller.sim.traces import read_trace
from controller.sim.workload import build_week, load_profile
from controller.sim.world import SimClock, SimCluster
from policies.billing import gpu_cost_usd
from policies.optimum import OptimumProblem, _best, offline_optimum, plan_cost, slot_grid
from policies.spec import GPUPoolSpec
from tests.test_sim_engine_reference import _Reference

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "traces"
MONDAY = dt.datetime(2024, 5, 13, tzinfo=dt.UTC)
EIGHTHS = 8.0
OBJECTIVE = 2.0
STEP = 2.0
COLD = 2.0
HORIZON = 6.0
USD_PER_TOKEN = 0.25  # a request of a few eighths costs about as much at the API as a second of a replica
OUTPUT_USD_PER_TOKEN = USD_PER_TOKEN
"""An output token's API price; dearer than an input one, requests differ in price per second of work."""


def _problem(
    arrivals: list[float],
    inputs: list[int],
    outputs: list[int],
    *,
    top: int,
    usd_per_hour: float,
    minimum: float = 0.0,
    lanes: int = 2,
) -> OptimumProblem:
    a = np.asarray(arrivals, dtype=np.float64)
    i = np.asarray(inputs, dtype=np.float64)
    o = np.asarray(outputs, dtype=np.float64)
    return OptimumProblem(
        arrival_s=a,
        work_s=np.maximum((i + o) / EIGHTHS, 1e-6),
        prefill_s=i / EIGHTHS,
        api_usd=i * USD_PER_TOKEN + o * OUTPUT_USD_PER_TOKEN,
        horizon_s=HORIZON,
        step_s=STEP,
        cold_start_s=COLD,
        objective_s=OBJECTIVE,
        max_replicas=top,
        replica_usd_per_hour=usd_per_hour,
        minimum_billed_s=minimum,
        lanes=lanes,
    )


def _random_case(rng: np.random.Generator) -> tuple[list[float], list[int], list[int]]:
    m = int(rng.integers(1, 5))
    arrivals = sorted((rng.integers(0, int(HORIZON * EIGHTHS), m) / EIGHTHS).tolist())
    inputs = rng.integers(1, 16, m).tolist()
    outputs = rng.integers(0, 12, m).tolist()
    return arrivals, inputs, outputs


@pytest.mark.parametrize("seed", range(40))
def test_the_dp_finds_the_cheapest_plan_of_its_model(seed: int) -> None:
    rng = np.random.default_rng(seed)
    arrivals, inputs, outputs = _random_case(rng)
    problem = _problem(arrivals, inputs, outputs, top=2, usd_per_hour=float(rng.choice([360.0, 3600.0, 36000.0])))
    bounds, _ = slot_grid(HORIZON, STEP, COLD)
    brute = min(plan_cost(problem, np.asarray(plan)) for plan in itertools.product(range(3), repeat=bounds.size))
    best = offline_optimum(problem)
    assert best.total_usd == pytest.approx(brute, abs=1e-9)
    assert plan_cost(problem, best.ready) == pytest.approx(best.total_usd, abs=1e-9)


def plan_world(
    plan: tuple[int, ...], usd_per_hour: float, minimum: int = 0
) -> tuple[list[tuple[float, int]], float, int]:
    """The simulated cluster with `plan[k]` replicas asked for at tick k: its Ready counts as (moment,
    count) before the horizon, its GPU bill by the second (each replica at least `minimum` seconds),
    and the count Ready at the horizon."""
    spec = GPUPoolSpec.model_validate(
        {
            "target": {"deployment": "vllm", "minReplicas": 0, "maxReplicas": 2},
            "coldStartSeconds": int(COLD),
            "billing": {"gpuHourlyUsd": usd_per_hour, "granularity": "second", "minimumBilledSeconds": minimum},
        }
    )
    clock = SimClock(MONDAY)
    cluster = SimCluster(clock, spec)
    pool = PoolRef("sim", "default", "vllm", "default")
    changes: list[tuple[float, int]] = []
    for k, desired in enumerate(plan):
        clock.offset = k * STEP
        cluster.scale(pool, desired)
    moments = sorted({k * STEP for k in range(len(plan))} | {k * STEP + COLD for k in range(len(plan))})
    # Replay the ready counts: a pod is Ready from ready_at until it was removed.
    pods = cluster.finished + cluster.pods
    for t in moments:
        ready = sum(
            1 for p in pods if p.ready_at is not None and p.ready_at <= t and (p.removed_at is None or p.removed_at > t)
        )
        changes.append((t, ready))
    _, gpu_usd = gpu_cost_usd(cluster.lifetimes(HORIZON), spec.billing)
    after = [r for t, r in changes if t <= HORIZON][-1]
    return [(t, r) for t, r in changes if t < HORIZON], gpu_usd, after


def _world_cost(
    plan: tuple[int, ...],
    assignment: tuple[int, ...],
    arrivals: list[float],
    inputs: list[int],
    outputs: list[int],
    usd_per_hour: float,
    minimum: int = 0,
) -> float:
    """GPU bill (by the second, at least `minimum` seconds a replica) plus the API price of every request
    not on time on the GPUs, in the
    simulated cluster with `plan[k]` replicas asked for at tick k and requests routed as assigned
    (0: API, 1: normal lane, 2: late lane), served by the reference engine."""
    changes, gpu_usd, after = plan_world(plan, usd_per_hour, minimum)
    reference = _Reference(None, 0.0, False, 0)
    timeline = sorted([(t, 0, r) for t, r in changes] + [(t, 1, i) for i, t in enumerate(arrivals)])
    for t, kind, value in timeline:
        reference.advance(t)
        if kind == 0:
            reference.ready = value
        elif assignment[value]:
            reference.lanes[assignment[value] - 1].append(
                [float(value), (inputs[value] + outputs[value]) / EIGHTHS, inputs[value] / EIGHTHS]
            )
    reference.advance(HORIZON)
    reference.ready = after
    reference.advance(1e9)
    priced = gpu_usd
    for i in range(len(arrivals)):
        on_time = False
        if assignment[i] and i in reference.prefilled:
            first = max(reference.started[i] + inputs[i] / EIGHTHS, reference.prefilled[i])
            on_time = first - arrivals[i] <= OBJECTIVE
        if not on_time:
            priced += inputs[i] * USD_PER_TOKEN + outputs[i] * OUTPUT_USD_PER_TOKEN
    return priced


def _world_best(
    arrivals: list[float],
    inputs: list[int],
    outputs: list[int],
    usd_per_hour: float,
    *,
    top: int = 2,
    minimum: int = 0,
    lanes: int = 2,
) -> float:
    """The least `_world_cost` over every plan of 0..top replicas per tick and every routing (to the API
    or to one of `lanes` lanes)."""
    return min(
        _world_cost(plan, assignment, arrivals, inputs, outputs, usd_per_hour, minimum)
        for plan in itertools.product(range(top + 1), repeat=int(HORIZON / STEP))
        for assignment in itertools.product(range(lanes + 1), repeat=len(arrivals))
    )


@pytest.mark.parametrize("seed", range(25))
def test_no_plan_and_routing_of_a_tiny_world_beats_the_bound(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    arrivals, inputs, outputs = _random_case(rng)
    usd_per_hour = float(rng.choice([360.0, 3600.0, 36000.0]))
    bound = offline_optimum(_problem(arrivals, inputs, outputs, top=2, usd_per_hour=usd_per_hour)).total_usd
    assert bound <= _world_best(arrivals, inputs, outputs, usd_per_hour) + 1e-9


def test_one_lane_tightens_the_bound_and_no_one_lane_world_beats_it() -> None:
    # Where the late lane cannot be reached, every on-time request shares one FIFO lane: only its last
    # request's decode is exempt from a group's capacity, not each of two lanes' last. The one-lane bound
    # is at least the two-lane one and at most every plan and routing to the API or the one lane.
    tighter = 0
    cases = [(*_random_case(np.random.default_rng(2100 + seed)), 360.0) for seed in range(10)]
    cases += _boundary_cases(2200, 30)
    for seed, (arrivals, inputs, outputs, usd_per_hour) in enumerate(cases):
        one = offline_optimum(_problem(arrivals, inputs, outputs, top=2, usd_per_hour=usd_per_hour, lanes=1))
        two = offline_optimum(_problem(arrivals, inputs, outputs, top=2, usd_per_hour=usd_per_hour))
        assert one.total_usd >= two.total_usd - 1e-9
        tighter += one.total_usd > two.total_usd + 1e-9
        best = _world_best(arrivals, inputs, outputs, usd_per_hour, lanes=1)
        assert one.total_usd <= best + 1e-9, f"case {seed}: bound {one.total_usd} above the world's {best}"
    assert tighter >= 3, f"one lane tightened only {tighter} of {len(cases)} cases"


def test_a_billed_minimum_tightens_the_bound_and_no_world_beats_it() -> None:
    # Every replica billed at least 6 s, three cold starts: the bound counts that floor for each start
    # (the weights of "Billing units"), above the bound by the second and below every plan and routing.
    tighter = 0
    for seed in range(25):
        rng = np.random.default_rng(700 + seed)
        arrivals, inputs, outputs = _random_case(rng)
        usd_per_hour = float(rng.choice([360.0, 3600.0, 36000.0]))
        floored = offline_optimum(_problem(arrivals, inputs, outputs, top=2, usd_per_hour=usd_per_hour, minimum=6.0))
        by_second = offline_optimum(_problem(arrivals, inputs, outputs, top=2, usd_per_hour=usd_per_hour))
        assert floored.total_usd >= by_second.total_usd - 1e-9
        tighter += floored.total_usd > by_second.total_usd + 1e-9
        best = _world_best(arrivals, inputs, outputs, usd_per_hour, minimum=6)
        assert floored.total_usd <= best + 1e-9, f"seed {seed}: bound {floored.total_usd} above the world's {best}"
        assert floored.gpu_usd + floored.fallback_usd == pytest.approx(floored.total_usd)
        # What the report splits into GPU and API dollars is the DP's own value at the weight it chose.
        problem = _problem(arrivals, inputs, outputs, top=2, usd_per_hour=usd_per_hour, minimum=6.0)
        assert _best(problem)[0].total_usd == pytest.approx(floored.total_usd, abs=1e-9)
    assert tighter >= 5, f"the billed minimum tightened only {tighter} of 25 cases"


def test_a_short_rental_pays_its_billed_minimum() -> None:
    # One request at 4 s: a replica Ready at 4 s serves it for $2 by the second (4 s of life at $0.50/s)
    # but is billed at least 6 s, $3, as much as the API: the bound finds the world's $3, not $2.
    arrivals, inputs, outputs = [4.0], [8], [4]
    by_second = offline_optimum(_problem(arrivals, inputs, outputs, top=2, usd_per_hour=1800.0))
    assert by_second.total_usd == pytest.approx(2.0)
    floored = offline_optimum(_problem(arrivals, inputs, outputs, top=2, usd_per_hour=1800.0, minimum=6.0))
    assert floored.total_usd == pytest.approx(3.0)
    assert floored.billing_weight < 1.0
    assert _world_best(arrivals, inputs, outputs, 1800.0, minimum=6) == pytest.approx(3.0)
    # Dearer at the API ($5): the replica pays, its 6 s billed in full and no more (a start counted at
    # its cold start as well as its floor would make it $4).
    arrivals, inputs, outputs = [4.0], [12], [8]
    floored = offline_optimum(_problem(arrivals, inputs, outputs, top=2, usd_per_hour=1800.0, minimum=6.0))
    assert floored.total_usd == pytest.approx(3.0)
    assert floored.fallback_usd == pytest.approx(0.0)
    assert _world_best(arrivals, inputs, outputs, 1800.0, minimum=6) == pytest.approx(3.0)


def test_a_minimum_within_the_cold_start_leaves_the_bound_by_the_second() -> None:
    # Every replica that becomes Ready lives a cold start (2 s) at least: a 2 s minimum bills nothing more.
    rng = np.random.default_rng(9)
    arrivals, inputs, outputs = _random_case(rng)
    plain = offline_optimum(_problem(arrivals, inputs, outputs, top=2, usd_per_hour=3600.0))
    floored = offline_optimum(_problem(arrivals, inputs, outputs, top=2, usd_per_hour=3600.0, minimum=COLD))
    assert floored.total_usd == plain.total_usd
    assert floored.billing_weight == 1.0


@pytest.mark.parametrize(("unit", "minimum"), [(0.0, 0.0), (-1.0, 0.0), (1.0, -5.0)])
def test_a_billing_unit_must_be_positive_and_the_minimum_not_negative(unit: float, minimum: float) -> None:
    problem = _problem([1.0], [4], [0], top=1, usd_per_hour=1.0)
    with pytest.raises(ValueError, match="billing unit > 0 s and a minimum >= 0 s"):
        dataclasses.replace(problem, billing_unit_s=unit, minimum_billed_s=minimum)


def _tighter_and_below_every_world(
    cases: list[tuple[list[float], list[int], list[int], float]],
    monkeypatch: pytest.MonkeyPatch,
    module: object,
    setting: str,
    looser: float,
) -> int:
    """For one-replica worlds: the bound stays at or above itself with `module.setting = looser` and at
    or below every plan and routing of the world; how many cases it is strictly tighter in.

    Unless the setting is the window LPs' own, both bounds are taken without them (which would hide
    what the partition bound's setting does)."""
    import policies.optimum as optimum

    if setting != "WINDOW_PASSES":
        monkeypatch.setattr(optimum, "WINDOW_PASSES", 0)
    tighter = 0
    for seed, (arrivals, inputs, outputs, usd_per_hour) in enumerate(cases):
        problem = _problem(arrivals, inputs, outputs, top=1, usd_per_hour=usd_per_hour)
        bound = offline_optimum(problem).total_usd
        with monkeypatch.context() as patch:
            patch.setattr(module, setting, looser)
            loose = offline_optimum(problem).total_usd
        assert bound >= loose - 1e-9
        tighter += bound > loose + 1e-9
        best = _world_best(arrivals, inputs, outputs, usd_per_hour, top=1)
        assert bound <= best + 1e-9, f"case {seed}: bound {bound} above the world's best {best}"
    return tighter


def _boundary_case(rng: np.random.Generator) -> tuple[list[float], list[int], list[int]]:
    """Requests around a slot boundary, enough of them to fill a replica across it."""
    m = int(rng.integers(3, 6))
    edge = float(rng.choice([2.0, 4.0]))
    arrivals = sorted((edge + rng.integers(-12, 9, m) / EIGHTHS).tolist())
    inputs = rng.integers(2, 14, m).tolist()
    outputs = rng.integers(0, 10, m).tolist()
    return arrivals, inputs, outputs


def _boundary_cases(first_seed: int, count: int) -> list[tuple[list[float], list[int], list[int], float]]:
    """`count` boundary cases from seeds `first_seed` on, each with a cheap GPU (one runs, full)."""
    cases = []
    for seed in range(count):
        rng = np.random.default_rng(first_seed + seed)
        arrivals, inputs, outputs = _boundary_case(rng)
        cases.append((arrivals, inputs, outputs, float(rng.choice([36.0, 360.0]))))
    return cases


def test_the_capacity_two_slots_share_is_counted_once_and_the_bound_stays_below_every_world(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The window of a slot's last requests reaches into the next slot, whose first requests use the same
    # capacity. Counting it for both (SHARE_LEVELS = 0, the earlier bound) is looser; the levels must
    # still stay below every plan and routing of the world, and be tighter somewhere.
    import policies.optimum as optimum

    cases = _boundary_cases(500, 40)
    tighter = _tighter_and_below_every_world(cases, monkeypatch, optimum, "SHARE_LEVELS", 0)
    assert tighter >= 4, f"the shared capacity tightened only {tighter} of 40 cases"


def test_fine_atoms_tighten_the_bound_and_it_stays_below_every_world(monkeypatch: pytest.MonkeyPatch) -> None:
    # One 4 s slot (a 4 s tick and cold start): its requests are cut into atoms of a quarter of the objective
    # where one replica cannot serve them whole. Coarse atoms (FINE_ATOM_SHARE = 1) give a looser bound;
    # the fine one must still stay below every plan and routing of the world, and be tighter somewhere.
    import policies.slot_savings as slot_savings
    import tests.test_optimum as here

    for name, value in (("COLD", 4.0), ("STEP", 4.0), ("HORIZON", 8.0)):
        monkeypatch.setattr(here, name, value)
    cases = []
    for seed in range(80):
        rng = np.random.default_rng(900 + seed)
        m = int(rng.integers(3, 6))
        arrivals = sorted((4.0 + rng.integers(0, 32, m) / EIGHTHS).tolist())
        inputs, outputs = rng.integers(2, 14, m).tolist(), rng.integers(0, 10, m).tolist()
        cases.append((arrivals, inputs, outputs, float(rng.choice([36.0, 360.0]))))
    tighter = _tighter_and_below_every_world(cases, monkeypatch, slot_savings, "FINE_ATOM_SHARE", 1.0)
    assert tighter >= 3, f"fine atoms tightened only {tighter} of 80 cases"


def test_each_bins_work_counted_in_full_tightens_the_bound_and_it_stays_below_every_world(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Outputs at three times an input's price: requests range from 2 to 6 dollars per replica-second of
    # work, several to a density bin. Counting a bin's work at its densest request only
    # (BIN_SEGMENTS = 1, the earlier bound) is looser; the two-segment envelope of each bin must still
    # stay below every plan and routing of the world, and be tighter somewhere.
    import policies.slot_savings as slot_savings
    import tests.test_optimum as here

    monkeypatch.setattr(here, "OUTPUT_USD_PER_TOKEN", 3 * USD_PER_TOKEN)
    cases = _boundary_cases(1300, 40)
    tighter = _tighter_and_below_every_world(cases, monkeypatch, slot_savings, "BIN_SEGMENTS", 1)
    assert tighter >= 4, f"counting each bin's work in full tightened only {tighter} of 40 cases"


def test_window_lps_tighten_the_bound_and_it_stays_below_every_world(monkeypatch: pytest.MonkeyPatch) -> None:
    # Requests crowding one replica around a slot boundary, outputs dearer than inputs: every arrival
    # and latest-start window at once (the window LPs) must bound no looser than the partition alone
    # (WINDOW_PASSES = 0), stay below every plan and routing of the world, and be tighter somewhere.
    import policies.optimum as optimum
    import tests.test_optimum as here

    monkeypatch.setattr(here, "OUTPUT_USD_PER_TOKEN", 3 * USD_PER_TOKEN)
    cases = _boundary_cases(1700, 80)
    tighter = _tighter_and_below_every_world(cases, monkeypatch, optimum, "WINDOW_PASSES", 0)
    assert tighter >= 3, f"the window LPs tightened only {tighter} of 80 cases"


@pytest.mark.parametrize("seed", range(30))
def test_a_bins_envelope_is_above_every_subset_and_reached_by_the_whole_bin(seed: int) -> None:
    # The lemma behind each bin's two segments: no subset of a bin's requests saves more than the
    # envelope at its work, and the whole bin saves exactly its value at its whole work.
    from policies.slot_savings import _greedy, _segments

    rng = np.random.default_rng(1700 + seed)
    m = int(rng.integers(1, 8))
    work = rng.uniform(0.1, 3.0, m)
    value = work * rng.uniform(1.0, float(rng.choice([1.01, 1.3, 4.0])), m)
    density = value / work
    hi, lo = np.array([density.max()]), np.array([density.min()])
    widths = _segments(np.array([value.sum()]), np.array([work.sum()]), hi, lo)
    upper = np.cumsum(widths)
    before = upper - widths
    dens = np.array([hi[0], lo[0]])

    def envelope(w: float) -> float:
        return float(_greedy(before, upper, dens, np.array(w)))

    assert upper[-1] == pytest.approx(work.sum())
    assert envelope(float(work.sum())) == pytest.approx(value.sum())
    for mask in itertools.product((False, True), repeat=m):
        chosen = np.asarray(mask)
        assert value[chosen].sum() <= envelope(float(work[chosen].sum())) + 1e-9


def test_one_request_the_bound_is_the_true_optimum() -> None:
    # One request at 4 s: a replica started at tick 2 is Ready at 4 and serves it on time; 2 s of cold
    # start and 2 s of service cost $2 at $0.50/s, against $3 at the API.
    arrivals, inputs, outputs = [4.0], [8], [4]
    bound = offline_optimum(_problem(arrivals, inputs, outputs, top=2, usd_per_hour=1800.0))
    assert bound.total_usd == pytest.approx(2.0)
    best = min(
        _world_cost(plan, assignment, arrivals, inputs, outputs, 1800.0)
        for plan in itertools.product(range(3), repeat=3)
        for assignment in itertools.product(range(3), repeat=1)
    )
    assert best == pytest.approx(bound.total_usd)


def test_an_expensive_gpu_sends_everything_to_the_api() -> None:
    bound = offline_optimum(_problem([1.0, 3.0], [8, 8], [0, 0], top=2, usd_per_hour=3600.0 * 100))
    assert bound.gpu_usd == 0.0
    assert bound.fallback_usd == pytest.approx(2 * 8 * USD_PER_TOKEN)
    assert bound.fallback_requests == pytest.approx(2.0)


def test_a_replica_cannot_be_ready_before_its_cold_start() -> None:
    # A request at 0 s with 0.5 s of prefill: no replica is Ready before 2 s, too late for a first token
    # by 2 s, so it goes to the API however cheap the GPU.
    bound = offline_optimum(_problem([0.0], [4], [0], top=2, usd_per_hour=1.0))
    assert bound.total_usd == pytest.approx(4 * USD_PER_TOKEN)


def _spec(granularity: str, cold_start: int, max_replicas: int, objective: float) -> GPUPoolSpec:
    return GPUPoolSpec.model_validate(
        {
            "target": {"deployment": "vllm", "minReplicas": 0, "maxReplicas": max_replicas},
            "schedule": {
                "timezone": "America/New_York",
                "windows": [
                    {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:00", "minReplicas": 1}
                ],
            },
            "coldStartSeconds": cold_start,
            "billing": {"granularity": granularity, "minimumBilledSeconds": 60},
            "fallback": {
                "providers": [{"name": "api", "baseUrl": "https://api.example.com/v1"}],
                "maxQueueWaitSeconds": 1,
            },
            "objective": {"ttftSeconds": objective},
        }
    )


@pytest.mark.parametrize(
    ("service", "peak_rps", "granularity", "cold_start", "max_replicas", "tick", "objective", "seed"),
    [
        ("code", 0.3, "second", 180, 8, 15.0, 2.0, 1),
        ("code", 3.0, "second", 180, 8, 30.0, 2.0, 2),
        ("code", 15.0, "hour", 180, 4, 30.0, 2.0, 3),
        ("conv", 2.0, "second", 120, 6, 20.0, 3.0, 4),
        ("conv", 8.0, "minute", 100, 3, 30.0, 1.0, 5),
        ("code", 15.0, "second", 180, 40, 30.0, 2.0, 6),
    ],
)
def test_no_policy_costs_less_than_the_bound(
    service: str,
    peak_rps: float,
    granularity: str,
    cold_start: int,
    max_replicas: int,
    tick: float,
    objective: float,
    seed: int,
) -> None:
    workload = build_week(
        read_trace(EXAMPLES / "azure_code_2023.csv"),
        load_profile(EXAMPLES / "azure2024_diurnal.json", service),
        days=1,
        start=MONDAY,
        peak_rps=peak_rps,
        seed=seed,
    )
    spec = _spec(granularity, cold_start, max_replicas, objective)
    settings = RunSettings(tick_seconds=tick, slo_ttft_seconds=objective)
    optimum = optimum_run(workload, spec, settings)
    assert optimum.total_usd >= lower_bound_run(workload, spec, settings).total_usd - 1e-9
    for name in POLICY_NAMES:
        if name in OFFLINE:
            continue
        run = run_one(name, workload, spec, settings, progress=False)
        assert run.slo_priced_usd is not None
        assert optimum.total_usd <= run.slo_priced_usd + 1e-9, f"{name}: ${run.slo_priced_usd:.2f} below the bound"
        if run.slo_attainment == 1.0:
            assert optimum.total_usd <= run.total_usd + 1e-9


def test_the_bound_is_exact_in_the_billing_when_load_is_light() -> None:
    # Sparse small requests, cheap GPUs: the plan keeps one replica from its first Ready moment on; the
    # bound's GPU bill is that replica's time plus one cold start, and nothing goes to the API.
    replica = ReplicaModel()
    arrival = np.arange(200.0, 3600.0, 10.0)
    inputs = np.full(arrival.size, 1000, dtype=np.int64)
    outputs = np.full(arrival.size, 10, dtype=np.int64)
    problem = OptimumProblem(
        arrival_s=arrival,
        work_s=replica.work_seconds(inputs, outputs),
        prefill_s=inputs / replica.prefill_tokens_per_second,
        api_usd=(inputs * 3.0 + outputs * 15.0) / 1e6 * 100,
        horizon_s=3600.0,
        step_s=15.0,
        cold_start_s=180.0,
        objective_s=2.0,
        max_replicas=8,
        replica_usd_per_hour=1.6438,
    )
    best = offline_optimum(problem)
    assert best.fallback_usd == pytest.approx(0.0, abs=1e-9)
    assert best.starts == 1
    first_ready = float(best.slot_start_s[np.flatnonzero(best.ready)[0]])
    assert first_ready <= 200.0
    assert best.gpu_hours == pytest.approx((3600.0 - first_ready + 180.0) / 3600.0)


def test_the_plan_asks_one_cold_start_ahead_and_keeps_replicas_through_short_dips() -> None:
    from policies.plan import ReplicaPlan

    plan = ReplicaPlan(
        MONDAY, np.asarray([0.0, 15.0, 30.0, 45.0, 60.0]), np.asarray([0, 2, 0, 1, 1], dtype=np.int64), 20.0
    )
    assert plan.wanted(0.0) == 2  # Ready at 15 s: asked for now
    assert plan.wanted(15.0) == 2  # the dip at 30 s is shorter than a cold start
    assert plan.wanted(30.0) == 1
    assert plan.wanted(100.0) == 1  # after the last slot, its count


def test_a_large_pool_is_bounded_without_the_next_slot_and_never_above_a_smaller_one() -> None:
    rng = np.random.default_rng(3)
    arrival = np.sort(rng.uniform(0, 3600.0, 20_000))
    inputs = rng.integers(100, 4000, arrival.size)
    outputs = rng.integers(1, 400, arrival.size)
    replica = ReplicaModel()

    def bound(top: int) -> float:
        problem = OptimumProblem(
            arrival_s=arrival,
            work_s=replica.work_seconds(inputs, outputs),
            prefill_s=inputs / replica.prefill_tokens_per_second,
            api_usd=(inputs * 3.0 + outputs * 15.0) / 1e6,
            horizon_s=3600.0,
            step_s=15.0,
            cold_start_s=180.0,
            objective_s=2.0,
            max_replicas=top,
            replica_usd_per_hour=1.6438,
        )
        return offline_optimum(problem).total_usd

    small, large = bound(8), bound(40)
    assert 0 < large <= small + 1e-9


@pytest.mark.parametrize("seed", range(6))
def test_leaving_out_empty_atoms_changes_no_slots_bound(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each slot's partition DP runs over its filled atoms only (`_compact`); over all of them, empty
    # ones included, it must give the same bound (to the rounding of sums taken in other shapes) and
    # the same plan.
    import policies.slot_savings as slot_savings

    rng = np.random.default_rng(2100 + seed)
    m = int(rng.integers(20, 120))
    arrivals = np.sort(rng.uniform(0.0, 60.0, m))
    inputs = rng.integers(200, 4000, m).astype(np.float64)
    outputs = rng.integers(0, 600, m).astype(np.float64)
    problem = OptimumProblem(
        arrival_s=arrivals,
        work_s=inputs / 10_000 + outputs / 2_500,
        prefill_s=inputs / 10_000,
        api_usd=(3 * inputs + 15 * outputs) / 1e6,
        horizon_s=60.0,
        step_s=15.0,
        cold_start_s=30.0,
        objective_s=2.0,
        max_replicas=int(rng.integers(1, 4)),
        replica_usd_per_hour=float(rng.choice([0.5, 2.0, 8.0])),
    )
    compacted = offline_optimum(problem)

    def every_atom(a: slot_savings._Atoms, rows: np.ndarray) -> slot_savings._Atoms:
        fields = ("V", "E", "dtop", "free", "first", "last")
        return slot_savings._Atoms(a.atoms, **{f: getattr(a, f)[rows] for f in fields})

    monkeypatch.setattr(slot_savings, "_compact", every_atom)
    whole = offline_optimum(problem)
    assert compacted.total_usd == pytest.approx(whole.total_usd, rel=1e-12, abs=1e-15)
    assert np.array_equal(compacted.ready, whole.ready)
