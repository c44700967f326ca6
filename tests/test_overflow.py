"""route_request and expected_wait_seconds: where one request goes given the pool's queue and throughput."""

from __future__ import annotations

import math

import pytest

from policies.overflow import (
    LATE,
    OUTPUT_MARGIN_SIGMAS,
    Lane,
    Route,
    RouteDecision,
    expected_wait_seconds,
    is_saturation,
    output_margin,
    route_request,
    waiting_floor,
)

INF = math.inf


@pytest.mark.parametrize(
    ("waiting", "ready", "rps", "expected"),
    [
        pytest.param(10, 4, 2.5, 1.0, id="10-waiting-over-4x2.5-per-s"),
        pytest.param(0, 1, 1.0, 0.0, id="empty-queue-no-wait"),
        pytest.param(1, 3, 0.5, 1 / 1.5, id="fractional"),
        pytest.param(7.5, 1, 3.0, 2.5, id="fractional-queue"),
        pytest.param(-5, 2, 1.0, 0.0, id="negative-queue-counts-as-empty"),
        pytest.param(3, 0, 1.0, INF, id="no-ready-replica-waits-forever"),
        pytest.param(0, 0, 1.0, INF, id="no-ready-replica-even-with-empty-queue"),
        pytest.param(3, -1, 1.0, INF, id="negative-ready-replicas"),
        pytest.param(3, 2, 0.0, INF, id="zero-throughput"),
        pytest.param(3, 2, -1.0, INF, id="negative-throughput"),
    ],
)
def test_expected_wait_seconds(waiting: float, ready: int, rps: float, expected: float) -> None:
    assert expected_wait_seconds(waiting, ready, rps) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("waiting", "ready", "rps", "max_wait", "fallback_open", "reject", "expected"),
    [
        # Scaled to zero or still starting: nothing can serve, so the wait is unbounded.
        pytest.param(0, 0, 2.0, 2.0, True, False, RouteDecision(Route.FALLBACK, "cold", INF), id="cold-to-fallback"),
        pytest.param(
            5, 0, 2.0, 2.0, True, True, RouteDecision(Route.FALLBACK, "cold", INF), id="cold-reject-flag-moot"
        ),
        pytest.param(
            0, 0, 2.0, 2.0, False, False, RouteDecision(Route.GPU, "cold-fallback-closed", INF), id="cold-closed-queues"
        ),
        pytest.param(
            0,
            0,
            2.0,
            2.0,
            False,
            True,
            RouteDecision(Route.REJECT, "cold-fallback-closed", INF),
            id="cold-closed-reject",
        ),
        # 2 ready replicas at 1.5 req/s each finish 3 requests per second.
        pytest.param(3, 2, 1.5, 2.0, True, False, RouteDecision(Route.GPU, "within-wait", 1.0), id="wait-under-limit"),
        pytest.param(
            6, 2, 1.5, 2.0, True, False, RouteDecision(Route.GPU, "within-wait", 2.0), id="wait-at-limit-stays"
        ),
        pytest.param(
            7,
            2,
            1.5,
            2.0,
            True,
            False,
            RouteDecision(Route.FALLBACK, "saturated", 7 / 3),
            id="wait-over-limit-overflows",
        ),
        pytest.param(
            7, 2, 1.5, 2.0, False, False, RouteDecision(Route.GPU, "saturated-fallback-closed", 7 / 3), id="over-closed"
        ),
        pytest.param(
            7,
            2,
            1.5,
            2.0,
            False,
            True,
            RouteDecision(Route.REJECT, "saturated-fallback-closed", 7 / 3),
            id="over-reject",
        ),
        pytest.param(
            3, 2, 1.5, 2.0, False, True, RouteDecision(Route.GPU, "within-wait", 1.0), id="under-limit-closed-still-gpu"
        ),
        pytest.param(
            0, 1, 1.0, 0.0, True, False, RouteDecision(Route.GPU, "within-wait", 0.0), id="zero-limit-empty-q"
        ),
        pytest.param(
            1, 1, 1.0, 0.0, True, False, RouteDecision(Route.FALLBACK, "saturated", 1.0), id="zero-limit-any-queue"
        ),
        pytest.param(
            0, 3, 0.0, 2.0, True, False, RouteDecision(Route.FALLBACK, "saturated", INF), id="ready-but-no-throughput"
        ),
    ],
)
def test_route_request(
    waiting: float,
    ready: int,
    rps: float,
    max_wait: float,
    fallback_open: bool,
    reject: bool,
    expected: RouteDecision,
) -> None:
    decision = route_request(
        waiting=waiting,
        ready_replicas=ready,
        replica_requests_per_second=rps,
        max_wait_seconds=max_wait,
        fallback_open=fallback_open,
        reject_when_closed=reject,
    )
    assert (decision.route, decision.reason) == (expected.route, expected.reason)
    assert decision.expected_wait_seconds == pytest.approx(expected.expected_wait_seconds)


def test_reject_defaults_to_off() -> None:
    decision = route_request(
        waiting=100, ready_replicas=1, replica_requests_per_second=1.0, max_wait_seconds=2.0, fallback_open=False
    )
    assert decision.route is Route.GPU


# Two lanes: a request that can still make the objective goes ahead of those that cannot.
@pytest.mark.parametrize(
    ("waiting", "late", "on_time", "max_wait", "fallback_open", "expected"),
    [
        pytest.param(1, 5, 2.0, 30.0, True, RouteDecision(Route.GPU, "on-time", 1.0), id="on-time-ahead-of-late"),
        pytest.param(2, 0, 2.0, 30.0, True, RouteDecision(Route.GPU, "on-time", 2.0), id="on-time-at-objective"),
        pytest.param(
            3, 5, 2.0, 30.0, True, RouteDecision(Route.GPU, "late-within-wait", 8.0, Lane.LATE), id="late-queues"
        ),
        pytest.param(
            3, 5, 2.0, 8.0, True, RouteDecision(Route.GPU, "late-within-wait", 8.0, Lane.LATE), id="late-at-limit"
        ),
        pytest.param(3, 5, 2.0, 7.0, True, RouteDecision(Route.FALLBACK, "saturated", 8.0), id="late-over-limit"),
        # A wait limit under the objective: the limit decides, as with one lane.
        pytest.param(2, 0, 2.0, 1.0, True, RouteDecision(Route.FALLBACK, "saturated", 2.0), id="limit-under-objective"),
        # ...but with no fallback to take it, a request that can still make the objective keeps its lane.
        pytest.param(
            2,
            5,
            2.0,
            1.0,
            False,
            RouteDecision(Route.GPU, "saturated-fallback-closed", 2.0, Lane.ON_TIME),
            id="limit-under-objective-closed",
        ),
        pytest.param(
            3,
            5,
            2.0,
            7.0,
            False,
            RouteDecision(Route.GPU, "saturated-fallback-closed", 8.0, Lane.LATE),
            id="closed-queues-late",
        ),
        # A prompt whose own prefill takes the whole objective can only be on time with no wait.
        pytest.param(0, 5, 0.0, 30.0, True, RouteDecision(Route.GPU, "on-time", 0.0), id="no-slack-empty-lane"),
        pytest.param(
            0.5, 0, 0.0, 30.0, True, RouteDecision(Route.GPU, "late-within-wait", 0.5, Lane.LATE), id="no-slack"
        ),
    ],
)
def test_route_request_with_lanes(
    waiting: float, late: float, on_time: float, max_wait: float, fallback_open: bool, expected: RouteDecision
) -> None:
    decision = route_request(
        waiting=waiting,
        ready_replicas=1,
        replica_requests_per_second=1.0,
        max_wait_seconds=max_wait,
        fallback_open=fallback_open,
        late_waiting=late,
        on_time_wait_seconds=on_time,
    )
    assert decision == expected


# With late_to_fallback, a request that would miss the objective goes to the open fallback on time
# (`fallback.takeLateRequests`); the lanes keep what the fallback cannot take.
@pytest.mark.parametrize(
    ("waiting", "ready", "on_time", "max_wait", "fallback_open", "late_lane", "expected"),
    [
        pytest.param(3, 1, 2.0, 30.0, True, True, RouteDecision(Route.FALLBACK, LATE, 3.0), id="late-to-fallback"),
        pytest.param(0.5, 1, 0.0, 30.0, True, True, RouteDecision(Route.FALLBACK, LATE, 0.5), id="long-prompt"),
        # Beyond the wait limit it is saturation, as without the flag.
        pytest.param(3, 1, 2.0, 1.0, True, True, RouteDecision(Route.FALLBACK, "saturated", 3.0), id="over-limit"),
        pytest.param(1, 1, 2.0, 30.0, True, True, RouteDecision(Route.GPU, "on-time", 1.0), id="on-time-stays"),
        pytest.param(
            2, 1, 3.0, 1.0, True, True, RouteDecision(Route.FALLBACK, "saturated", 2.0), id="on-time-over-limit"
        ),
        pytest.param(
            3, 1, 2.0, 30.0, False, True, RouteDecision(Route.GPU, "late-within-wait", 8.0, Lane.LATE), id="closed"
        ),
        pytest.param(3, 0, 2.0, 30.0, True, True, RouteDecision(Route.FALLBACK, "cold", INF), id="nothing-ready"),
        pytest.param(3, 1, 2.0, 30.0, True, False, RouteDecision(Route.FALLBACK, LATE, 3.0), id="fifo-late"),
        pytest.param(
            3, 1, 2.0, 30.0, False, False, RouteDecision(Route.GPU, "within-wait", 3.0), id="fifo-closed-queues"
        ),
        pytest.param(
            3, 1, 2.0, 1.0, False, False, RouteDecision(Route.GPU, "saturated-fallback-closed", 3.0), id="fifo-full"
        ),
    ],
)
def test_late_requests_go_to_the_open_fallback(
    waiting: float,
    ready: int,
    on_time: float,
    max_wait: float,
    fallback_open: bool,
    late_lane: bool,
    expected: RouteDecision,
) -> None:
    decision = route_request(
        waiting=waiting,
        ready_replicas=ready,
        replica_requests_per_second=1.0,
        max_wait_seconds=max_wait,
        fallback_open=fallback_open,
        late_waiting=5.0,
        on_time_wait_seconds=on_time,
        late_lane=late_lane,
        late_to_fallback=True,
    )
    assert decision == expected


@pytest.mark.parametrize(
    ("reason", "budget", "replay", "expected"),
    [
        pytest.param("saturated", 1.0, True, True, id="over-the-limit"),
        pytest.param(LATE, 1.0, True, False, id="late-the-replay-prices-it"),
        pytest.param(LATE, 1.0, False, True, id="late-behind-a-queue-without-the-replay"),
        pytest.param(LATE, 0.0, False, True, id="late-with-no-wait-to-spare"),
        pytest.param(LATE, -0.5, False, False, id="late-on-any-number-of-replicas"),
        pytest.param(LATE, None, False, False, id="no-objective"),
    ],
)
def test_a_late_request_at_the_fallback_is_saturation_only_where_replicas_would_help_and_nothing_else_counts_it(
    reason: str, budget: float | None, replay: bool, expected: bool
) -> None:
    decision = RouteDecision(Route.FALLBACK, reason, 1.0)
    assert is_saturation(decision, on_time_wait_seconds=budget, replay=replay) is expected


@pytest.mark.parametrize("waiting", [0.0, 0.5, 1.0, 1.5, 2.5, 3.0, 10.0])
@pytest.mark.parametrize("max_wait", [0.5, 2.0, 30.0])
def test_one_fifo_lane_routes_as_without_an_objective_when_late_requests_stay(waiting: float, max_wait: float) -> None:
    """`late_lane=False` with an objective routes exactly where the plain one-lane rule does (only the
    reason of an on-time request says more)."""
    kw = {"waiting": waiting, "ready_replicas": 1, "replica_requests_per_second": 1.0, "max_wait_seconds": max_wait,
          "fallback_open": True}  # fmt: skip
    fifo = route_request(**kw, on_time_wait_seconds=1.0, late_lane=False)  # type: ignore[arg-type]
    plain = route_request(**kw)  # type: ignore[arg-type]
    assert (fifo.route, fifo.lane, fifo.expected_wait_seconds) == (plain.route, plain.lane, plain.expected_wait_seconds)


def test_the_output_margin_is_the_spread_of_the_sum_of_the_outputs_ahead() -> None:
    assert OUTPUT_MARGIN_SIGMAS == 1.0
    # Four outputs ahead, each with a standard deviation of 100 tokens: their sum's is 200.
    assert output_margin(4, 100.0**2) == 200.0
    assert output_margin(16, 100.0**2) == 400.0, "it grows with the square root of what is ahead"
    assert output_margin(0, 100.0**2) == 0.0 and output_margin(4, 0.0) == 0.0


def test_the_waiting_floor_leaves_out_the_oldest_ones_prefill_and_is_never_negative() -> None:
    assert waiting_floor(900.0, 100.0) == 800.0
    assert waiting_floor(50.0, 100.0) == 0.0
