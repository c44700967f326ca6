"""Today's GPU-hours and fallback dollars of a pool, derived from the cluster and carried in its status.

Nothing lives in local files: a restarted controller reads `status.ledger` back and goes on counting.

GPU-hours: a live pod is billed from when it got its GPU (PodInfo.scheduled_at, read from the pod) or
local midnight, whichever is later, to now. A pod that is gone no longer shows its time, so the status
remembers each billed pod's start (`pods: [{uid, since}]`, which changes only when the pods change, so the
ledger does not force a status write every tick) and the GPU-seconds of the pods that went today
(`closedGpuSeconds`). A pod found gone is counted up to the moment it was found gone: at most a tick more
than it ran while the controller runs, and an upper bound after a restart, so a budget cap errs on the
safe side. A new local day starts from zero; days are days in the pool's timezone, so a DST day has 23
or 25 hours.

Fallback dollars: the gateway's FALLBACK_USD counter is cumulative per gateway process. The spend of the
day is the sum of the counter's increases seen since local midnight; the last totals seen are carried,
so the increase between the last status write and a restart is not lost. Per-instance totals (a mapping
instance -> total) survive a gateway restart exactly (a counter that went down restarted from zero); a
single summed total cannot tell which replica restarted, so a drop counts nothing (losing at most one
read's spend) rather than counting the other replicas' whole history again. The first reading of a pool
without a carried ledger counts the counters' totals as today's: an upper bound, never a pretend zero.

Unknown inputs (pods not listed yet, the gateway unreadable) give None, never 0.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from controller.kube.pods import PodInfo, parse_time

__all__ = [
    "CarriedHours",
    "CarriedUsd",
    "day_start",
    "fallback_usd_today",
    "gpu_hours_today",
    "ledger_from_status",
    "ledger_to_status",
]


@dataclass(frozen=True, slots=True)
class CarriedHours:
    """What the status already counted today: GPU-seconds of pods that went, and each live pod's start."""

    day: dt.date
    closed_gpu_seconds: float = 0.0
    pods: Mapping[str, dt.datetime] = field(default_factory=dict)
    """uid -> start of its billed time today (its billing start, or local midnight if earlier)."""


@dataclass(frozen=True, slots=True)
class CarriedUsd:
    """Fallback dollars counted today and the counter totals they were counted up to."""

    day: dt.date
    usd: float = 0.0
    totals: Mapping[str, float] = field(default_factory=dict)
    """Gateway instance -> FALLBACK_USD total last seen ("" for a single summed total)."""


def _zone(zone: ZoneInfo | str) -> ZoneInfo:
    return zone if isinstance(zone, ZoneInfo) else ZoneInfo(zone)


def day_start(now: dt.datetime, zone: ZoneInfo | str) -> dt.datetime:
    """The first instant of the local day containing `now` (where midnight falls in a DST gap, the gap's end)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    tz = _zone(zone)
    local = now.astimezone(tz)
    # fold=0 on a midnight that does not exist (clocks jump 00:00 -> 01:00) takes the offset before the
    # jump, which is the instant of the jump: the real start of the day. Normalise through UTC.
    midnight = dt.datetime.combine(local.date(), dt.time(0), tzinfo=tz).astimezone(dt.UTC)
    return min(midnight, now.astimezone(dt.UTC))


def gpu_hours_today(
    pods: Sequence[PodInfo] | None,
    carried: CarriedHours | None,
    now: dt.datetime,
    zone: ZoneInfo | str,
    gpus_per_replica: int,
) -> tuple[float | None, CarriedHours | None]:
    """GPU-hours of the local day so far and the ledger to carry; (None, carried) when the pods are unknown.

    `pods` are the target Deployment's pods as listed now (deleting ones included: they are billed until
    gone); `carried` is what the status held (None for a pool never counted).
    """
    if pods is None:
        return None, carried
    start = day_start(now, zone)
    today = now.astimezone(_zone(zone)).date()
    if carried is None or carried.day != today:
        # A new day: the pods that went belong to earlier days (they were gone by the first tick after midnight).
        carried = CarriedHours(day=today)
    live: dict[str, dt.datetime] = {}
    for pod in pods:
        if pod.scheduled_at is None or not pod.uid:
            continue  # Pending: no GPU, no bill
        live[pod.uid] = min(max(pod.scheduled_at, start), now)
    closed = carried.closed_gpu_seconds
    for uid, since in carried.pods.items():
        if uid not in live:
            closed += max((now - since).total_seconds(), 0.0) * gpus_per_replica
    running = sum(max((now - since).total_seconds(), 0.0) for since in live.values()) * gpus_per_replica
    # Keep the start first recorded for a pod: the status, not this moment's view, is the record.
    pods_today = {uid: min(since, carried.pods.get(uid, since)) for uid, since in live.items()}
    return (closed + running) / 3600.0, CarriedHours(day=today, closed_gpu_seconds=closed, pods=pods_today)


def fallback_usd_today(
    counter_total: float | Mapping[str, float] | None,
    carried: CarriedUsd | None,
    now: dt.datetime,
    zone: ZoneInfo | str,
) -> tuple[float | None, CarriedUsd | None]:
    """Fallback dollars of the local day so far and the ledger to carry; (None, carried) when unreadable."""
    if counter_total is None:
        return None, carried
    per_instance = isinstance(counter_total, Mapping)
    totals = dict(counter_total) if isinstance(counter_total, Mapping) else {"": float(counter_total)}
    if any(not math.isfinite(v) or v < 0 for v in totals.values()):
        return None, carried  # a counter is never negative or NaN: the reading is broken, not zero
    today = now.astimezone(_zone(zone)).date()
    if carried is None:
        return sum(totals.values()), CarriedUsd(day=today, usd=sum(totals.values()), totals=totals)
    spent = 0.0
    for instance, total in totals.items():
        last = carried.totals.get(instance)
        if last is None:
            spent += total  # a new gateway process: all its spend is since we last looked
        elif total >= last:
            spent += total - last
        elif per_instance:
            spent += total  # that process restarted from zero
    usd = (carried.usd if carried.day == today else 0.0) + spent
    return usd, CarriedUsd(day=today, usd=usd, totals=totals)


def _time(moment: dt.datetime) -> str:
    # Whole seconds, rounded down: a start one second early keeps the count an upper bound.
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ledger_to_status(hours: CarriedHours | None, usd: CarriedUsd | None) -> dict[str, Any]:
    """The `status.ledger` object: {day, closedGpuSeconds, pods: [{uid, since}], fallback: {day, usd, totals:
    [{instance, total}]}}. Lists, not maps: a JSON merge patch replaces a list whole, while it would merge a
    map and keep the uid of a pod that went."""
    out: dict[str, Any] = {}
    if hours is not None:
        out["day"] = hours.day.isoformat()
        out["closedGpuSeconds"] = round(hours.closed_gpu_seconds, 3)
        out["pods"] = [{"uid": uid, "since": _time(since)} for uid, since in sorted(hours.pods.items())]
    if usd is not None:
        out["fallback"] = {
            "day": usd.day.isoformat(),
            "usd": round(usd.usd, 6),
            "totals": [{"instance": k, "total": v} for k, v in sorted(usd.totals.items())],
        }
    return out


def _date(value: object, where: str) -> dt.date:
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a date (YYYY-MM-DD), got {value!r}")
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{where} must be a date (YYYY-MM-DD), got {value!r}") from None


def _amount(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{where} must be a non-negative number, got {value!r}")
    return float(value)


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be an object, got {value!r}")
    return value


def _entries(value: object, where: str, key: str) -> list[tuple[str, Mapping[str, Any]]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{where} must be a list, got {value!r}")
    out: list[tuple[str, Mapping[str, Any]]] = []
    for i, item in enumerate(value):
        entry = _mapping(item, f"{where}[{i}]")
        name = entry.get(key)
        if not isinstance(name, str):
            raise ValueError(f"{where}[{i}].{key} must be a string, got {name!r}")
        out.append((name, entry))
    return out


def _hours(obj: Mapping[str, Any]) -> CarriedHours:
    pods: dict[str, dt.datetime] = {}
    for uid, entry in _entries(obj.get("pods"), "ledger.pods", "uid"):
        moment = parse_time(entry.get("since"))
        if moment is None:
            raise ValueError(f"ledger.pods[{uid}].since must be a time, got {entry.get('since')!r}")
        pods[uid] = moment
    return CarriedHours(
        day=_date(obj.get("day"), "ledger.day"),
        closed_gpu_seconds=_amount(obj.get("closedGpuSeconds", 0.0), "ledger.closedGpuSeconds"),
        pods=pods,
    )


def _usd(obj: Mapping[str, Any]) -> CarriedUsd:
    totals = _entries(obj.get("totals"), "ledger.fallback.totals", "instance")
    return CarriedUsd(
        day=_date(obj.get("day"), "ledger.fallback.day"),
        usd=_amount(obj.get("usd", 0.0), "ledger.fallback.usd"),
        totals={k: _amount(e.get("total"), f"ledger.fallback.totals[{k}].total") for k, e in totals},
    )


def ledger_from_status(obj: object) -> tuple[CarriedHours | None, CarriedUsd | None, list[str]]:
    """Read `status.ledger` back; a part that cannot be read is None (counted afresh), with the problem named."""
    if obj is None:
        return None, None, []
    if not isinstance(obj, Mapping):
        return None, None, [f"ledger must be an object, got {type(obj).__name__}"]
    problems: list[str] = []
    hours: CarriedHours | None = None
    usd: CarriedUsd | None = None
    if "day" in obj or "pods" in obj or "closedGpuSeconds" in obj:
        try:
            hours = _hours(obj)
        except ValueError as exc:
            problems.append(str(exc))
    if obj.get("fallback") is not None:
        try:
            usd = _usd(_mapping(obj["fallback"], "ledger.fallback"))
        except ValueError as exc:
            problems.append(str(exc))
    return hours, usd, problems
