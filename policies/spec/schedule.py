"""The schedule: business-hours windows, holidays and overrides, in the pool's timezone."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import holidays as holidays_lib
from pydantic import ConfigDict, Field, field_validator, model_validator

from policies.spec.base import _CLOCK, Weekday, _Model, parse_clock

__all__ = ["HolidayCalendar", "Holidays", "Override", "OverrideMode", "Schedule", "Window"]


class Window(_Model):
    """A recurring business-hours window in the schedule's timezone; `end` before `start` crosses midnight."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self.start != self.end", "message": "a window's start must differ from its end"},
                {
                    "rule": "!has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
                    "message": "minReplicas must be <= maxReplicas",
                },
            ]
        }
    )

    name: Annotated[str, Field(min_length=1, max_length=63)] = "window"
    """Label used in decisions and events."""
    days: Annotated[list[Weekday], Field(min_length=1, max_length=7)]
    """Days on which the window opens (the day of its start, for windows crossing midnight)."""
    start: Annotated[str, Field(max_length=5, pattern=r"^(?:[01]\d|2[0-3]):[0-5]\d$")]
    """Local opening time, HH:MM (00:00 to 23:59)."""
    end: Annotated[str, Field(max_length=5, pattern=_CLOCK.pattern)]
    """Local closing time, HH:MM; earlier than start means the next day; 24:00 is midnight (00:00-24:00 is
    the whole day)."""
    min_replicas: Annotated[int, Field(ge=0)] = 1
    """Replicas kept Ready while the window is open (pre-warmed ahead of the opening)."""
    max_replicas: Annotated[int | None, Field(ge=0)] = None
    """Cap while the window is open; the pool's maxReplicas when empty."""

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, value: str) -> str:
        parse_clock(value)
        return value

    @field_validator("days")
    @classmethod
    def _unique_days(cls, value: list[Weekday]) -> list[Weekday]:
        if len(set(value)) != len(value):
            raise ValueError("days must not repeat a day")
        return value

    @model_validator(mode="after")
    def _shape(self) -> Window:
        if parse_clock(self.start) == parse_clock(self.end):
            raise ValueError(f"window {self.name!r}: start ({self.start}) must differ from end ({self.end})")
        if self.max_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError(
                f"window {self.name!r}: minReplicas ({self.min_replicas}) must be <= maxReplicas ({self.max_replicas})"
            )
        return self

    @property
    def start_minute(self) -> int:
        """Opening time in minutes after local midnight."""
        return parse_clock(self.start)

    @property
    def length_minutes(self) -> int:
        """Length of the window in minutes (1..1439); crosses midnight when start + length > 1440."""
        return (parse_clock(self.end) - parse_clock(self.start)) % 1440 or 1440


class HolidayCalendar(_Model):
    """A public-holiday calendar from the `holidays` library: a country and optionally a region."""

    country: Annotated[str, Field(min_length=2, max_length=3)]
    """ISO 3166-1 country code, e.g. DE, US, BR."""
    subdivision: Annotated[str | None, Field(max_length=10)] = None
    """ISO 3166-2 subdivision within the country, e.g. BY for Bavaria, CA for California."""

    @model_validator(mode="after")
    def _known(self) -> HolidayCalendar:
        supported = holidays_lib.list_supported_countries()
        if self.country.upper() not in supported:
            raise ValueError(f"country {self.country!r} has no holiday calendar (use an ISO 3166-1 code)")
        subdivisions = supported[self.country.upper()]
        if self.subdivision is not None and self.subdivision not in subdivisions:
            raise ValueError(
                f"subdivision {self.subdivision!r} is not a region of {self.country.upper()} "
                f"(known: {', '.join(subdivisions[:12])}{'…' if len(subdivisions) > 12 else ''})"
            )
        return self


class Holidays(_Model):
    """Days on which no window opens."""

    dates: list[dt.date] = Field(default_factory=list, max_length=400)
    """Explicit dates (YYYY-MM-DD) in the schedule's timezone."""
    calendars: list[HolidayCalendar] = Field(default_factory=list, max_length=16)
    """Public-holiday calendars; every holiday in any of them closes the windows."""


class OverrideMode(StrEnum):
    """What a one-off override does while it is in force."""

    KEEP_WARM = "keepWarm"
    OFF = "off"


class Override(_Model):
    """A one-off instruction: keep the pool warm, or keep it off, until a moment."""

    mode: OverrideMode
    """keepWarm holds at least `replicas` Ready; off holds zero whatever the demand."""
    until: dt.datetime
    """End of the override (RFC 3339 with offset)."""
    start: dt.datetime | None = None
    """Start of the override; in force immediately when empty."""
    replicas: Annotated[int, Field(ge=1)] = 1
    """Replicas held by keepWarm (ignored by off)."""

    @field_validator("until", "start")
    @classmethod
    def _aware(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("needs a UTC offset, e.g. 2026-12-24T18:00:00+01:00")
        return value

    @model_validator(mode="after")
    def _order(self) -> Override:
        if self.start is not None and self.start >= self.until:
            raise ValueError(f"start ({self.start.isoformat()}) must be before until ({self.until.isoformat()})")
        return self


class Schedule(_Model):
    """Business-hour windows with their timezone, holidays and one-off overrides."""

    timezone: str = "UTC"
    """IANA timezone of the windows and holiday dates, e.g. Europe/Berlin."""
    windows: list[Window] = Field(default_factory=list, max_length=32)
    """Recurring windows; outside all of them the pool may scale to zero."""
    holidays: Holidays = Field(default_factory=Holidays)
    """Days on which the windows stay closed."""
    overrides: list[Override] = Field(default_factory=list, max_length=32)
    """One-off overrides; `off` wins over `keepWarm` when both are in force."""

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        if value not in _zone_names():
            raise ValueError(f"unknown timezone {value!r} (use an IANA name such as Europe/Berlin)")
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:  # pragma: no cover - listed but unloadable
            raise ValueError(f"timezone {value!r} cannot be loaded: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _no_conflicting_overlaps(self) -> Schedule:
        problems = _conflicting_overlaps(self.windows)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def zone(self) -> ZoneInfo:
        """The schedule's timezone."""
        return ZoneInfo(self.timezone)


_ZONES: frozenset[str] | None = None


def _zone_names() -> frozenset[str]:
    global _ZONES
    if _ZONES is None:
        _ZONES = frozenset(available_timezones())
    return _ZONES


def _week_intervals(window: Window) -> list[tuple[int, int]]:
    """Minute-of-week intervals [start, end) the window covers, split at the week's end."""
    out: list[tuple[int, int]] = []
    for day in window.days:
        start = day.number * 1440 + window.start_minute
        end = start + window.length_minutes
        if end <= 7 * 1440:
            out.append((start, end))
        else:
            out.append((start, 7 * 1440))
            out.append((0, end - 7 * 1440))
    return out


def _conflicting_overlaps(windows: list[Window]) -> list[str]:
    """Pairs of windows that overlap in the week with different replica limits (ambiguous intent)."""
    problems: list[str] = []
    for i, first in enumerate(windows):
        for j in range(i + 1, len(windows)):
            second = windows[j]
            if (first.min_replicas, first.max_replicas) == (second.min_replicas, second.max_replicas):
                continue
            overlap = any(
                a0 < b1 and b0 < a1 for a0, a1 in _week_intervals(first) for b0, b1 in _week_intervals(second)
            )
            if overlap:
                problems.append(
                    f"windows[{i}] ({first.name!r}) and windows[{j}] ({second.name!r}) overlap with "
                    f"different replica limits"
                )
    return problems
