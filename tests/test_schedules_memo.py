"""The memoised window arithmetic returns exactly what a fresh computation returns.

`policies.schedules` keeps each schedule's window occurrences per run of local dates, because the
loop asks every tick. These tests compare it, on random schedules (DST zones, windows crossing
midnight, holidays from dates and calendars) at random moments around DST changes, with the plain
day-by-day computation it replaced, written out here.
"""

from __future__ import annotations

import datetime as dt
import gc
import random
from typing import Any

import pytest

from policies import schedules
from policies.schedules import WindowSpan, holiday_name, next_opening, open_spans, window_spans
from policies.spec import Schedule

UTC = dt.UTC
DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]
# DST changes in those zones (UTC), where local arithmetic goes wrong first.
CHANGES = [
    dt.datetime(2025, 3, 30, 1, tzinfo=UTC),  # Berlin springs forward
    dt.datetime(2025, 10, 26, 1, tzinfo=UTC),  # Berlin falls back
    dt.datetime(2025, 3, 9, 7, tzinfo=UTC),  # New York springs forward
    dt.datetime(2025, 11, 2, 6, tzinfo=UTC),  # New York falls back
    dt.datetime(2025, 4, 5, 15, tzinfo=UTC),  # Lord Howe: back by 30 minutes
    dt.datetime(2025, 12, 31, 12, tzinfo=UTC),
]


def reference_spans(
    schedule: Schedule, start: dt.datetime, end: dt.datetime, *, include_holidays: bool = False
) -> list[WindowSpan]:
    """The computation before the memo, day by day from the day before `start` to the day after `end`."""
    zone = schedule.zone
    first = start.astimezone(zone).date() - dt.timedelta(days=1)
    last = end.astimezone(zone).date() + dt.timedelta(days=1)
    spans: list[WindowSpan] = []
    day = first
    while day <= last:
        if include_holidays or holiday_name(schedule, day) is None:
            for index, window in enumerate(schedule.windows):
                if day.weekday() not in {d.number for d in window.days}:
                    continue
                minute = window.start_minute
                opens = dt.datetime.combine(day, dt.time(minute // 60, minute % 60), tzinfo=zone).astimezone(UTC)
                end_minute = minute + window.length_minutes
                end_day = day + dt.timedelta(days=end_minute // 1440)
                end_minute %= 1440
                closes = dt.datetime.combine(
                    end_day, dt.time(end_minute // 60, end_minute % 60), tzinfo=zone
                ).astimezone(UTC)
                if opens < end and closes > start:
                    spans.append(WindowSpan(window, index, opens, closes, day))
        day += dt.timedelta(days=1)
    spans.sort(key=lambda s: (s.opens, s.index))
    return spans


def random_schedule(rng: random.Random) -> Schedule:
    """Non-overlapping windows (the spec refuses conflicting ones), some crossing midnight."""
    windows: list[dict[str, Any]] = []
    for i in range(rng.randint(0, 3)):
        start = rng.randrange(0, 1440, 15)
        length = rng.randrange(15, 1440, 15)
        end = (start + length) % 1440
        # Distinct days per window keep them from overlapping within a day.
        days = [DAYS[(2 * i + k) % 7] for k in range(rng.randint(1, 2))]
        windows.append(
            {"name": f"w{i}", "days": days, "start": f"{start // 60:02d}:{start % 60:02d}",
             "end": f"{end // 60:02d}:{end % 60:02d}", "minReplicas": rng.randint(0, 2)}
        )  # fmt: skip
    holidays: dict[str, Any] = {"dates": [], "calendars": []}
    if rng.random() < 0.5:
        holidays["dates"] = [str(dt.date(2025, 1, 1) + dt.timedelta(days=rng.randrange(365))) for _ in range(20)]
    if rng.random() < 0.3:
        holidays["calendars"] = [{"country": "DE", "subdivision": "BY"}]
    try:
        return Schedule.model_validate({"timezone": rng.choice(ZONES), "windows": windows, "holidays": holidays})
    except ValueError:
        # Crossing midnight into the next window's day can still overlap: fewer windows then.
        return Schedule.model_validate({"timezone": rng.choice(ZONES), "windows": windows[:1], "holidays": holidays})


def random_moment(rng: random.Random) -> dt.datetime:
    base = rng.choice(CHANGES)
    return base + dt.timedelta(seconds=rng.randrange(-3 * 86400, 3 * 86400, rng.choice([1, 15, 900])))


@pytest.mark.parametrize("seed", range(6))
def test_memoised_spans_equal_the_fresh_computation(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(15):
        sched = random_schedule(rng)
        for _ in range(60):  # the same schedule asked again and again, as the loop does
            now = random_moment(rng)
            horizon = dt.timedelta(seconds=rng.choice([1, 60, 901, 3600, 86400, 3 * 86400]))
            include = rng.random() < 0.3
            got = window_spans(sched, now, now + horizon, include_holidays=include)
            assert got == reference_spans(sched, now, now + horizon, include_holidays=include), (sched, now)
            assert open_spans(sched, now, include_holidays=include) == [
                s for s in reference_spans(sched, now, now + dt.timedelta(seconds=1), include_holidays=include)
                if s.opens <= now < s.closes
            ]  # fmt: skip
            upcoming = [s for s in reference_spans(sched, now, now + horizon) if s.opens > now]
            assert next_opening(sched, now, horizon) == (upcoming[0] if upcoming else None)


def test_a_new_schedule_never_reads_another_ones_memo() -> None:
    """Many short-lived schedules (more than the memo holds): each gets its own windows."""
    now = dt.datetime(2025, 6, 2, 12, tzinfo=UTC)  # a Monday
    for i in range(2 * schedules._MEMO_SCHEDULES + 10):
        hour = i % 20
        sched = Schedule.model_validate(
            {"timezone": "Europe/Berlin", "windows": [{"days": DAYS, "start": f"{hour:02d}:00", "end": "23:00"}]}
        )
        got = window_spans(sched, now, now + dt.timedelta(days=1))
        assert got == reference_spans(sched, now, now + dt.timedelta(days=1))
        assert got[0].window.start == f"{hour:02d}:00"
        del sched, got
        gc.collect() if i % 97 == 0 else None
    assert len(schedules._MEMO) <= schedules._MEMO_SCHEDULES


def test_naive_moments_are_still_refused() -> None:
    sched = Schedule.model_validate({"windows": [{"days": DAYS, "start": "09:00", "end": "17:00"}]})
    with pytest.raises(ValueError, match="timezone-aware"):
        window_spans(sched, dt.datetime(2025, 1, 1), dt.datetime(2025, 1, 2))
