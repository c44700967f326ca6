"""When a step is worth a log line, and what the line says: one rule for the daemon and the simulator.

A decision is logged when it changes (desired replicas, reason, validity, the replicas it started from,
or the error) or when it was applied; the same decision repeated tick after tick is not. The daemon logs
every step at debug level and the changed ones at info; the simulator keeps only the changed ones.

`log_line` is the daemon's JSON line (issue item 5): `time`, `pool`, `namespace`, `deployment`, `from`,
`to`, `ready`, `reason`, `message`, `applied`, `dry_run`, `queue`, `window`, plus `error` when there is
one. A step whose cluster read failed has no decision: `to` is null and `reason` is `read-error`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Hashable
from typing import Any

from controller.ports import PoolRef, StepReport

__all__ = ["READ_ERROR_REASON", "DecisionFilter", "decision_key", "format_time", "log_line", "step_reason"]

READ_ERROR_REASON = "read-error"
"""The reason reported for a step that could not read the cluster (no decision was taken)."""


def step_reason(step: StepReport) -> str:
    """The machine-readable reason of a step: the decision's, or `read-error` when there was none."""
    return step.decision.reason.value if step.decision is not None else READ_ERROR_REASON


def decision_key(step: StepReport) -> tuple[Hashable, ...]:
    """What makes two steps of one pool the same decision for the log (times and messages aside)."""
    decision = step.decision
    if decision is None:
        return (None, READ_ERROR_REASON, False, step.previous, step.error)
    return (decision.desired_replicas, decision.reason, decision.valid, step.previous, step.error)


class DecisionFilter:
    """Remembers each pool's last logged decision; `changed` says whether a step deserves a line."""

    def __init__(self) -> None:
        self._last: dict[PoolRef, tuple[Hashable, ...]] = {}

    def changed(self, step: StepReport) -> bool:
        """True when the step was applied or differs from the pool's last decision; remembers it."""
        key = decision_key(step)
        if not step.applied and self._last.get(step.pool) == key:
            return False
        self._last[step.pool] = key
        return True

    def forget(self, pool: PoolRef) -> None:
        """Drop a pool (deleted): its next step, if any, is logged as new."""
        self._last.pop(pool, None)


def format_time(moment: dt.datetime) -> str:
    """A UTC timestamp with milliseconds, as log lines carry it ('2026-12-01T10:00:00.250Z')."""
    utc = moment.astimezone(dt.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def log_line(step: StepReport, window: str | None) -> dict[str, Any]:
    """The JSON-ready log line of one step; `window` is the schedule window open at the step (None: none)."""
    decision, observation = step.decision, step.observation
    demand = observation.demand if observation is not None else None
    line: dict[str, Any] = {
        "time": format_time(step.now),
        "pool": step.pool.name,
        "namespace": step.pool.namespace,
        "deployment": f"{step.pool.deployment_namespace}/{step.pool.deployment}",
        "from": step.previous,
        "to": decision.desired_replicas if decision is not None else None,
        "ready": observation.ready_replicas if observation is not None else None,
        "reason": step_reason(step),
        "message": decision.message if decision is not None else step.error,
        "valid": decision.valid if decision is not None else False,
        "applied": step.applied,
        "dry_run": step.dry_run,
        "queue": round(demand.queue, 3) if demand is not None else None,
        "window": window,
    }
    if step.generation is not None:
        line["generation"] = step.generation
    if observation is not None and demand is None and observation.no_data_reason:
        line["no_data"] = observation.no_data_reason
    if step.error:
        line["error"] = step.error
    return line
