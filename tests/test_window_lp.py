"""The window LP of one slot (`policies/window_lp.py`) against every routing of its requests.

One slot with `n` replicas Ready throughout: no routing of its requests (to the API, or to either FIFO
lane, served by the event-by-event reference engine) saves more on time than the certificate says,
and on slots whose requests differ in price per second of work the certificate is often below the
partition bound (`policies/slot_savings.py`).
"""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest

from policies.optimum import OptimumProblem, slot_grid
from policies.slot_savings import SlotSavings
from policies.window_lp import SlotGeometry, certificate
from tests.test_sim_engine_reference import _Reference

EIGHTHS = 8.0
OBJECTIVE = 2.0
LENGTH = 8.0


def _best_saving(a: np.ndarray, w: np.ndarray, p: np.ndarray, v: np.ndarray, n: int, lanes: int) -> float:
    """The most any routing saves: requests on time on the GPUs, every assignment to the API or a lane."""
    best = 0.0
    for assignment in itertools.product(range(lanes + 1), repeat=a.size):
        reference = _Reference(None, 0.0, False, n)
        for i, lane in enumerate(assignment):
            reference.advance(float(a[i]))
            if lane:
                reference.lanes[lane - 1].append([float(i), float(w[i]), float(p[i])])
        reference.advance(1e9)
        saved = 0.0
        for i, lane in enumerate(assignment):
            if lane and i in reference.prefilled:
                first = max(reference.started[i] + p[i], reference.prefilled[i])
                saved += v[i] if first - a[i] <= OBJECTIVE + 1e-12 else 0.0
        best = max(best, saved)
    return best


def _slot(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int]:
    rng = np.random.default_rng(seed)
    m = int(rng.integers(5, 9))
    arrival = np.sort(rng.integers(0, 40, m) / EIGHTHS)
    inputs, outputs = rng.integers(3, 14, m), rng.integers(0, 6, m)
    work, prefill = (inputs + outputs) / EIGHTHS, inputs / EIGHTHS
    value = inputs * 0.25 + outputs * 0.75  # outputs dearer: requests differ in price per work
    return arrival, work, prefill, value, int(rng.integers(1, 3)), int(rng.integers(1, 3))


def _partition_bound(a: np.ndarray, w: np.ndarray, p: np.ndarray, v: np.ndarray, n: int, lanes: int) -> float:
    """The partition bound of the same slot (the second of two `LENGTH` slots, `n` Ready in both)."""
    problem = OptimumProblem(
        arrival_s=a + LENGTH,
        work_s=w,
        prefill_s=p,
        api_usd=v,
        horizon_s=2 * LENGTH,
        step_s=LENGTH,
        cold_start_s=LENGTH,
        objective_s=OBJECTIVE,
        max_replicas=n,
        replica_usd_per_hour=36.0,
        lanes=lanes,
    )
    bounds, _ = slot_grid(problem.horizon_s, problem.step_s, problem.cold_start_s)
    savings = SlotSavings(problem, bounds, 4, exact_next=True)
    return float(savings._chunk(np.array([1]))[0][n, 0, n, -1])


def test_no_routing_of_a_slot_saves_more_than_its_window_lp_and_it_is_often_below_the_partition() -> None:
    tighter = 0
    for seed in range(30):
        a, w, p, v, n, lanes = _slot(seed)
        geometry = SlotGeometry(length=LENGTH, shared_in=OBJECTIVE, shared_out=OBJECTIVE, next_length=math.inf, top=n)
        cert = certificate(geometry, a, w, p, v, objective=OBJECTIVE, lanes=lanes, at=(n, 0.0, n, 1.0))
        counts = np.arange(n + 1.0)
        lp = float(v.sum()) if cert is None else float(cert.bound(counts, np.zeros(1), counts, np.ones(1))[n, 0, n, 0])
        best = _best_saving(a, w, p, v, n, lanes)
        assert lp >= best - 1e-9, f"slot {seed}: the LP bounds {lp}, a routing saves {best}"
        tighter += lp < _partition_bound(a, w, p, v, n, lanes) - 1e-9
    assert tighter >= 6, f"the window LP was below the partition bound in only {tighter} of 30 slots"


def test_a_certificate_bounds_every_combination_from_one_solve() -> None:
    # Solved at one combination, the certificate must still bound the LP at every other (weak duality):
    # no combination's bound is below what the LP solved there gives.
    a, w, p, v, n, lanes = _slot(3)
    top = 2
    geometry = SlotGeometry(length=LENGTH, shared_in=OBJECTIVE, shared_out=OBJECTIVE, next_length=LENGTH, top=top)
    counts, in_share, out_share = np.arange(top + 1.0), np.array([0.0, 0.5]), np.array([0.5, 1.0])
    one = certificate(geometry, a, w, p, v, objective=OBJECTIVE, lanes=lanes, at=(1.0, 0.0, 1.0, 1.0))
    assert one is not None
    spread = one.bound(counts, in_share, counts, out_share)
    for n, j, n2, j2 in itertools.product(range(1, top + 1), range(2), range(top + 1), range(2)):
        here = certificate(
            geometry, a, w, p, v, objective=OBJECTIVE, lanes=lanes, at=(n, in_share[j], n2, out_share[j2])
        )
        exact = float(v.sum()) if here is None else float(here.bound(counts, in_share, counts, out_share)[n, j, n2, j2])
        assert spread[n, j, n2, j2] >= exact - 1e-7 * max(exact, 1.0)


def test_a_slot_whose_requests_all_fit_has_nothing_to_tighten() -> None:
    geometry = SlotGeometry(length=LENGTH, shared_in=OBJECTIVE, shared_out=OBJECTIVE, next_length=math.inf, top=1)
    a, w = np.array([0.0, 4.0]), np.array([0.5, 0.5])
    assert certificate(geometry, a, w, w / 2, np.ones(2), objective=OBJECTIVE, lanes=1, at=(1, 0.0, 1, 1.0)) is None
    assert certificate(geometry, a[:0], w[:0], w[:0], w[:0], objective=OBJECTIVE, lanes=1, at=(1, 0.0, 1, 1.0)) is None


@pytest.mark.parametrize("lanes", [1, 2])
def test_a_slot_one_replica_cannot_serve_on_time_saves_only_what_fits(lanes: int) -> None:
    # Four requests at once, each all prefill (1.5 s): on one replica only one is on time within 2 s,
    # whatever the lanes (the next one's prefill starts at 1.5 s). Every request is worth the same; the
    # arrival window [0, 2] holds 2 s of their 6 s of work, so the LP may save 4/3 of one.
    geometry = SlotGeometry(length=LENGTH, shared_in=OBJECTIVE, shared_out=OBJECTIVE, next_length=math.inf, top=1)
    a, w = np.zeros(4), np.full(4, 1.5)
    cert = certificate(geometry, a, w, w, np.ones(4), objective=OBJECTIVE, lanes=lanes, at=(1, 0.0, 1, 1.0))
    assert cert is not None
    bound = float(cert.bound(np.arange(2.0), np.zeros(1), np.arange(2.0), np.ones(1))[1, 0, 1, 0])
    assert _best_saving(a, w, w, np.ones(4), 1, lanes) == 1
    assert bound == pytest.approx(4 / 3)


def test_the_solver_prints_nothing() -> None:
    # HiGHS's Python class prints a banner on stdout when created; the tables `ebbtide simulate` prints
    # there must not carry it. A fresh process, since the banner comes once per process.
    script = (
        "import math, numpy as np\n"
        "from policies.window_lp import SlotGeometry, certificate\n"
        "g = SlotGeometry(length=8.0, shared_in=2.0, shared_out=2.0, next_length=math.inf, top=1)\n"
        "w = np.full(4, 1.5)\n"
        "assert certificate(g, np.zeros(4), w, w, np.ones(4), objective=2.0, lanes=2, at=(1, 0.0, 1, 1.0))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout == ""
