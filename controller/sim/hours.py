"""Where each row's money goes by hour of day: in which hours the GPUs pay, and in which the API does.

For every policy run (the offline bounds have no hours: they are one number each), each hour of day in
the pool's schedule timezone gets the run's SLO-priced cost of that hour, summed over the days of the
run: the GPU time billed in it plus the API's price of every request arriving in it that was not served
on the GPUs within the objective. A replica's billed time (its lifetime rounded up to the billing unit
and minimum, from the moment it got its GPU) is split over the hours it spans, the rounding falling in
the hours after it stopped, where it is paid. So each row's 24 hours add up to its SLO-priced cost.

An hour's cheapest row is the one to read as "what pays in this hour"; the hours are not independent
plans (a replica kept through a lull is paid in the lull for the burst after it), so the cheapest rows
of the 24 hours together are no plan a pool could run.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from controller.sim.runner import PolicyRun, not_on_time, request_api_usd
from controller.sim.verdict import kind_of
from controller.sim.workload import Workload
from policies.billing import billed_seconds
from policies.spec import GPUPoolSpec

__all__ = ["TIE_USD", "HourTable", "by_hour", "by_hour_json", "render_by_hour"]

FloatArray = npt.NDArray[np.float64]
HOURS = 24
TIE_USD = 0.005
"""Rows within half a cent of an hour's least cost tie for it (the table prints cents)."""


@dataclass(frozen=True, slots=True)
class HourTable:
    """Per hour of day: requests arriving, and each row's SLO-priced dollars (rows in report order)."""

    timezone: str
    days: float
    requests: npt.NDArray[np.int64]
    slo_priced_usd: dict[str, FloatArray]
    cheapest: list[tuple[str, ...]]
    """Per hour, the runnable rows (not the offline references) of least SLO-priced cost in it: more than
    one where they tie to the cent (Ebbtide at night sends what `api_only` sends)."""


class _LocalClock:
    """Seconds from the run's start to local time of day, by each UTC hour's offset (DST-aware)."""

    def __init__(self, start: dt.datetime, duration_s: float, timezone: str) -> None:
        zone = ZoneInfo(timezone)
        hours = math.ceil(duration_s / 3600.0) + 2
        moments = [start + dt.timedelta(hours=h) for h in range(hours)]
        offsets = [m.astimezone(zone).utcoffset() or dt.timedelta(0) for m in moments]
        midnight_utc = start.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        self._base = (start.astimezone(dt.UTC) - midnight_utc).total_seconds()
        self._offsets = np.array([o.total_seconds() for o in offsets], dtype=np.float64)

    def local(self, t: FloatArray) -> FloatArray:
        """Local seconds since some midnight for run times `t` (seconds from the start)."""
        index = np.clip((t // 3600.0).astype(np.int64), 0, self._offsets.size - 1)
        return np.asarray(t + self._base + self._offsets[index], dtype=np.float64)

    def local_one(self, t: float) -> float:
        """`local` for one time."""
        index = min(max(int(t // 3600.0), 0), self._offsets.size - 1)
        return t + self._base + float(self._offsets[index])

    def hour_of(self, t: FloatArray) -> npt.NDArray[np.int64]:
        return np.asarray((self.local(t) // 3600.0).astype(np.int64) % HOURS, dtype=np.int64)


def _billed_by_hour(lifetimes: Sequence[tuple[float, float]], spec: GPUPoolSpec, clock: _LocalClock) -> FloatArray:
    """Billed seconds of every replica, split over the local hours of day they span."""
    out = np.zeros(HOURS)
    for start, end in lifetimes:
        paid = billed_seconds(end - start, spec.billing)
        t, stop = float(start), float(start) + paid
        while t < stop:
            local = clock.local_one(t)
            edge = min(stop, t + (math.floor(local / 3600.0) + 1) * 3600.0 - local)
            out[int(local // 3600.0) % HOURS] += edge - t
            t = edge
    return out


def by_hour(runs: Mapping[str, PolicyRun], workload: Workload, spec: GPUPoolSpec) -> HourTable | None:
    """Each policy run's SLO-priced cost per hour of day; None when no row is a policy run."""
    timezone = spec.schedule.timezone
    clock = _LocalClock(workload.start, workload.duration_s, timezone)
    hour = clock.hour_of(workload.arrival_s)
    api = request_api_usd(workload, spec.fallback.price)
    usd_per_gpu_second = spec.replica_usd_per_hour / 3600.0
    priced: dict[str, FloatArray] = {}
    for name, run in runs.items():
        if run.route is None or run.ttft is None:
            continue  # a bound's row: one number, no requests' outcomes (the optimum's plan has them)
        late = not_on_time(run.route, run.ttft, run.slo_ttft_seconds)
        api_h = np.bincount(hour[late], weights=api[late], minlength=HOURS)
        priced[name] = _billed_by_hour(run.lifetimes, spec, clock) * usd_per_gpu_second + api_h
    if not priced:
        return None
    runnable = [n for n in priced if kind_of(n) is not None]
    cheapest = []
    for h in range(HOURS):
        least = min((priced[n][h] for n in runnable), default=0.0)
        cheapest.append(tuple(n for n in runnable if priced[n][h] < least + TIE_USD))
    return HourTable(
        timezone=timezone,
        days=workload.duration_s / 86400.0,
        requests=np.bincount(hour, minlength=HOURS).astype(np.int64),
        slo_priced_usd=priced,
        cheapest=cheapest,
    )


def render_by_hour(table: HourTable) -> str:
    """The table under the report: one line per hour of day, one column per row, and the hour's cheapest."""
    names = list(table.slo_priced_usd)
    width = {n: max(len(n), 9) for n in names}
    head = f"{'hour':<5}  {'requests':>9}  " + "  ".join(f"{n:>{width[n]}}" for n in names) + "  cheapest"
    lines = [
        f"By hour of day ({table.timezone}), over {table.days:g} day{'' if table.days == 1 else 's'}: "
        "each row's SLO-priced $ "
        "(GPU time billed in the hour, and the API's price of its requests not on time):",
        head,
        "-" * len(head),
    ]
    for h in range(HOURS):
        cells = "  ".join(f"{table.slo_priced_usd[n][h]:>{width[n]},.2f}" for n in names)
        lines.append(f"{h:02d}:00  {int(table.requests[h]):>9,}  {cells}  {' = '.join(table.cheapest[h]) or '-'}")
    totals = "  ".join(f"{table.slo_priced_usd[n].sum():>{width[n]},.2f}" for n in names)
    lines.append(f"{'all':<5}  {int(table.requests.sum()):>9,}  {totals}")
    return "\n".join(lines)


def by_hour_json(table: HourTable) -> dict[str, Any]:
    """The table for `--json`: per hour of day (0..23), requests and each row's SLO-priced dollars."""
    return {
        "timezone": table.timezone,
        "days": table.days,
        "requests": [int(x) for x in table.requests],
        "slo_priced_usd": {n: [round(float(x), 6) for x in v] for n, v in table.slo_priced_usd.items()},
        "cheapest": [list(c) for c in table.cheapest],
    }
