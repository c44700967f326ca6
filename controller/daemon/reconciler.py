"""One pass of the daemon over every live pool: refusals, manual changes, the ControlLoop step, status.

Everything here reads the snapshots and the demand cache and never waits on the network, except the one
scale patch inside `KubeCluster.scale`. Pools that may not be scaled (paused, an HPA owns the
Deployment, a manual change being respected, --dry-run) run through a second ControlLoop in dry-run
mode: they decide and report exactly as the others, they only never patch.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from controller.daemon.pooltable import LivePool, PoolTable, scaling_owner
from controller.daemon.snapshots import Snapshots
from controller.daemon.wakeups import Boundary, BoundaryCache, active_window
from controller.kube.events import EventSink, ObjectRef
from controller.loop import ControlLoop, Outcome, Ports
from controller.ports import Recorder, StepReport
from policies.scaling import decide
from policies.spec import API_GROUP, API_VERSION, KIND

__all__ = ["STALE_CACHE_SECONDS", "PassResult", "Reconciler", "pool_object_ref"]

log = logging.getLogger("ebbtide.reconciler")

STALE_CACHE_SECONDS = 60.0
"""A watch failing this long may have missed changes (a manual scale, a deleted pod): act on nothing."""

StatusBuilder = Callable[
    [LivePool, StepReport, dt.datetime, str | None, Boundary | None], tuple[dict[str, Any], dict[str, Any]] | None
]
"""(pool, its step, now, why it may not scale, next boundary) -> (new status, merge patch), or None when
unchanged."""


def pool_object_ref(pool: LivePool) -> ObjectRef:
    """The GPUPool as an Event's involvedObject."""
    return ObjectRef(f"{API_GROUP}/{API_VERSION}", KIND, pool.key[1], pool.key[0], pool.uid)


class _Unapplied:
    """Hands a report-only step on with the daemon's own dry-run flag."""

    def __init__(self, inner: Recorder, dry_run: bool) -> None:
        self._inner = inner
        self._dry_run = dry_run

    def record(self, step: StepReport) -> None:
        """Pass the step on, marked a dry run only when the daemon runs dry."""
        self._inner.record(dataclasses.replace(step, dry_run=self._dry_run))


@dataclass(frozen=True, slots=True)
class PassResult:
    """What one pass did: pools stepped, those whose step failed (unreadable or refused), scale patches."""

    pools: int
    failed: tuple[str, ...]
    applied: int


class Reconciler:
    """Runs passes; holds the two ControlLoops (acting and report-only) over the same ports."""

    def __init__(
        self,
        *,
        ports: Ports,
        snapshots: Snapshots,
        table: PoolTable,
        events: EventSink,
        recorder: Recorder,
        build_status: StatusBuilder,
        submit_status: Callable[[str, str, Mapping[str, Any]], None],
        dry_run: bool,
    ) -> None:
        self._ports = ports
        self._snapshots = snapshots
        self._table = table
        self._events = events
        self._recorder = recorder
        self._build_status = build_status
        self._submit_status = submit_status
        self.dry_run = dry_run
        self.acting = ControlLoop(ports, decide, dry_run=dry_run)
        # Report-only pools never patch, but their steps say the truth: not a dry run (unless the daemon
        # runs with --dry-run), only not applied; the status and the Events say why.
        reporting_ports = dataclasses.replace(ports, recorder=_Unapplied(ports.recorder, dry_run))
        self.reporting = ControlLoop(reporting_ports, decide, dry_run=True)
        self.boundaries = BoundaryCache()
        self.blocked: dict[tuple[str, str], str] = {}
        """Pools that decide but must not scale now, with why (for ScalingActive=False)."""

    def owner_block(self, pool: LivePool) -> str | None:
        """Why someone else decides this pool's replicas now (a pause, an HPA), or None."""
        deployment = self._snapshots.deployments.items.get((pool.ref.deployment_namespace, pool.ref.deployment))
        if pool.paused:
            return "Paused: the GPUPool carries ebbtide.dev/paused=true; deciding and reporting only"
        if deployment is not None and deployment.paused:
            return (
                f"Paused: Deployment {deployment.namespace}/{deployment.name} carries ebbtide.dev/paused=true; "
                "deciding and reporting only"
            )
        if deployment is not None:
            owner = scaling_owner(deployment, self._snapshots.hpas.items.values())
            if owner is not None:
                return f"ScaledByOther: {owner} scales Deployment {deployment.namespace}/{deployment.name}"
        return None

    @staticmethod
    def manual_block(pool: LivePool, now: dt.datetime) -> str | None:
        """Why a manual change of the replicas is being respected now, or None."""
        if pool.manual_until is not None and now < pool.manual_until:
            return (
                f"ManualChange: replicas were set to {pool.last_written} by hand; not changing them until "
                f"{pool.manual_until.strftime('%H:%M:%S')} UTC (one scale-down delay)"
            )
        return None

    def _notice_manual_change(self, pool: LivePool, now: dt.datetime, blocked: bool) -> None:
        deployment = self._snapshots.deployments.items.get((pool.ref.deployment_namespace, pool.ref.deployment))
        if deployment is None or pool.spec is None:
            return
        live = deployment.replicas
        if pool.last_written is None or blocked or self.dry_run:
            pool.last_written = live  # nothing of ours to compare with: the live value is the baseline
            return
        if live == pool.last_written:
            return
        delay = pool.spec.demand.scale_down_delay_seconds
        self._events.emit(
            pool_object_ref(pool),
            "Normal",
            "ManualScale",
            f"Deployment {deployment.namespace}/{deployment.name} replicas changed to {live} outside Ebbtide "
            f"(it last set {pool.last_written}); leaving them for {delay} s",
            now,
        )
        log.info(
            "%s/%s: replicas changed by hand from %s to %s; not acting for %s s",
            pool.key[0],
            pool.key[1],
            pool.last_written,
            live,
            delay,
        )
        pool.last_written = live
        pool.manual_until = now + dt.timedelta(seconds=delay)

    def step(self, pool: LivePool, now: dt.datetime) -> Outcome | None:
        """One pool's step: refused pools report their refusal, the rest reconcile."""
        if pool.refusal is not None or pool.spec is None:
            self.blocked.pop(pool.key, None)  # the refusal is the reason now, not an earlier pause
            refusal = pool.refusal
            error = f"{refusal.reason}: {refusal.message}" if refusal is not None else "InvalidSpec"
            step = StepReport(
                pool.ref, now, pool.generation, None, None, False, None, error=error, dry_run=self.dry_run
            )
            pool.step = step
            self._recorder.record(step)
            self._finish(pool, step, now)
            return None
        other = self.owner_block(pool)
        self._notice_manual_change(pool, now, other is not None)
        reason = other or self.manual_block(pool, now)
        if reason is None:
            self.blocked.pop(pool.key, None)
        else:
            self.blocked[pool.key] = reason
        loop = self.acting if reason is None else self.reporting
        pool.step = None
        outcome = loop.reconcile(pool.ref, pool.spec, pool.state, generation=pool.generation)
        pool.state = outcome.state
        pool.outcome = outcome
        if outcome.applied and outcome.decision is not None:
            pool.last_scale_time = now
            pool.last_written = outcome.decision.desired_replicas
        if pool.step is not None:
            self._finish(pool, pool.step, now)
        return outcome

    def _finish(self, pool: LivePool, step: StepReport, now: dt.datetime) -> None:
        try:
            boundary = self.boundaries.get(pool.key, pool.spec, now) if pool.spec is not None else None
            built = self._build_status(pool, step, now, self.blocked.get(pool.key), boundary)
        except Exception:  # a status bug must not stop the other pools
            log.exception("building the status of %s/%s failed", *pool.key)
            return
        if built is not None:
            pool.status, patch = built
            self._submit_status(pool.key[0], pool.key[1], patch)

    def run_pass(self, now: dt.datetime) -> PassResult:
        """Sync the table with the snapshots and step every pool once; with stale caches, only report."""
        self._table.sync(self._snapshots.pools.items, now)
        self._table.refresh_refusals(self._snapshots.deployments.items)
        stale = self._snapshots.stale(STALE_CACHE_SECONDS)
        if stale is not None:
            return self._report_stale(stale, now)
        failed: list[str] = []
        applied = 0
        for pool in self._table:
            try:
                outcome = self.step(pool, now)
            except Exception as exc:  # one pool's bug must not stop the others
                log.exception("pool %s/%s: step failed", *pool.key)
                failed.append(f"{pool.key[0]}/{pool.key[1]}: {exc}")
                continue
            if outcome is None:
                failed.append(f"{pool.key[0]}/{pool.key[1]}: {pool.step.error if pool.step else 'refused'}")
            elif outcome.error:
                failed.append(f"{pool.key[0]}/{pool.key[1]}: {outcome.error}")
            elif outcome.applied:
                applied += 1
        return PassResult(len(self._table), tuple(failed), applied)

    def _report_stale(self, why: str, now: dt.datetime) -> PassResult:
        """A pass that acts on nothing: the caches may be missing changes, so every pool reports why."""
        failed = []
        for pool in self._table:
            step = StepReport(
                pool.ref,
                now,
                pool.generation,
                None,
                None,
                False,
                None,
                error=f"CacheStale: {why}",
                dry_run=self.dry_run,
            )
            pool.step = step
            self._recorder.record(step)
            self._finish(pool, step, now)
            failed.append(f"{pool.key[0]}/{pool.key[1]}: {why}")
        return PassResult(len(self._table), tuple(failed), 0)

    def next_boundary(self, now: dt.datetime) -> Boundary | None:
        """The earliest schedule boundary of any live pool after `now`."""
        boundaries = [
            b for p in self._table if p.spec is not None and (b := self.boundaries.get(p.key, p.spec, now)) is not None
        ]
        self.boundaries.forget(set(self._table.pools))
        return min(boundaries, key=lambda b: b.at, default=None)

    def window_of(self, pool: LivePool, now: dt.datetime) -> str | None:
        """The open window of a pool, for the log line and the status."""
        return active_window(pool.spec, now) if pool.spec is not None else None
