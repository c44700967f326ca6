"""The next moment a pool's schedule changes its mind: pre-warm start, window opening or closing,
override start or end, where the schedule's floor or ceiling really changes. Pure functions of (spec, now).

The tick sleeps until the earlier of its next period and the next boundary of any pool, so a window
opening at 09:00 with a 180 s cold start is acted on at 08:57:00, not up to a tick later. Boundaries are
computed with the policy's own calendar (`policies.schedules.window_spans`: holidays skipped, windows
crossing midnight, 24:00, DST gaps and repeats), so the daemon wakes exactly when `decide` would answer
differently. APScheduler's CronTrigger was the other candidate; it was not used because it is a second
calendar that knows neither holidays, nor pre-warm offsets, nor override instants, and each place
where two calendars disagree is a wakeup at the wrong moment.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from policies.scaling import schedule_limits
from policies.schedules import open_spans, window_spans
from policies.spec import GPUPoolSpec

__all__ = ["Boundary", "BoundaryCache", "active_window", "next_boundary"]

# How far ahead to look for the next boundary: a weekly schedule repeats within 8 days, and a holiday
# run longer than that only delays the answer to the next call.
_HORIZON = dt.timedelta(days=8)
_EPSILON = dt.timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class Boundary:
    """A moment the schedule changes, and what happens then (for the status' nextChange)."""

    at: dt.datetime
    what: str


def next_boundary(spec: GPUPoolSpec, now: dt.datetime, horizon: dt.timedelta = _HORIZON) -> Boundary | None:
    """The first schedule boundary strictly after `now`, or None when there is none within `horizon`."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    schedule = spec.schedule
    lead = dt.timedelta(seconds=spec.cold_start_seconds)
    candidates: list[Boundary] = []
    for span in window_spans(schedule, now, now + horizon + lead):
        name = span.window.name
        if lead > dt.timedelta(0) and span.opens - lead > now:
            candidates.append(Boundary(span.opens - lead, f"pre-warm for window {name!r}"))
        if span.opens > now:
            candidates.append(Boundary(span.opens, f"window {name!r} opens"))
        if span.closes > now:
            candidates.append(Boundary(span.closes, f"window {name!r} closes"))
    for override in schedule.overrides:
        if override.start is not None and override.start > now:
            candidates.append(Boundary(override.start, f"override {override.mode.value} starts"))
        if override.until > now:
            candidates.append(Boundary(override.until, f"override {override.mode.value} ends"))
    upcoming = sorted((c for c in candidates if now < c.at <= now + horizon), key=lambda c: c.at)
    for candidate in upcoming:
        if _changes(spec, candidate.at):
            return candidate
    return None


def _changes(spec: GPUPoolSpec, at: dt.datetime) -> bool:
    """Whether the schedule's limits differ just before and just after `at` (a window closing at midnight
    as the same window opens again, or a pre-warm for a window already open, changes nothing)."""
    before = schedule_limits(spec, at - _EPSILON)
    after = schedule_limits(spec, at + _EPSILON)
    return (before.floor, before.ceiling, before.floor_reason) != (after.floor, after.ceiling, after.floor_reason)


def active_window(spec: GPUPoolSpec, now: dt.datetime) -> str | None:
    """The name of the open window with the highest minimum at `now` (the status' activeWindow), or None."""
    spans = open_spans(spec.schedule, now)
    if not spans:
        return None
    return max(spans, key=lambda s: (s.window.min_replicas, -s.index)).window.name


class BoundaryCache:
    """Each pool's next boundary, computed once and reused until it passes or the spec changes (the tick
    asks for every pool's on every pass; an answer of "none within 8 days" is recomputed hourly)."""

    def __init__(self) -> None:
        self._cache: dict[object, tuple[GPUPoolSpec, Boundary | None, dt.datetime]] = {}

    def get(self, key: object, spec: GPUPoolSpec, now: dt.datetime) -> Boundary | None:
        """The next boundary of the pool `key` after `now`."""
        cached = self._cache.get(key)
        if cached is not None:
            cached_spec, boundary, computed = cached
            if cached_spec is spec and computed <= now:
                if boundary is not None and now < boundary.at:
                    return boundary
                if boundary is None and now - computed < dt.timedelta(hours=1):
                    return None
        boundary = next_boundary(spec, now)
        self._cache[key] = (spec, boundary, now)
        return boundary

    def forget(self, keep: set[object]) -> None:
        """Drop the pools not in `keep`."""
        for key in [k for k in self._cache if k not in keep]:
            del self._cache[key]
