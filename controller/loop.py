"""The reconcile step shared by the daemon, the simulator and the tests.

One call reads the world through the ports, asks the policy, applies a valid decision and reports it.
Failures of a port never escape: a failed metric read is "no data" (hold), a failed ledger read is
"unknown usage" (budget caps hold), a failed cluster read skips the decision (and is reported), a failed
scale is reported and retried on the next step. The recorder sees every step whole.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

from controller.ports import Clock, Cluster, Ledger, MetricsSource, NoData, PoolRef, Recorder, StepReport, Usage
from policies.spec import GPUPoolSpec
from policies.types import Decision, Observation, PolicyState

__all__ = ["ControlLoop", "Outcome", "Policy", "Ports"]

log = logging.getLogger("ebbtide.loop")

Policy = Callable[[GPUPoolSpec, Observation, PolicyState, dt.datetime], tuple[Decision, PolicyState]]
"""A pure decision function: (spec, observation, state, now) -> (decision, new state)."""


@dataclass(frozen=True, slots=True)
class Ports:
    """Everything the loop touches outside itself."""

    clock: Clock
    cluster: Cluster
    metrics: MetricsSource
    ledger: Ledger
    recorder: Recorder


@dataclass(frozen=True, slots=True)
class Outcome:
    """Result of one reconcile step."""

    decision: Decision | None
    state: PolicyState
    applied: bool
    error: str = ""


class ControlLoop:
    """Runs one policy against one set of ports; `reconcile` is one step for one pool."""

    def __init__(self, ports: Ports, policy: Policy, *, dry_run: bool = False) -> None:
        self.ports = ports
        self.policy = policy
        self.dry_run = dry_run

    def observe(self, pool: PoolRef, now: dt.datetime) -> Observation:
        """Read the cluster, the metrics and the ledger into one observation (raises if the cluster fails)."""
        status = self.ports.cluster.replicas(pool)
        try:
            reading = self.ports.metrics.sample(pool, now)
        except Exception as exc:  # a metrics adapter bug must not look like zero load
            log.warning("metrics read for %s/%s failed: %s", pool.namespace, pool.name, exc)
            reading = NoData(f"metrics read failed: {exc}")
        try:
            usage = self.ports.ledger.usage_today(pool, now)
        except Exception as exc:
            log.warning("ledger read for %s/%s failed: %s", pool.namespace, pool.name, exc)
            usage = Usage(None, None)  # unknown, never zero: the caps hold
        return Observation(
            current_replicas=status.current,
            ready_replicas=status.ready,
            demand=None if isinstance(reading, NoData) else reading,
            replica_billing_starts=status.billing_starts,
            gpu_hours_today=usage.gpu_hours,
            fallback_usd_today=usage.fallback_usd,
            no_data_reason=reading.reason if isinstance(reading, NoData) else "",
        )

    def reconcile(
        self, pool: PoolRef, spec: GPUPoolSpec, state: PolicyState, *, generation: int | None = None
    ) -> Outcome:
        """Observe, decide, apply when valid and changed, and report."""
        now = self.ports.clock.now()
        try:
            observation = self.observe(pool, now)
        except Exception as exc:
            error = f"cannot read {pool.deployment_namespace}/{pool.deployment}: {exc}"
            log.debug("%s", error)
            self.ports.recorder.record(
                StepReport(pool, now, generation, None, None, False, None, error=error, dry_run=self.dry_run)
            )
            return Outcome(decision=None, state=state, applied=False, error=error)
        decision, new_state = self.policy(spec, observation, state, now)
        applied = False
        error = ""
        if decision.valid and decision.desired_replicas != observation.current_replicas and not self.dry_run:
            try:
                self.ports.cluster.scale(pool, decision.desired_replicas)
                applied = True
            except Exception as exc:
                error = f"scale to {decision.desired_replicas} failed: {exc}"
                log.error("%s/%s: %s", pool.namespace, pool.name, error)
        self.ports.recorder.record(
            StepReport(
                pool,
                now,
                generation,
                observation,
                decision,
                applied,
                observation.current_replicas,
                error=error,
                dry_run=self.dry_run,
            )
        )
        return Outcome(decision=decision, state=new_state, applied=applied, error=error)
