"""GPU billing arithmetic: how long a provider bills a replica, and what that costs."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable

from policies.spec import Billing

__all__ = ["billed_seconds", "gpu_cost_usd", "paid_until"]


def billed_seconds(running_seconds: float, billing: Billing) -> float:
    """Seconds billed for one replica that ran `running_seconds`: rounded up to the unit, at least the minimum."""
    if running_seconds < 0:
        raise ValueError(f"running time must not be negative, got {running_seconds}")
    unit = billing.granularity.seconds
    # A tiny epsilon keeps float noise (3600.0000001 s) from billing a whole extra hour.
    rounded = math.ceil(running_seconds / unit - 1e-9) * unit
    return float(max(rounded, billing.minimum_billed_seconds, 0))


def gpu_cost_usd(
    intervals: Iterable[tuple[float, float]], billing: Billing, gpus_per_replica: int = 1
) -> tuple[float, float]:
    """(billed GPU-hours, dollars) for replica lifetimes given as (start, end) seconds on any common clock."""
    seconds = 0.0
    for start, end in intervals:
        if end < start:
            raise ValueError(f"interval ends ({end}) before it starts ({start})")
        seconds += billed_seconds(end - start, billing)
    gpu_hours = seconds / 3600.0 * gpus_per_replica
    return gpu_hours, gpu_hours * billing.gpu_hourly_usd


def paid_until(started: dt.datetime, now: dt.datetime, billing: Billing) -> dt.datetime:
    """End of the billed period a replica running since `started` is in at `now` (already paid for)."""
    running = max((now - started).total_seconds(), 0.0)
    unit = billing.granularity.seconds
    periods = max(math.ceil(running / unit - 1e-9), 1)
    paid = max(periods * unit, billing.minimum_billed_seconds)
    return started + dt.timedelta(seconds=paid)
