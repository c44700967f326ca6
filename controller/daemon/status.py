"""The GPUPool status object, built from one step (pure), and when it is worth writing.

`build_status` returns the whole status (issue item 5): desiredReplicas, currentReplicas, readyReplicas,
activeWindow, nextChange{time, what}, lastDecision{reason, message, valid, desiredReplicas, time},
lastScaleTime, gpuHoursToday, fallbackUsdToday, fallbackOpen, observedGeneration, the conditions Ready,
MetricsAvailable, ScalingActive and BudgetExceeded (metav1.Condition shape), policyState and ledger. A
value that is unknown is None (null): written as a JSON merge patch it removes the field, so a stale
number never lingers. `status_patch` gives that merge patch (nulls for what went, e.g. a gone pod's uid
in ledger.pods; a merge patch merges maps, so sending the whole object would keep it).

Times that must not churn: a condition's lastTransitionTime moves only when its status flips;
lastDecision.time only when the reason changes. `status_changed` ignores what moves every tick without
meaning (lastDecision's time and, while its reason stands, its message; today's GPU-hours and dollars
within their display resolution; the fallback counter totals), so the status is written when it says
something new, not every tick. The persisted policy state changes only when `worth_persisting` says so.

Reasons in conditions are CamelCase. A blocking text given as "Reason: message" (the daemon's refusals,
e.g. "DeploymentMissing: ...", "Paused: ...", "ScalingOwnedByHPA: ...") keeps its reason.

Differences from the team's first sketch: there is no `budget` argument (BudgetExceeded and fallbackOpen
follow from `spec.budget` and `usage`); `ledger` (the `status.ledger` object from
`ledger.ledger_to_status`), `paused` and `last_scale_time` are extra keyword arguments; `spec` and `state`
may be None (an invalid spec; then the previous policyState is kept).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

from controller.daemon.codec import decode_state, encode_state, worth_persisting
from controller.daemon.decisionlog import step_reason
from controller.ports import StepReport, Usage
from policies.spec import GPUPoolSpec
from policies.types import PolicyState, Reason

__all__ = [
    "BUDGET_EXCEEDED",
    "CONDITION_TYPES",
    "GPU_HOURS_RESOLUTION",
    "METRICS_AVAILABLE",
    "READY",
    "SCALING_ACTIVE",
    "USD_RESOLUTION",
    "build_status",
    "condition",
    "format_time",
    "split_reason",
    "status_changed",
    "status_patch",
]

READY = "Ready"
METRICS_AVAILABLE = "MetricsAvailable"
SCALING_ACTIVE = "ScalingActive"
BUDGET_EXCEEDED = "BudgetExceeded"
CONDITION_TYPES = (READY, METRICS_AVAILABLE, SCALING_ACTIVE, BUDGET_EXCEEDED)

GPU_HOURS_RESOLUTION = 0.1
"""GPU-hours shown move the status only by this much (six GPU-minutes): the ledger, not this number,
is what a restart counts from, so a lagging display costs nothing."""
USD_RESOLUTION = 0.10
"""Fallback dollars shown move the status only by ten cents; the carried counter totals keep the count
exact across restarts, and a flip of fallbackOpen is always written."""

_REASON = re.compile(r"^([A-Z][A-Za-z0-9]*): (.*)$", re.DOTALL)
_STALE_REASONS = {Reason.STALE_DATA_HOLD}


def format_time(moment: dt.datetime) -> str:
    """A metav1.Time: RFC 3339 in UTC, whole seconds ('2026-12-01T10:00:00Z')."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def split_reason(text: str, default: str) -> tuple[str, str]:
    """("Reason", "message") from "Reason: message"; (default, text) when the text has no CamelCase reason."""
    match = _REASON.match(text)
    if match is None:
        return default, text
    return match.group(1), match.group(2)


def condition(
    type_: str,
    status: bool | None,
    reason: str,
    message: str,
    *,
    now: dt.datetime,
    generation: int | None,
    previous: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """A metav1.Condition; lastTransitionTime is the previous one's unless the status flipped."""
    text = "Unknown" if status is None else ("True" if status else "False")
    since = format_time(now)
    if previous is not None and previous.get("status") == text and isinstance(previous.get("lastTransitionTime"), str):
        since = previous["lastTransitionTime"]
    out: dict[str, Any] = {
        "type": type_,
        "status": text,
        "lastTransitionTime": since,
        "reason": reason,
        "message": message[:32768],
    }
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def _previous_conditions(previous: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    found: dict[str, Mapping[str, Any]] = {}
    for item in (previous or {}).get("conditions") or ():
        if isinstance(item, Mapping) and isinstance(item.get("type"), str):
            found[item["type"]] = item
    return found


def _ready(step: StepReport) -> tuple[bool, str, str]:
    decision, observation = step.decision, step.observation
    if decision is None or observation is None:
        reason, message = split_reason(step.error or "the Deployment could not be read", "ReadFailed")
        return False, reason, message
    if step.error:
        return False, "ScaleFailed", step.error
    want = decision.desired_replicas if decision.valid else observation.current_replicas
    if observation.ready_replicas < want:
        return False, "WaitingForReplicas", f"{observation.ready_replicas} of {want} replicas Ready"
    return True, "Reconciled", f"{observation.ready_replicas} replicas Ready, as decided"


def _metrics(step: StepReport, metrics_ok: bool | None) -> tuple[bool | None, str, str]:
    decision, observation = step.decision, step.observation
    if observation is None:
        return None, "NotRead", "the Deployment could not be read, so neither were its metrics"
    if metrics_ok is False or observation.demand is None:
        return False, "NoData", observation.no_data_reason or "no usable metrics; holding replicas"
    if decision is not None and decision.reason in _STALE_REASONS:
        return False, "StaleData", "the latest metrics are older than demand.metricMaxAgeSeconds; holding replicas"
    return True, "MetricsRead", "demand is read"


def _scaling(step: StepReport, refused: str | None, paused: bool) -> tuple[bool, str, str]:
    if refused:
        reason, message = split_reason(refused, "ScalingRefused")
        return False, reason, message
    if paused:
        return False, "Paused", "ebbtide.dev/paused is true: deciding and reporting only"
    if step.decision is None:
        reason, message = split_reason(step.error or "the Deployment could not be read", "ReadFailed")
        return False, reason, message
    if step.dry_run:
        return False, "DryRun", "the controller runs with --dry-run: deciding and reporting only"
    return True, "Active", "Ebbtide scales the Deployment"


def _budget(spec: GPUPoolSpec | None, usage: Usage | None) -> tuple[bool | None, str, str, bool | None]:
    """(BudgetExceeded status, reason, message, fallbackOpen)."""
    if spec is None:
        return None, "NoSpec", "the spec is invalid", None
    budget = spec.budget
    hours = usage.gpu_hours if usage is not None else None
    usd = usage.fallback_usd if usage is not None else None
    gpu_cap, usd_cap = budget.max_gpu_hours_per_day, budget.max_fallback_usd_per_day
    fallback_open = usd_cap is None or (usd is not None and usd < usd_cap)
    if gpu_cap is None and usd_cap is None:
        return False, "NoCap", "no daily budget is set", True
    exceeded: list[tuple[str, str]] = []
    unknown: list[str] = []
    if gpu_cap is not None:
        if hours is None:
            unknown.append("today's GPU-hours cannot be read: no scale-up past the cap")
        elif hours >= gpu_cap:
            exceeded.append(("GPUHoursCap", f"today's GPU-hours reached the cap of {gpu_cap:g} ({budget.on_gpu_cap})"))
    if usd_cap is not None:
        if usd is None:
            unknown.append("today's fallback spend cannot be read: the fallback is closed")
        elif usd >= usd_cap:
            exceeded.append(("FallbackUsdCap", f"today's fallback spend reached ${usd_cap:g}; the fallback is closed"))
    if exceeded:
        return True, ",".join(r for r, _ in exceeded), "; ".join(m for _, m in exceeded), fallback_open
    if unknown:
        return None, "UsageUnknown", "; ".join(unknown), fallback_open
    return False, "WithinBudget", "today's usage is below the daily caps", fallback_open


def _policy_state(previous: Mapping[str, Any] | None, state: PolicyState | None, now: dt.datetime) -> str | None:
    old = (previous or {}).get("policyState")
    old_text = old if isinstance(old, str) else None
    if state is None:
        return old_text
    if old_text is not None and not worth_persisting(decode_state(old_text, now), state):
        return old_text
    return encode_state(state)


def build_status(
    step: StepReport,
    *,
    previous: Mapping[str, Any] | None,
    spec: GPUPoolSpec | None,
    state: PolicyState | None,
    usage: Usage | None,
    active_window: str | None,
    next_change: tuple[dt.datetime, str] | None,
    scaling_refused: str | None = None,
    metrics_ok: bool | None = None,
    ledger: Mapping[str, Any] | None = None,
    paused: bool = False,
    last_scale_time: dt.datetime | None = None,
) -> dict[str, Any]:
    """The pool's whole status after `step` (see the module docstring); `previous` is the status as last written.

    `state` is the policy state after the step; `scaling_refused` says why Ebbtide may not scale now
    ("Reason: message", e.g. an HPA owns the Deployment); `metrics_ok` False forces MetricsAvailable=False
    (None: from the step); `ledger` is written as is; `last_scale_time` defaults to the step's time when it
    applied, else the previous value.
    """
    before: Mapping[str, Any] = previous or {}
    decision, observation, now = step.decision, step.observation, step.now
    conditions = _previous_conditions(previous)
    generation = step.generation

    def make(type_: str, verdict: tuple[bool | None, str, str]) -> dict[str, Any]:
        status, reason, message = verdict
        return condition(type_, status, reason, message, now=now, generation=generation, previous=conditions.get(type_))

    budget_status, budget_reason, budget_message, fallback_open = _budget(spec, usage)
    reason = step_reason(step)
    last = before.get("lastDecision")
    last_reason = last.get("reason") if isinstance(last, Mapping) else None
    since = last.get("time") if isinstance(last, Mapping) and last_reason == reason else None
    if last_scale_time is None and step.applied:
        last_scale_time = now
    scale_time = format_time(last_scale_time) if last_scale_time is not None else before.get("lastScaleTime")
    hours = usage.gpu_hours if usage is not None else None
    usd = usage.fallback_usd if usage is not None else None
    return {
        "observedGeneration": generation if generation is not None else before.get("observedGeneration"),
        "desiredReplicas": decision.desired_replicas if decision is not None else before.get("desiredReplicas"),
        "currentReplicas": observation.current_replicas if observation is not None else before.get("currentReplicas"),
        "readyReplicas": observation.ready_replicas if observation is not None else before.get("readyReplicas"),
        "activeWindow": active_window,
        "nextChange": (
            {"time": format_time(next_change[0]), "what": next_change[1][:256]} if next_change is not None else None
        ),
        "lastDecision": {
            "reason": reason,
            "message": (decision.message if decision is not None else step.error)[:4096],
            "valid": decision.valid if decision is not None else False,
            "desiredReplicas": decision.desired_replicas if decision is not None else None,
            "time": since if isinstance(since, str) else format_time(now),
        },
        "lastScaleTime": scale_time,
        "gpuHoursToday": round(hours, 3) if hours is not None else None,
        "fallbackUsdToday": round(usd, 4) if usd is not None else None,
        "fallbackOpen": fallback_open if fallback_open is not None else before.get("fallbackOpen"),
        "conditions": [
            make(READY, _ready(step)),
            make(METRICS_AVAILABLE, _metrics(step, metrics_ok)),
            make(SCALING_ACTIVE, _scaling(step, scaling_refused, paused)),
            make(BUDGET_EXCEEDED, (budget_status, budget_reason, budget_message)),
        ],
        "policyState": _policy_state(previous, state, now),
        "ledger": dict(ledger) if ledger is not None else before.get("ledger"),
    }


def _pruned(value: Any) -> Any:
    """The value as stored: null members removed (a merge patch's null deletes)."""
    if isinstance(value, Mapping):
        return {k: _pruned(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


def _within(old: object, new: object, resolution: float) -> bool:
    if isinstance(old, int | float) and isinstance(new, int | float):
        return abs(float(new) - float(old)) < resolution
    return old == new


def _comparable(status: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = _pruned(status)
    last = out.get("lastDecision")
    if isinstance(last, dict):
        # The time moves with the reason, and a message that only counts seconds is not news.
        out["lastDecision"] = {k: v for k, v in last.items() if k not in ("time", "message")}
    ledger = out.get("ledger")
    if isinstance(ledger, dict) and isinstance(ledger.get("fallback"), dict):
        fallback = {k: v for k, v in ledger["fallback"].items() if k not in ("usd", "totals")}
        out["ledger"] = {**ledger, "fallback": fallback}
    out.pop("gpuHoursToday", None)
    out.pop("fallbackUsdToday", None)
    return out


def status_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether `new` says something `old` (as last written) does not; tick-by-tick churn does not count."""
    if old is None:
        return True
    before, after = _pruned(old), _pruned(new)
    if ("gpuHoursToday" in before) != ("gpuHoursToday" in after) or not _within(
        before.get("gpuHoursToday"), after.get("gpuHoursToday"), GPU_HOURS_RESOLUTION
    ):
        return True
    if ("fallbackUsdToday" in before) != ("fallbackUsdToday" in after) or not _within(
        before.get("fallbackUsdToday"), after.get("fallbackUsdToday"), USD_RESOLUTION
    ):
        return True
    return _comparable(old) != _comparable(new)


def status_patch(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns the stored `old` into `new`: nulls for what went."""
    before: dict[str, Any] = _pruned(old or {})
    after: dict[str, Any] = _pruned(new)
    return _diff(before, after)


def _diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    patch: dict[str, Any] = {}
    for key in before.keys() - after.keys():
        patch[key] = None
    for key, value in after.items():
        old = before.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            nested = _diff(old, value)
            if nested:
                patch[key] = nested
        elif old != value or key not in before:
            patch[key] = value
    return patch
