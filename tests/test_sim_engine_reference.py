"""The serving engine against a plain event-by-event reference, on small random cases.

The engine recovers start times from served-work curves, vectorised, with two preemptive lanes; the
reference below serves one request at a time (the head of the normal lane, else of the late lane) and
notes when each first gets service. Times, prompts and outputs are multiples of 1/8 so both do exact
arithmetic (ready counts are powers of two, so dividing by them is exact too) and no tie between an
arrival and the end of a service is decided by rounding.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.sim.engine import FallbackModel, PoolEngine, ReplicaModel, RouteCode
from controller.sim.workload import Workload
from policies.cost import ApiPrice
from policies.overflow import Lane, Route, Routing, route_request

EIGHTHS = 8.0
# 8 tokens/s of prefill and of decode: a request's work and prefill are multiples of 1/8 s.
REPLICA = ReplicaModel(EIGHTHS, EIGHTHS, 1e12, 256)
FALLBACK = FallbackModel(ttft_seconds=0.75)
HORIZON = 40.0
READY = st.sampled_from([0, 1, 2, 4])


class _Reference:
    """Two FIFO lanes of [index, remaining work, remaining prefill work]; the pool serves one head at
    `ready` work per second. A first token comes one prefill after the start, or once the prefill's
    work has been served if pauses made that later."""

    def __init__(self, objective: float | None, max_wait: float, fallback_open: bool, ready: int) -> None:
        self.objective, self.max_wait, self.fallback_open = objective, max_wait, fallback_open
        self.ready = ready
        self.t = 0.0
        self.lanes: tuple[deque[list[float]], deque[list[float]]] = (deque(), deque())
        self.started: dict[int, float] = {}
        self.prefilled: dict[int, float] = {}
        """When each request's prefill work had been served."""

    def advance(self, until: float) -> None:
        while self.t < until:
            lane = self.lanes[0] if self.lanes[0] else self.lanes[1]
            if self.ready == 0 or not lane:
                self.t = until
                return
            index, remaining, prefill_left = lane[0]
            self.started.setdefault(int(index), self.t)
            if prefill_left <= 0.0:
                self.prefilled.setdefault(int(index), self.t)
            step = min(remaining, prefill_left) if prefill_left > 0.0 else remaining
            needed = step / self.ready
            if self.t + needed <= until:
                self.t += needed
                lane[0][1] -= step
                lane[0][2] -= step
                if lane[0][2] <= 0.0:
                    self.prefilled.setdefault(int(index), self.t)
                if lane[0][1] <= 0.0:
                    lane.popleft()
            else:
                done = self.ready * (until - self.t)
                lane[0][1] -= done
                lane[0][2] -= done
                self.t = until

    def arrive(self, index: int, work: float, prefill: float) -> tuple[int, bool]:
        waiting = sum(item[1] for item in self.lanes[0])
        late = sum(item[1] for item in self.lanes[1])
        decision = route_request(
            waiting=waiting,
            ready_replicas=self.ready,
            replica_requests_per_second=1.0,
            max_wait_seconds=self.max_wait,
            fallback_open=self.fallback_open,
            late_waiting=late,
            on_time_wait_seconds=None if self.objective is None else self.objective - prefill,
        )
        if decision.route is Route.FALLBACK:
            return RouteCode.FALLBACK, False
        if decision.route is Route.REJECT:
            return RouteCode.REJECT, False
        self.lanes[int(decision.lane)].append([float(index), work, prefill])
        return RouteCode.GPU, decision.lane is Lane.LATE


def _eighths(low: int, high: int) -> st.SearchStrategy[float]:
    return st.integers(low, high).map(lambda k: k / EIGHTHS)


@dataclass(frozen=True)
class Case:
    arrivals: list[float]
    inputs: list[int]
    outputs: list[int]
    initial_ready: int
    changes: list[tuple[float, int]]
    """(time, Ready replicas from then on)."""
    samples: list[float]
    """Times the control loop reads the metrics."""
    objective: float | None
    max_wait: float
    fallback_open: bool


@st.composite
def cases(draw: st.DrawFn) -> Case:
    n = draw(st.integers(1, 25))
    arrivals = sorted(draw(st.lists(_eighths(0, 160), min_size=n, max_size=n)))
    inputs = draw(st.lists(st.integers(0, 24), min_size=n, max_size=n))
    # An output of 0 makes the work all prefill; a request with no tokens at all has its own test.
    outputs = [
        max(out, 0 if inp else 1)
        for inp, out in zip(inputs, draw(st.lists(st.integers(0, 16), min_size=n, max_size=n)), strict=True)
    ]
    changes = sorted(draw(st.lists(st.tuples(_eighths(1, 200), READY), max_size=4)))
    last_ready = draw(READY.filter(bool))  # something serves the tail, so every queued request starts
    return Case(
        arrivals=arrivals,
        inputs=inputs,
        outputs=outputs,
        initial_ready=draw(READY),
        changes=[*changes, (HORIZON - 8.0, last_ready)],
        samples=sorted(draw(st.lists(_eighths(1, 300), max_size=5))),
        objective=draw(st.sampled_from([None, 0.5, 2.0, 3.0])),
        max_wait=draw(st.sampled_from([0.0, 1.0, 2.5, 1e9])),
        fallback_open=draw(st.booleans()),
    )


@settings(max_examples=300, deadline=None)
@given(cases())
def test_engine_matches_the_event_by_event_reference(case: Case) -> None:
    arrivals, inputs, outputs = case.arrivals, case.inputs, case.outputs
    objective, max_wait, fallback_open = case.objective, case.max_wait, case.fallback_open
    changes, samples, initial_ready = case.changes, case.samples, case.initial_ready

    workload = Workload(
        arrival_s=np.asarray(arrivals, dtype=np.float64),
        input_tokens=np.asarray(inputs, dtype=np.int64),
        output_tokens=np.asarray(outputs, dtype=np.int64),
        start=dt.datetime(2024, 5, 13, tzinfo=dt.UTC),
        duration_s=HORIZON,
    )
    engine = PoolEngine(
        workload,
        REPLICA,
        FALLBACK,
        routing=Routing.OVERFLOW,
        max_wait_seconds=max_wait,
        price=ApiPrice(3.0, 15.0),
        objective_ttft_seconds=objective,
        has_fallback=fallback_open,
    )
    engine.set_ready(initial_ready)
    reference = _Reference(objective, max_wait, fallback_open, initial_ready)

    # The engine: ready changes and samples at their times (a sample must not change any outcome).
    events = sorted([(t, 0, r) for t, r in changes] + [(t, 1, 0) for t in samples if t < HORIZON])
    for t, kind, ready in events:
        engine.run_until(t)
        if kind == 0:
            engine.set_ready(ready)
        else:
            engine.sample()
    engine.finish(HORIZON)

    # The reference: at equal times a ready change comes before an arrival (the engine's order).
    codes, late = [], []
    timeline = sorted([(t, 0, r) for t, r in changes] + [(t, 1, i) for i, t in enumerate(arrivals)])
    for t, kind, value in timeline:
        reference.advance(t)
        if kind == 0:
            reference.ready = value
        else:
            code, is_late = reference.arrive(
                value, inputs[value] / EIGHTHS + outputs[value] / EIGHTHS, inputs[value] / EIGHTHS
            )
            codes.append(code)
            late.append(is_late)
    reference.advance(1e9)

    assert engine.route.tolist() == codes
    assert engine.late.tolist() == late
    expected = []
    for i, code in enumerate(codes):
        if code == RouteCode.GPU:
            first_token = max(reference.started[i] + inputs[i] / EIGHTHS, reference.prefilled[i])
            expected.append(first_token - arrivals[i])
        elif code == RouteCode.FALLBACK:
            expected.append(FALLBACK.ttft_seconds)
        else:
            expected.append(np.inf)
    assert engine.ttft.tolist() == pytest.approx(expected, abs=1e-9)
