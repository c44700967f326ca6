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
_ONE_DAY = dt.timedelta(days=1)


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


def _day_spans(schedule: Schedule, day: dt.date, zone: dt.tzinfo, include_holidays: bool) -> tuple[WindowSpan, ...]:
    """Every window occurrence opening on this local date, in window order; none on a skipped holiday."""
    if not include_holidays and holiday_name(schedule, day) is not None:
        return ()
    weekday = day.weekday()
    out: list[WindowSpan] = []
    for index, window in enumerate(schedule.windows):
        if weekday not in {d.number for d in window.days}:
            continue
        opens = _local_moment(day, window.start_minute, zone)
        closes = _local_moment(day, window.start_minute + window.length_minutes, zone)
        out.append(WindowSpan(window, index, opens, closes, day))
    return tuple(out)


class _DayMemo:
    """One schedule's window occurrences per run of local dates, computed once: the loop asks every tick.

    Keyed on the schedule object itself (a frozen model, held here so its id is not reused while the
    entry lives); the values are pure functions of (schedule, dates), so a hit returns what a fresh
    computation would.
    """

    __slots__ = ("days", "ranges", "schedule", "zone")

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self.zone = schedule.zone
        self.days: dict[tuple[dt.date, bool], tuple[WindowSpan, ...]] = {}
        self.ranges: dict[tuple[dt.date, dt.date, bool], tuple[WindowSpan, ...]] = {}

    def spans(self, first: dt.date, last: dt.date, include_holidays: bool) -> tuple[WindowSpan, ...]:
        """Occurrences opening on the local dates first..last, sorted by (opening, window index)."""
        key = (first, last, include_holidays)
        got = self.ranges.get(key)
        if got is None:
            if len(self.ranges) >= _MEMO_DAYS:
                self.ranges.clear()
            out: list[WindowSpan] = []
            day = first
            while day <= last:
                out.extend(self._day(day, include_holidays))
                day += _ONE_DAY
            # (opening, index) is unique per occurrence, so this order is the one a filtered sort gives.
            out.sort(key=lambda s: (s.opens, s.index))
            got = self.ranges[key] = tuple(out)
        return got

    def _day(self, day: dt.date, include_holidays: bool) -> tuple[WindowSpan, ...]:
        key = (day, include_holidays)
        got = self.days.get(key)
        if got is None:
            if len(self.days) >= _MEMO_DAYS:
                self.days.clear()
            got = self.days[key] = _day_spans(self.schedule, day, self.zone, include_holidays)
        return got


# Bounds: a daemon holds one entry per pool spec it has seen recently, each about a year of dates.
_MEMO_SCHEDULES = 256
_MEMO_DAYS = 512
_MEMO: dict[int, _DayMemo] = {}


def _memo(schedule: Schedule) -> _DayMemo:
    memo = _MEMO.get(id(schedule))
    if memo is None or memo.schedule is not schedule:
        if len(_MEMO) >= _MEMO_SCHEDULES:
            _MEMO.pop(next(iter(_MEMO)))  # the oldest entry
        memo = _MEMO[id(schedule)] = _DayMemo(schedule)
    return memo


def window_spans(
    schedule: Schedule, start: dt.datetime, end: dt.datetime, *, include_holidays: bool = False
) -> list[WindowSpan]:
    """Every window occurrence overlapping [start, end), sorted by opening; holidays skipped unless asked."""
    _require_aware(start)
    _require_aware(end)
    memo = _memo(schedule)
    zone = memo.zone
    first = start.astimezone(zone).date() - _ONE_DAY
    last = end.astimezone(zone).date() + _ONE_DAY
    return [s for s in memo.spans(first, last, include_holidays) if s.opens < end and s.closes > start]


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
