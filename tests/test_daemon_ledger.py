"""Today's GPU-hours and fallback dollars: local days (DST, midnight), pods that go, restarts, unknowns."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.daemon.ledger import (
    CarriedHours,
    CarriedUsd,
    day_start,
    fallback_usd_today,
    gpu_hours_today,
    ledger_from_status,
    ledger_to_status,
)
from controller.kube.pods import PodInfo

UTC = dt.UTC
BERLIN = "Europe/Berlin"


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).astimezone(UTC)


def pod(uid: str, scheduled: str | dt.datetime | None, *, deleting: bool = False) -> PodInfo:
    moment = at(scheduled) if isinstance(scheduled, str) else scheduled
    return PodInfo(
        name=f"vllm-{uid}",
        namespace="inference",
        uid=uid,
        labels={"app": "vllm"},
        ip="127.0.0.5",
        ready=moment is not None,
        scheduled_at=moment,
        created_at=moment,
        deleting=deleting,
        node="gpu-1" if moment else None,
        deletion_cost=None,
        phase="Running" if moment else "Pending",
    )


# --- local days ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "now", "start", "hours"),
    [
        ("UTC", "2026-12-01T15:00:00+00:00", "2026-12-01T00:00:00+00:00", 24),
        (BERLIN, "2026-12-01T00:30:00+01:00", "2026-12-01T00:00:00+01:00", 24),
        (BERLIN, "2026-03-29T12:00:00+02:00", "2026-03-29T00:00:00+01:00", 23),  # spring forward
        (BERLIN, "2026-10-25T12:00:00+01:00", "2026-10-25T00:00:00+02:00", 25),  # fall back
        ("America/Havana", "2026-03-08T12:00:00-04:00", "2026-03-08T05:00:00+00:00", 23),  # 00:00 is skipped
        ("America/Santiago", "2026-09-06T12:00:00-03:00", "2026-09-06T04:00:00+00:00", 23),  # 00:00 is skipped
        ("Asia/Kolkata", "2026-12-01T02:00:00+00:00", "2026-11-30T18:30:00+00:00", 24),
    ],
)
def test_the_day_starts_at_local_midnight(zone: str, now: str, start: str, hours: int) -> None:
    first = day_start(at(now), zone)
    assert first == at(start)
    # The day's length: from its start to the next day's start.
    following = day_start(first + dt.timedelta(hours=hours, minutes=30), zone)
    assert (following - first) == dt.timedelta(hours=hours)


def test_day_start_needs_an_aware_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        day_start(dt.datetime(2026, 12, 1), "UTC")


@pytest.mark.parametrize(("day", "hours"), [("2026-03-29", 23), ("2026-10-25", 25), ("2026-03-28", 24)])
def test_a_pod_running_all_day_counts_the_local_day_length(day: str, hours: int) -> None:
    before = pod("a", "2026-01-01T00:00:00+00:00")
    end_of_day = day_start(at(f"{day}T12:00:00+00:00"), BERLIN) + dt.timedelta(hours=hours) - dt.timedelta(seconds=1)
    counted, _ = gpu_hours_today([before], None, end_of_day, BERLIN, 2)
    assert counted == pytest.approx((hours - 1 / 3600) * 2)


# --- GPU-hours -------------------------------------------------------------------------------------------

NOW = at("2026-12-01T12:00:00+01:00")  # Berlin noon


def test_live_pods_count_from_their_billing_start_or_midnight() -> None:
    pods = [
        pod("a", "2026-11-30T20:00:00+01:00"),  # since yesterday: from midnight, 12 h
        pod("b", "2026-12-01T11:00:00+01:00"),  # 1 h
        pod("c", None),  # Pending: no GPU yet
        pod("d", "2026-12-01T11:30:00+01:00", deleting=True),  # terminating is still billed
    ]
    hours, carried = gpu_hours_today(pods, None, NOW, BERLIN, 1)
    assert hours == pytest.approx(13.5)
    assert carried is not None and set(carried.pods) == {"a", "b", "d"}
    assert carried.pods["a"] == at("2026-12-01T00:00:00+01:00")


def test_a_pod_that_went_keeps_its_hours_until_it_was_found_gone() -> None:
    morning = at("2026-12-01T09:00:00+01:00")
    _, carried = gpu_hours_today([pod("a", "2026-12-01T08:00:00+01:00"), pod("b", morning)], None, morning, BERLIN, 4)
    hours, carried = gpu_hours_today([pod("b", morning)], carried, NOW, BERLIN, 4)
    # a: 08:00 -> noon (found gone now) = 4 h; b: 09:00 -> noon = 3 h; times 4 GPUs.
    assert hours == pytest.approx(28.0)
    assert carried is not None and carried.closed_gpu_seconds == pytest.approx(4 * 3600 * 4)
    # Later, with b gone too, a's hours do not grow: they are closed.
    later = NOW + dt.timedelta(hours=1)
    hours, carried = gpu_hours_today([], carried, later, BERLIN, 4)
    assert hours == pytest.approx(4 * 4 + 4 * 4)
    assert carried is not None and carried.pods == {}


def test_the_ledger_is_stable_while_the_pods_are() -> None:
    """The carried ledger changes only when the pods change: it never forces a status write per tick."""
    pods = [pod("a", "2026-12-01T08:00:00+01:00")]
    _, first = gpu_hours_today(pods, None, NOW, BERLIN, 1)
    hours, second = gpu_hours_today(pods, first, NOW + dt.timedelta(seconds=5), BERLIN, 1)
    assert second == first
    assert ledger_to_status(second, None) == ledger_to_status(first, None)
    assert hours == pytest.approx(4 + 5 / 3600)


def test_a_new_local_day_starts_from_zero() -> None:
    late = at("2026-12-01T23:59:00+01:00")
    pods = [pod("a", "2026-12-01T20:00:00+01:00"), pod("b", "2026-12-01T22:00:00+01:00")]
    _, carried = gpu_hours_today(pods, None, late, BERLIN, 1)
    _, carried = gpu_hours_today(pods[:1], carried, late + dt.timedelta(seconds=30), BERLIN, 1)
    assert carried is not None and carried.closed_gpu_seconds > 0
    after_midnight = at("2026-12-02T00:10:00+01:00")
    hours, carried = gpu_hours_today(pods[:1], carried, after_midnight, BERLIN, 1)
    assert hours == pytest.approx(10 / 60)
    assert carried == CarriedHours(day=dt.date(2026, 12, 2), pods={"a": at("2026-12-02T00:00:00+01:00")})


def test_the_day_is_the_pools_not_utcs() -> None:
    # 23:30 UTC on Dec 1 is already Dec 2 in Berlin: the Berlin day has run 30 minutes.
    now = at("2026-12-01T23:30:00+00:00")
    hours, carried = gpu_hours_today([pod("a", "2026-12-01T10:00:00+00:00")], None, now, BERLIN, 1)
    assert hours == pytest.approx(0.5)
    assert carried is not None and carried.day == dt.date(2026, 12, 2)


def test_unknown_pods_are_unknown_hours_never_zero() -> None:
    carried = CarriedHours(day=dt.date(2026, 12, 1), closed_gpu_seconds=3600.0)
    assert gpu_hours_today(None, carried, NOW, BERLIN, 1) == (None, carried)
    assert gpu_hours_today(None, None, NOW, BERLIN, 1) == (None, None)


def test_a_restart_goes_on_from_the_status() -> None:
    """Count, write the ledger to the status, read it back in a new process: the same hours."""
    morning = at("2026-12-01T09:00:00+01:00")
    pods = [pod("a", "2026-12-01T07:00:00+01:00"), pod("b", "2026-12-01T08:00:00+01:00")]
    _, carried = gpu_hours_today(pods, None, morning, BERLIN, 1)
    _, carried = gpu_hours_today(pods[1:], carried, morning + dt.timedelta(minutes=1), BERLIN, 1)
    status = ledger_to_status(carried, None)
    # The controller restarts; pod b is still there.
    restored, usd, problems = ledger_from_status(status)
    assert problems == [] and usd is None
    continued, _ = gpu_hours_today(pods[1:], carried, NOW, BERLIN, 1)
    resumed, _ = gpu_hours_today(pods[1:], restored, NOW, BERLIN, 1)
    assert resumed == pytest.approx(continued)
    assert resumed == pytest.approx((2 + 1 / 60) + 4)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 30 * 3600), st.integers(60, 20 * 3600)), max_size=6),
    st.lists(st.integers(30, 3600), min_size=1, max_size=60),
    st.sampled_from(["UTC", BERLIN, "America/Havana", "Asia/Kolkata"]),
    st.integers(1, 8),
)
def test_the_count_matches_the_pods_lifetimes_within_the_day(
    lives: list[tuple[int, int]], ticks: list[int], zone: str, gpus: int
) -> None:
    """Tick through pods starting and ending: today's hours are each pod's overlap with the local day,
    counted up to the tick at which it was found gone (so at most one tick too much, never missed)."""
    origin = at("2026-03-27T18:00:00+00:00")  # across Berlin's spring DST change
    spans = [(origin + dt.timedelta(seconds=s), origin + dt.timedelta(seconds=s + d)) for s, d in lives]
    now, carried, seen = origin, None, [origin]
    for step in ticks:
        now += dt.timedelta(seconds=step)
        seen.append(now)
        live = [pod(str(i), s) for i, (s, e) in enumerate(spans) if s <= now < e]
        hours, carried = gpu_hours_today(live, carried, now, zone, gpus)
        assert hours is not None
        start = day_start(now, zone)
        today_ticks = [t for t in seen[1:] if t >= start]
        expected = exact = 0.0
        for s, e in spans:
            exact += max((min(e, now) - max(s, start)).total_seconds(), 0.0)
            if any(s <= t < e for t in today_ticks):
                found = min(t for t in seen[1:] if t >= e) if e <= now else now
                expected += (found - max(s, start)).total_seconds()
        assert hours * 3600 == pytest.approx(expected * gpus, rel=1e-9, abs=1e-6)
        assert abs(expected - exact) <= len(spans) * max(ticks) + 1e-6


# --- fallback dollars ------------------------------------------------------------------------------------


def test_spend_is_the_sum_of_the_counters_increases() -> None:
    usd, carried = fallback_usd_today({"gw-1": 1.0, "gw-2": 2.0}, None, NOW, BERLIN)
    assert usd == 3.0  # no ledger yet: the totals so far count as today's (an upper bound)
    usd, carried = fallback_usd_today({"gw-1": 1.5, "gw-2": 2.25}, carried, NOW, BERLIN)
    assert usd == pytest.approx(3.75)
    # gw-2 restarted (its counter began again at zero) and a new gw-3 appeared.
    usd, carried = fallback_usd_today({"gw-1": 1.5, "gw-2": 0.5, "gw-3": 0.25}, carried, NOW, BERLIN)
    assert usd == pytest.approx(4.5)
    assert carried is not None and carried.totals == {"gw-1": 1.5, "gw-2": 0.5, "gw-3": 0.25}


def test_a_summed_total_that_drops_counts_nothing_rather_than_everything() -> None:
    _, carried = fallback_usd_today(100.0, CarriedUsd(dt.date(2026, 12, 1), 5.0, {"": 90.0}), NOW, BERLIN)
    usd, carried = fallback_usd_today(40.0, carried, NOW, BERLIN)  # one replica restarted
    assert usd == pytest.approx(15.0)
    usd, _ = fallback_usd_today(41.0, carried, NOW, BERLIN)
    assert usd == pytest.approx(16.0)


def test_a_new_local_day_resets_the_spend() -> None:
    carried = CarriedUsd(dt.date(2026, 11, 30), usd=12.0, totals={"gw-1": 50.0})
    usd, carried = fallback_usd_today({"gw-1": 50.5}, carried, NOW, BERLIN)
    assert usd == pytest.approx(0.5)
    assert carried is not None and carried.day == dt.date(2026, 12, 1)


def test_an_unreadable_gateway_is_unknown_spend() -> None:
    carried = CarriedUsd(dt.date(2026, 12, 1), usd=1.0, totals={"gw-1": 1.0})
    assert fallback_usd_today(None, carried, NOW, BERLIN) == (None, carried)
    assert fallback_usd_today({"gw-1": float("nan")}, carried, NOW, BERLIN) == (None, carried)
    assert fallback_usd_today(-1.0, carried, NOW, BERLIN) == (None, carried)


def test_spend_survives_a_restart_between_writes() -> None:
    """The status was written a while ago; the counter went on. Nothing is lost: the totals are carried."""
    written = CarriedUsd(dt.date(2026, 12, 1), usd=2.0, totals={"gw-1": 10.0})
    _, _, problems = ledger_from_status(ledger_to_status(None, written))
    restored = ledger_from_status(ledger_to_status(None, written))[1]
    assert problems == [] and restored == written
    usd, _ = fallback_usd_today({"gw-1": 13.0}, restored, NOW, BERLIN)
    assert usd == pytest.approx(5.0)


# --- status round trip -----------------------------------------------------------------------------------


def test_status_round_trip() -> None:
    hours = CarriedHours(dt.date(2026, 12, 1), 7200.5, {"u1": at("2026-12-01T08:00:00+01:00")})
    usd = CarriedUsd(dt.date(2026, 12, 1), 3.25, {"gw-1": 3.0, "gw-2": 0.25})
    status = ledger_to_status(hours, usd)
    assert status == {
        "day": "2026-12-01",
        "closedGpuSeconds": 7200.5,
        "pods": [{"uid": "u1", "since": "2026-12-01T07:00:00Z"}],
        "fallback": {
            "day": "2026-12-01",
            "usd": 3.25,
            "totals": [{"instance": "gw-1", "total": 3.0}, {"instance": "gw-2", "total": 0.25}],
        },
    }
    assert ledger_from_status(status) == (hours, usd, [])
    assert ledger_from_status(None) == (None, None, [])
    assert ledger_from_status({}) == (None, None, [])


def test_a_start_with_fractions_is_written_a_little_early() -> None:
    start = at("2026-12-01T08:00:00.900000+01:00")
    status = ledger_to_status(CarriedHours(dt.date(2026, 12, 1), 0.0, {"u": start}), None)
    restored = ledger_from_status(status)[0]
    assert restored is not None and restored.pods["u"] == start.replace(microsecond=0)


@pytest.mark.parametrize(
    ("ledger", "problem"),
    [
        ("yesterday", "ledger must be an object"),
        ({"day": "Monday"}, "ledger.day must be a date"),
        ({"day": "2026-12-01", "closedGpuSeconds": -5}, "ledger.closedGpuSeconds must be a non-negative number"),
        ({"day": "2026-12-01", "pods": [{"uid": "u", "since": "soon"}]}, "ledger.pods[u].since must be a time"),
        ({"day": "2026-12-01", "pods": [{"since": "2026-12-01T07:00:00Z"}]}, "ledger.pods[0].uid must be a string"),
        ({"day": "2026-12-01", "pods": ["u"]}, "ledger.pods[0] must be an object"),
        ({"day": "2026-12-01", "pods": {"u": "2026-12-01T07:00:00Z"}}, "ledger.pods must be a list"),
        ({"fallback": {"day": "2026-12-01", "usd": "five"}}, "ledger.fallback.usd must be a non-negative number"),
        ({"fallback": {"day": "2026-12-01", "totals": [{"instance": "gw"}]}}, "ledger.fallback.totals[gw].total"),
        ({"fallback": 3}, "ledger.fallback must be an object"),
    ],
)
def test_a_broken_ledger_names_the_field(ledger: object, problem: str) -> None:
    hours, usd, problems = ledger_from_status(ledger)
    assert any(problem in p for p in problems), problems
    assert hours is None or usd is None


def test_a_broken_part_leaves_the_other_readable() -> None:
    hours, usd, problems = ledger_from_status({"day": "?", "fallback": {"day": "2026-12-01", "usd": 1.0}})
    assert hours is None and usd == CarriedUsd(dt.date(2026, 12, 1), 1.0, {})
    assert len(problems) == 1


def test_carried_values_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        CarriedHours(dt.date(2026, 12, 1)).closed_gpu_seconds = 1.0  # type: ignore[misc]
