"""Workloads: a trace replayed as is, or a week built from one real hour and an hourly profile.

The week builder ("a week from an hour"):
1. Hourly rate. Each simulated hour takes the profile's requests per minute for its UTC hour of day,
   weekday or weekend by the UTC calendar day, for the chosen service (`code` or `conv`); the whole
   profile is scaled so that its busiest hour averages `peak_rps` requests per second.
2. Burst structure. The real trace is cut into one-second buckets; its per-second request counts,
   divided by their mean, form a burst pattern. Each simulated hour reads 3,600 consecutive seconds of
   that pattern from a random starting second (wrapping around), renormalised to mean 1, and
   multiplies its hourly rate by it. The number of arrivals in each second is Poisson with that rate,
   placed uniformly within the second. Bursts, lulls and empty minutes of the real hour thus recur at
   the scaled volume.
3. Sizes. Each arrival takes the (prompt, generated) token pair of a real request drawn uniformly with
   replacement, so the size distribution and the prompt/output correlation are the real ones.
Everything is drawn from one `numpy.random.Generator(PCG64(seed))`: the same seed gives the same workload.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from controller.sim.traces import Trace, TraceError

__all__ = [
    "HOURS_PER_MONTH",
    "Profile",
    "ProfileError",
    "Workload",
    "build_week",
    "load_profile",
    "peak_rps_for_monthly_tokens",
    "replay",
]

HOURS_PER_MONTH = 730.0
"""A month of hours as GPU providers price it (the seed's $1,200 per 730-hour month)."""

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class ProfileError(TraceError):
    """An hourly profile that cannot be used; names the file and the key."""


@dataclass(frozen=True, slots=True)
class Profile:
    """Requests per minute by UTC hour of day, for weekdays and weekends, of one service."""

    weekday: tuple[float, ...]
    weekend: tuple[float, ...]
    key: str
    source: str

    @property
    def peak(self) -> float:
        """The busiest hour's requests per minute."""
        return max(max(self.weekday), max(self.weekend))

    def weekly_mean_share(self) -> float:
        """The week's mean rate as a share of the busiest hour (5 weekdays, 2 weekend days)."""
        return (5 * sum(self.weekday) + 2 * sum(self.weekend)) / (7 * 24) / self.peak


@dataclass(frozen=True, slots=True)
class Workload:
    """Requests to replay: arrival offsets from `start` (s, sorted), prompt and generated tokens."""

    arrival_s: FloatArray
    input_tokens: IntArray
    output_tokens: IntArray
    start: dt.datetime
    duration_s: float
    inputs: dict[str, Any] = field(default_factory=dict)
    """How the workload was made (trace, profile, seed, ...), echoed in the JSON report."""

    def __len__(self) -> int:
        return int(self.arrival_s.size)

    @property
    def total_tokens(self) -> int:
        """Prompt plus generated tokens of every request."""
        return int(self.input_tokens.sum()) + int(self.output_tokens.sum())


def load_profile(path: Path | str, key: str) -> Profile:
    """Read one service's hourly profile from an azure2024_diurnal.json-shaped file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError(path, f"cannot read: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise ProfileError(path, f"not JSON: {exc.msg}", line=exc.lineno) from exc
    if not isinstance(data, dict) or key not in data:
        keys = sorted(k for k, v in data.items() if isinstance(v, dict)) if isinstance(data, dict) else []
        raise ProfileError(path, f"no profile {key!r} (available: {', '.join(keys) or 'none'})", field=key)
    series: dict[str, tuple[float, ...]] = {}
    for day in ("weekday", "weekend"):
        values = data[key].get(day) if isinstance(data[key], dict) else None
        name = f"{key}.{day}"
        if not isinstance(values, list) or len(values) != 24:
            raise ProfileError(path, "must be a list of 24 hourly values (UTC hours 0..23)", field=name)
        if not all(isinstance(v, int | float) and v >= 0 and math.isfinite(v) for v in values):
            raise ProfileError(path, "values must be finite numbers >= 0", field=name)
        series[day] = tuple(float(v) for v in values)
    profile = Profile(series["weekday"], series["weekend"], key, str(path))
    if profile.peak <= 0:
        raise ProfileError(path, "every hour is zero", field=key)
    return profile


def replay(trace: Trace, start: dt.datetime | None = None) -> Workload:
    """The trace as it was, starting at `start` (the trace's own first timestamp, else 00:00 UTC today)."""
    origin = start or trace.started_at or dt.datetime(2024, 5, 13, tzinfo=dt.UTC)
    return Workload(
        arrival_s=trace.arrival_s.copy(),
        input_tokens=trace.input_tokens.copy(),
        output_tokens=trace.output_tokens.copy(),
        start=origin,
        duration_s=math.ceil(trace.span_seconds) + 1.0,
        inputs={"trace": trace.source, "mode": "replay", "start": origin.isoformat()},
    )


def peak_rps_for_monthly_tokens(trace: Trace, profile: Profile, monthly_tokens: float) -> float:
    """The busiest-hour rate at which a 730-hour month of the profile carries `monthly_tokens` tokens."""
    per_request = float(trace.input_tokens.mean() + trace.output_tokens.mean())
    requests_per_month = monthly_tokens / per_request
    return requests_per_month / (HOURS_PER_MONTH * 3600.0 * profile.weekly_mean_share())


def _burst_pattern(trace: Trace) -> FloatArray:
    """Per-second request counts of the real trace over its mean: the sub-minute burst shape."""
    seconds = max(math.ceil(trace.span_seconds), 1)
    counts = np.bincount(np.minimum(trace.arrival_s.astype(np.int64), seconds - 1), minlength=seconds)
    pattern: FloatArray = counts.astype(np.float64)
    pattern /= pattern.mean()
    return pattern


def build_week(
    trace: Trace,
    profile: Profile,
    *,
    days: int,
    start: dt.datetime,
    peak_rps: float,
    seed: int,
) -> Workload:
    """A `days`-long workload following `profile` with the trace's burst structure and request sizes."""
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    if peak_rps <= 0:
        raise ValueError(f"peak rps must be > 0, got {peak_rps}")
    if start.tzinfo is None:
        raise ValueError("start needs a UTC offset, e.g. 2024-05-13T00:00:00Z")
    rng = np.random.Generator(np.random.PCG64(seed))
    hours = days * 24
    scale = peak_rps / (profile.peak / 60.0)

    # 1. Hourly rate (req/s) for every simulated hour, by its UTC hour of day and weekday/weekend.
    moments = [start.astimezone(dt.UTC) + dt.timedelta(hours=h) for h in range(hours)]
    rates = np.array(
        [(profile.weekend if m.weekday() >= 5 else profile.weekday)[m.hour] / 60.0 * scale for m in moments],
        dtype=np.float64,
    )

    # 2. Burst structure: 3,600 consecutive seconds of the real pattern from a random offset per hour.
    pattern = _burst_pattern(trace)
    offsets = rng.integers(0, pattern.size, size=hours)
    windows = pattern[(offsets[:, None] + np.arange(3600)[None, :]) % pattern.size]
    means = windows.mean(axis=1, keepdims=True)
    windows = np.divide(windows, means, out=np.ones_like(windows), where=means > 0)
    per_second = (windows * rates[:, None]).ravel()
    counts = rng.poisson(per_second)
    second_of = np.repeat(np.arange(per_second.size, dtype=np.float64), counts)
    arrival = second_of + rng.random(second_of.size)
    arrival.sort()

    # 3. Sizes: real (prompt, generated) pairs drawn with replacement.
    picks = rng.integers(0, len(trace), size=arrival.size)
    return Workload(
        arrival_s=arrival,
        input_tokens=trace.input_tokens[picks],
        output_tokens=trace.output_tokens[picks],
        start=start,
        duration_s=float(hours * 3600),
        inputs={
            "trace": trace.source,
            "mode": "week-from-an-hour",
            "profile": profile.source,
            "profile_key": profile.key,
            "days": days,
            "start": start.isoformat(),
            "peak_rps": peak_rps,
            "seed": seed,
        },
    )
