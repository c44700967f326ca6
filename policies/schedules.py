"""Business-hour windows, holidays and overrides evaluated at a moment: pure functions of (schedule, now).

Local times are turned into absolute moments with zoneinfo, then compared in UTC: Python compares two
datetimes that share a tzinfo by wall clock, which is wrong across a DST change. A window that opens at a
local time skipped by a spring-forward change opens that long after the jump (02:30 becomes 03:30
summer time in Berlin); a time repeated by a fall-back change means its first occurrence.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import lru_cache

import holidays as holidays_lib

from policies.spec import Override, OverrideMode, Schedule, Window

__all__ = ["WindowSpan", "active_override", "holiday_name", "next_opening", "open_spans", "window_spans"]

UTC = dt.UTC


@dataclass(frozen=True, slots=True)
class WindowSpan:
    """One occurrence of a window: absolute opening and closing moments (UTC)."""

    window: Window
    index: int
    opens: dt.datetime
    closes: dt.datetime
    local_date: dt.date


def _require_aware(now: dt.datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")


def _local_moment(day: dt.date, minute: int, zone: dt.tzinfo) -> dt.datetime:
    day = day + dt.timedelta(days=minute // 1440)
    minute %= 1440
    local = dt.datetime(day.year, day.month, day.day, minute // 60, minute % 60, tzinfo=zone)
    return local.astimezone(UTC)


@lru_cache(maxsize=256)
def _calendar(country: str, subdivision: str | None, year: int) -> dict[dt.date, str]:
    # Building a calendar costs milliseconds; the loop asks every few seconds, so cache per year.
    calendar = holidays_lib.country_holidays(country.upper(), subdiv=subdivision, years=year)
    return dict(calendar.items())


def holiday_name(schedule: Schedule, day: dt.date) -> str | None:
    """The holiday that falls on this local date, or None; explicit dates first, then the calendars."""
    if day in schedule.holidays.dates:
        return "holiday"
    for cal in schedule.holidays.calendars:
        name = _calendar(cal.country, cal.subdivision, day.year).get(day)
        if name is not None:
            return name
    return None


def window_spans(
    schedule: Schedule, start: dt.datetime, end: dt.datetime, *, include_holidays: bool = False
) -> list[WindowSpan]:
    """Every window occurrence overlapping [start, end), sorted by opening; holidays skipped unless asked."""
    _require_aware(start)
    _require_aware(end)
    zone = schedule.zone
    first = start.astimezone(zone).date() - dt.timedelta(days=1)
    last = end.astimezone(zone).date() + dt.timedelta(days=1)
    spans: list[WindowSpan] = []
    day = first
    while day <= last:
        holiday = None if include_holidays else holiday_name(schedule, day)
        if holiday is None:
            for index, window in enumerate(schedule.windows):
                if day.weekday() not in {d.number for d in window.days}:
                    continue
                opens = _local_moment(day, window.start_minute, zone)
                closes = _local_moment(day, window.start_minute + window.length_minutes, zone)
                if opens < end and closes > start:
                    spans.append(WindowSpan(window, index, opens, closes, day))
        day += dt.timedelta(days=1)
    spans.sort(key=lambda s: (s.opens, s.index))
    return spans


def open_spans(schedule: Schedule, now: dt.datetime, *, include_holidays: bool = False) -> list[WindowSpan]:
    """Window occurrences open at `now` (opening inclusive, closing exclusive)."""
    return [
        s
        for s in window_spans(schedule, now, now + dt.timedelta(seconds=1), include_holidays=include_holidays)
        if s.opens <= now < s.closes
    ]


def next_opening(schedule: Schedule, now: dt.datetime, horizon: dt.timedelta) -> WindowSpan | None:
    """The first window occurrence that opens after `now` and within `horizon`, or None."""
    upcoming = [s for s in window_spans(schedule, now, now + horizon) if s.opens > now]
    return upcoming[0] if upcoming else None


def active_override(schedule: Schedule, now: dt.datetime) -> Override | None:
    """The override in force at `now`: `off` wins over `keepWarm`; among keepWarm, the most replicas."""
    _require_aware(now)
    live = [o for o in schedule.overrides if (o.start is None or o.start <= now) and now < o.until]
    offs = [o for o in live if o.mode is OverrideMode.OFF]
    if offs:
        return offs[0]
    return max(live, key=lambda o: o.replicas, default=None)
