"""The next moment a pool's schedule changes its mind: pre-warm start, window opening or closing,
override start or end. Pure functions of (spec, now).

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

from policies.schedules import open_spans, window_spans
from policies.spec import GPUPoolSpec

__all__ = ["Boundary", "active_window", "next_boundary"]

# How far ahead to look for the next boundary: a weekly schedule repeats within 8 days, and a holiday
# run longer than that only delays the answer to the next call.
_HORIZON = dt.timedelta(days=8)


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
    upcoming = [c for c in candidates if now < c.at <= now + horizon]
    return min(upcoming, key=lambda c: c.at, default=None)


def active_window(spec: GPUPoolSpec, now: dt.datetime) -> str | None:
    """The name of the open window with the highest minimum at `now` (the status' activeWindow), or None."""
    spans = open_spans(spec.schedule, now)
    if not spans:
        return None
    return max(spans, key=lambda s: (s.window.min_replicas, -s.index)).window.name
