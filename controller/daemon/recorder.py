"""The daemon's Recorder: each step becomes a log line, Events on the GPUPool, and a status to build.

- Log: the JSON line of `decisionlog.log_line`, passed as the record's message (controller/daemon/logs.py
  formats it): at info when the decision changed or was applied (`DecisionFilter`), at debug otherwise.
- Events (core/v1, through an EventSink that queues and aggregates): one per scale action (`ScaledUp`,
  `ScaledDown`; `WouldScaleUp`/`WouldScaleDown` under --dry-run or a block), one per change of reason
  (its reason in CamelCase, e.g. `Prewarm`, `BillingHold`; not `steady`, which follows every scale
  action and says nothing new, unless it ends a Warning), Warnings for failures: a failed scale
  (`ScaleFailed`), a step that could not read the cluster or was refused (the error's "Reason: message"
  prefix, e.g. `DeploymentMissing`, else `ReadFailed`), and holds for lack of data (`NoDataHold`,
  `StaleDataHold`). A pool's first step emits only scale actions and Warnings, so a restart does not
  re-announce every pool's reason.
- Status: `on_status(pool, step)` is called with every step; the daemon builds and queues the status.

Nothing here may break the loop: a failing sink, logger or callback is logged and the step goes on.

Beyond the team's sketch `KubeRecorder(events, on_status, logger)`, two optional keyword arguments:
`object_ref(pool) -> ObjectRef | None` (the GPUPool's uid for the Events; None skips Events for that pool;
default: a reference without uid) and `window(pool, now) -> str | None` (the open window for the log
line; default None). `forget(pool)` drops a deleted pool's memory.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Literal, Protocol

from controller.daemon.decisionlog import READ_ERROR_REASON, DecisionFilter, log_line, step_reason
from controller.daemon.status import split_reason
from controller.kube.events import ObjectRef
from controller.ports import PoolRef, StepReport
from policies.spec import API_GROUP, API_VERSION, KIND
from policies.types import Reason

__all__ = ["QUIET_REASONS", "WARNING_REASONS", "EventEmitter", "KubeRecorder", "event_reason"]

WARNING_REASONS = frozenset({Reason.NO_DATA_HOLD, Reason.STALE_DATA_HOLD})
"""Decision reasons that announce a problem (metrics lost), so their Event is a Warning."""

QUIET_REASONS = frozenset({Reason.STEADY})
"""Reasons not announced by an Event of their own: "steady" follows every scale action and says nothing new."""

EventType = Literal["Normal", "Warning"]


class EventEmitter(Protocol):
    """What the recorder needs of an EventSink: a non-blocking emit."""

    def emit(self, ref: ObjectRef, type_: EventType, reason: str, message: str, now: dt.datetime) -> None:
        """Queue one Event about `ref`."""
        ...


def event_reason(reason: str) -> str:
    """A decision reason as an Event reason: 'no-data-hold' -> 'NoDataHold'."""
    return "".join(part[:1].upper() + part[1:] for part in reason.split("-") if part) or "Unknown"


def _default_ref(pool: PoolRef) -> ObjectRef:
    return ObjectRef(f"{API_GROUP}/{API_VERSION}", KIND, pool.name, pool.namespace, "")


class KubeRecorder:
    """Fans each step out to the log, Events and the status callback (the Recorder port)."""

    def __init__(
        self,
        events: EventEmitter | None,
        on_status: Callable[[PoolRef, StepReport], None] | None,
        logger: logging.Logger,
        *,
        object_ref: Callable[[PoolRef], ObjectRef | None] | None = None,
        window: Callable[[PoolRef, dt.datetime], str | None] | None = None,
    ) -> None:
        self._events = events
        self._on_status = on_status
        self._log = logger
        self._object_ref = object_ref or _default_ref
        self._window = window
        self._filter = DecisionFilter()
        self._last_event: dict[PoolRef, tuple[str, str]] = {}
        """Per pool: the (Event type, reason key) last announced, so a reason is announced once."""

    def record(self, step: StepReport) -> None:
        """Log the step, emit its Events, hand it to the status callback; never raises."""
        try:
            self._write_log(step)
        except Exception:
            self._log.exception("logging the step of %s/%s failed", step.pool.namespace, step.pool.name)
        try:
            self._emit(step)
        except Exception:
            self._log.exception("emitting Events for %s/%s failed", step.pool.namespace, step.pool.name)
        if self._on_status is not None:
            try:
                self._on_status(step.pool, step)
            except Exception:
                self._log.exception("the status callback for %s/%s failed", step.pool.namespace, step.pool.name)

    def forget(self, pool: PoolRef) -> None:
        """Drop what the recorder remembers of a deleted pool."""
        self._filter.forget(pool)
        self._last_event.pop(pool, None)

    # -- log ----------------------------------------------------------------------------------------

    def _write_log(self, step: StepReport) -> None:
        changed = self._filter.changed(step)
        level = logging.INFO if changed else logging.DEBUG
        if not self._log.isEnabledFor(level):
            return
        window = self._window(step.pool, step.now) if self._window is not None else None
        self._log.log(level, log_line(step, window))

    # -- Events -------------------------------------------------------------------------------------

    def _emit(self, step: StepReport) -> None:
        if self._events is None:
            return
        event = self._event_for(step)
        if event is None:
            return
        type_, reason, message = event
        ref = self._object_ref(step.pool)
        if ref is not None:
            self._events.emit(ref, type_, reason, message, step.now)

    def _event_for(self, step: StepReport) -> tuple[EventType, str, str] | None:
        """The one Event a step deserves, or None; remembers the reason it announced."""
        decision, pool = step.decision, step.pool
        first = pool not in self._last_event
        last = self._last_event.get(pool)
        if decision is None:
            reason, message = split_reason(step.error or "the Deployment could not be read", "ReadFailed")
            failure = ("Warning", f"{READ_ERROR_REASON}:{reason}:{message}")
            if failure == last:
                return None
            self._last_event[pool] = failure
            return "Warning", reason, message
        warning = decision.reason in WARNING_REASONS
        key = ("Warning" if warning else "Normal", step_reason(step))
        if step.error:
            # A failed patch is retried each tick; announce it when it first fails with this error.
            fail_key = ("Warning", f"error:{step.error}")
            self._last_event[pool] = fail_key
            return None if fail_key == last else ("Warning", "ScaleFailed", step.error)
        current = step.previous
        moves = decision.valid and current is not None and decision.desired_replicas != current
        if moves and current is not None:
            up = decision.desired_replicas > current
            self._last_event[pool] = key
            detail = f"{current} → {decision.desired_replicas} replicas ({decision.reason.value}): {decision.message}"
            if step.applied:
                return "Normal", "ScaledUp" if up else "ScaledDown", detail
            if key != last:
                why = "dry run" if step.dry_run else "not applied"
                return "Normal", "WouldScaleUp" if up else "WouldScaleDown", f"{detail} [{why}]"
            return None
        if key == last:
            return None
        self._last_event[pool] = key
        recovered = last is not None and last[0] == "Warning"  # the end of a problem is news
        if (first or decision.reason in QUIET_REASONS) and not warning and not recovered:
            return None
        type_: EventType = "Warning" if warning else "Normal"
        return type_, event_reason(decision.reason.value), decision.message
