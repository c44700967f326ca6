"""The daemon's Ledger port and the status it writes for each pool, from the caches only.

`DaemonLedger.usage_today` counts today's GPU-hours from the Deployment's pods plus what the pool's status
already counted for pods that went (`status.ledger`), and today's fallback dollars from the gateway's
counter; the carried ledger goes back into the next status write, so a restart loses nothing. Unknown
stays unknown (None), so budget caps hold. `StatusComposer.build` turns a step into the status object and
returns it only when it changed; the policy state goes along only when it changed meaningfully.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from controller.daemon.ledger import (
    CarriedHours,
    CarriedUsd,
    fallback_usd_today,
    gpu_hours_today,
    ledger_from_status,
    ledger_to_status,
)
from controller.daemon.pooltable import LivePool, PoolTable
from controller.daemon.snapshots import Snapshots
from controller.daemon.status import build_status, status_changed, status_patch
from controller.daemon.wakeups import Boundary, active_window
from controller.demand.poller import DemandPoller
from controller.ports import PoolRef, StepReport, Usage

__all__ = ["DaemonLedger", "StatusComposer"]

log = logging.getLogger("ebbtide.reporting")


class DaemonLedger:
    """The Ledger port: today's usage from pods and counters, carried in the pool's status."""

    def __init__(self, snapshots: Snapshots, table: PoolTable, poller: DemandPoller) -> None:
        self._snapshots = snapshots
        self._table = table
        self._poller = poller
        self.carried: dict[tuple[str, str], tuple[CarriedHours | None, CarriedUsd | None]] = {}
        """What each pool's next status write carries as `ledger`."""

    def _carried_from_status(self, pool: LivePool) -> tuple[CarriedHours | None, CarriedUsd | None]:
        known = self.carried.get(pool.key)
        if known is not None:
            return known
        hours, usd, problems = ledger_from_status(pool.status.get("ledger"))
        for problem in problems:
            log.warning("%s/%s: status.ledger: %s; counting that part afresh", pool.key[0], pool.key[1], problem)
        return hours, usd

    def usage_today(self, pool: PoolRef, now: dt.datetime) -> Usage:
        """GPU-hours and fallback dollars of the pool's local day so far (None where unknown)."""
        live = self._table.pools.get((pool.namespace, pool.name))
        if live is None or live.spec is None:
            return Usage(None, None)
        deployment = self._snapshots.deployments.items.get((pool.deployment_namespace, pool.deployment))
        known = deployment is not None and self._snapshots.pods.synced.is_set()
        pods = self._snapshots.pods_of(deployment) if deployment is not None and known else None
        carried_hours, carried_usd = self._carried_from_status(live)
        zone = live.spec.schedule.zone
        hours, carried_hours = gpu_hours_today(pods, carried_hours, now, zone, live.spec.target.gpus_per_replica)
        usd, carried_usd = fallback_usd_today(self._poller.fallback_usd_total(pool), carried_usd, now, zone)
        if usd is None and not live.spec.metrics.gateway:
            usd = carried_usd.usd if carried_usd is not None else 0.0  # no gateway by design: nothing spent
        self.carried[live.key] = (carried_hours, carried_usd)
        return Usage(hours, usd)

    def ledger_status(self, key: tuple[str, str]) -> dict[str, Any]:
        """The `status.ledger` object to write for a pool."""
        hours, usd = self.carried.get(key, (None, None))
        return ledger_to_status(hours, usd)


class StatusComposer:
    """Builds each pool's status from its step and the caches; None when nothing changed."""

    def __init__(self, ledger: DaemonLedger) -> None:
        self._ledger = ledger

    def build(
        self, pool: LivePool, step: StepReport, now: dt.datetime, blocked: str | None, boundary: Boundary | None
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(the pool's new status, the merge patch from the last written one), or None when unchanged."""
        spec = pool.spec
        observation = step.observation
        usage = Usage(observation.gpu_hours_today, observation.fallback_usd_today) if observation is not None else None
        ledger = self._ledger.ledger_status(pool.key)
        new = build_status(
            step,
            previous=pool.status,
            spec=spec,
            state=pool.state if spec is not None else None,
            usage=usage,
            active_window=active_window(spec, now) if spec is not None else None,
            next_change=(boundary.at, boundary.what) if boundary is not None else None,
            scaling_refused=blocked,
            ledger=ledger or None,
            last_scale_time=pool.last_scale_time,
        )
        if pool.status and not status_changed(pool.status, new):
            return None
        return new, status_patch(pool.status, new)
