"""Schedule boundaries the daemon wakes at: pre-warm, window open and close, override start and end."""

from __future__ import annotations

import datetime as dt

from controller.daemon.wakeups import Boundary, active_window, next_boundary
from policies.scaling import schedule_limits
from policies.spec import GPUPoolSpec
from policies.types import Reason

UTC = dt.UTC


def _spec(**schedule: object) -> GPUPoolSpec:
    return GPUPoolSpec.model_validate(
        {"target": {"deployment": "vllm", "maxReplicas": 4}, "coldStartSeconds": 180, "schedule": schedule}
    )


BERLIN_WEEKDAYS = {
    "timezone": "Europe/Berlin",
    "windows": [{"name": "office", "days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:00"}],
}


def test_the_boundaries_of_a_day_in_order() -> None:
    spec = _spec(**BERLIN_WEEKDAYS)
    # Tuesday 2026-12-01, 07:00 UTC = 08:00 in Berlin.
    now = dt.datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
    seen = []
    for _ in range(4):
        boundary = next_boundary(spec, now)
        assert boundary is not None
        seen.append(boundary)
        now = boundary.at
    assert seen == [
        Boundary(dt.datetime(2026, 12, 1, 7, 57, tzinfo=UTC), "pre-warm for window 'office'"),
        Boundary(dt.datetime(2026, 12, 1, 8, 0, tzinfo=UTC), "window 'office' opens"),
        Boundary(dt.datetime(2026, 12, 1, 16, 0, tzinfo=UTC), "window 'office' closes"),
        Boundary(dt.datetime(2026, 12, 2, 7, 57, tzinfo=UTC), "pre-warm for window 'office'"),
    ]


def test_each_boundary_is_where_the_policy_changes_its_floor() -> None:
    spec = _spec(**BERLIN_WEEKDAYS)
    prewarm = dt.datetime(2026, 12, 1, 7, 57, tzinfo=UTC)
    just_before = schedule_limits(spec, prewarm - dt.timedelta(milliseconds=1))
    at = schedule_limits(spec, prewarm + dt.timedelta(milliseconds=1))
    assert just_before.floor == 0 and at.floor == 1 and at.floor_reason is Reason.PREWARM
    closes = dt.datetime(2026, 12, 1, 16, 0, tzinfo=UTC)
    assert schedule_limits(spec, closes - dt.timedelta(milliseconds=1)).floor == 1
    assert schedule_limits(spec, closes + dt.timedelta(milliseconds=1)).floor == 0


def test_friday_evening_wakes_next_at_monday_prewarm() -> None:
    spec = _spec(**BERLIN_WEEKDAYS)
    friday_close = dt.datetime(2026, 12, 4, 16, 0, tzinfo=UTC)
    boundary = next_boundary(spec, friday_close)
    assert boundary == Boundary(dt.datetime(2026, 12, 7, 7, 57, tzinfo=UTC), "pre-warm for window 'office'")


def test_holidays_are_skipped() -> None:
    spec = _spec(**BERLIN_WEEKDAYS, holidays={"dates": ["2026-12-02"]})
    after_close = dt.datetime(2026, 12, 1, 16, 0, tzinfo=UTC)
    boundary = next_boundary(spec, after_close)
    assert boundary is not None and boundary.at == dt.datetime(2026, 12, 3, 7, 57, tzinfo=UTC)


def test_spring_forward_wakes_when_the_window_really_opens() -> None:
    # 02:30 does not exist in Berlin on 2027-03-28; the policy opens the window at 03:30 CEST = 01:30 UTC.
    spec = _spec(timezone="Europe/Berlin", windows=[{"days": ["sun"], "start": "02:30", "end": "05:00"}])
    spec = spec.model_copy(update={"cold_start_seconds": 0})
    boundary = next_boundary(spec, dt.datetime(2027, 3, 27, 12, tzinfo=UTC))
    assert boundary is not None and boundary.at == dt.datetime(2027, 3, 28, 1, 30, tzinfo=UTC)
    assert schedule_limits(spec, boundary.at).floor_reason is Reason.WINDOW_OPEN


def test_overrides_start_and_end() -> None:
    spec = _spec(
        overrides=[
            {"mode": "keepWarm", "start": "2026-12-01T10:00:00Z", "until": "2026-12-01T10:00:07Z", "replicas": 2}
        ]
    )
    now = dt.datetime(2026, 12, 1, 9, 59, 58, 500000, tzinfo=UTC)
    first = next_boundary(spec, now)
    assert first == Boundary(dt.datetime(2026, 12, 1, 10, 0, tzinfo=UTC), "override keepWarm starts")
    second = next_boundary(spec, first.at)
    assert second == Boundary(dt.datetime(2026, 12, 1, 10, 0, 7, tzinfo=UTC), "override keepWarm ends")
    assert next_boundary(spec, second.at) is None


def test_no_schedule_has_no_boundary_and_naive_time_is_refused() -> None:
    spec = _spec()
    assert next_boundary(spec, dt.datetime(2026, 12, 1, tzinfo=UTC)) is None
    try:
        next_boundary(spec, dt.datetime(2026, 12, 1))
    except ValueError as exc:
        assert "timezone-aware" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("a naive time was accepted")


def test_active_window_names_the_open_window() -> None:
    spec = _spec(**BERLIN_WEEKDAYS)
    assert active_window(spec, dt.datetime(2026, 12, 1, 9, tzinfo=UTC)) == "office"
    assert active_window(spec, dt.datetime(2026, 12, 1, 7, 58, tzinfo=UTC)) is None


def test_a_window_open_all_week_has_no_boundary_at_midnight() -> None:
    # Closing at 24:00 as the same window opens at 00:00 (and its pre-warm while open) changes nothing.
    always = {
        "name": "always",
        "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
        "start": "00:00",
        "end": "24:00",
    }
    spec = _spec(timezone="Europe/Berlin", windows=[always])
    assert next_boundary(spec, dt.datetime(2026, 12, 1, 12, tzinfo=UTC)) is None


def test_back_to_back_windows_with_different_floors_keep_their_boundary() -> None:
    morning = {"name": "morning", "days": ["tue"], "start": "08:00", "end": "12:00", "minReplicas": 1}
    noon = {"name": "noon", "days": ["tue"], "start": "12:00", "end": "14:00", "minReplicas": 3}
    spec = _spec(windows=[morning, noon])
    boundary = next_boundary(spec, dt.datetime(2026, 12, 1, 10, tzinfo=UTC))
    assert boundary == Boundary(dt.datetime(2026, 12, 1, 11, 57, tzinfo=UTC), "pre-warm for window 'noon'")


def test_the_cache_answers_until_the_boundary_passes_or_the_spec_changes() -> None:
    from controller.daemon.wakeups import BoundaryCache

    spec = _spec(**BERLIN_WEEKDAYS)
    cache = BoundaryCache()
    now = dt.datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
    first = cache.get("p", spec, now)
    assert first is not None and cache.get("p", spec, now + dt.timedelta(minutes=56)) is first
    assert cache.get("p", spec, first.at) == next_boundary(spec, first.at)
    edited = spec.model_copy(update={"cold_start_seconds": 60})
    assert cache.get("p", edited, now) == Boundary(
        dt.datetime(2026, 12, 1, 7, 59, tzinfo=UTC), "pre-warm for window 'office'"
    )
    cache.forget(set())
    assert cache.get("p", spec, now) == first
