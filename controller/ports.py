"""The narrow ports through which the control loop reaches the world.

The daemon plugs Kubernetes and Prometheus adapters in here, the simulator plugs simulated ones, and the
tests plug whichever they need; the loop and the policies are the same code in all three.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Protocol

from policies.types import Decision, DemandSample, Observation

__all__ = [
    "Clock",
    "Cluster",
    "Ledger",
    "MetricsSource",
    "NoData",
    "PodReplica",
    "PoolRef",
    "Recorder",
    "ReplicaStatus",
    "StepReport",
    "Usage",
]


@dataclass(frozen=True, slots=True)
class PoolRef:
    """Which pool, and which Deployment it scales."""

    name: str
    namespace: str
    deployment: str
    deployment_namespace: str


@dataclass(frozen=True, slots=True)
class PodReplica:
    """One replica of the Deployment as a pod: who it is, since when its GPU is billed, whether it serves."""

    name: str
    billing_start: dt.datetime | None
    """When the pod got its GPU (scheduled onto a node); None while Pending."""
    ready: bool


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """The Deployment as the cluster reports it.

    `billing_starts` has one entry per replica holding a GPU now; `pods` names them where the cluster
    can (a real Deployment's pods), so a scale-down can choose which replicas go.
    """

    current: int
    ready: int
    billing_starts: tuple[dt.datetime, ...] = ()
    pods: tuple[PodReplica, ...] = ()


@dataclass(frozen=True, slots=True)
class NoData:
    """A metric read that produced nothing usable; never to be read as zero load."""

    reason: str


@dataclass(frozen=True, slots=True)
class Usage:
    """What today has consumed so far (the day in the pool's timezone); None where it is unknown."""

    gpu_hours: float | None
    fallback_usd: float | None


@dataclass(frozen=True, slots=True)
class StepReport:
    """Everything one reconcile step saw and did, for the recorder to fan out (log, Events, status).

    `observation` and `decision` are None when the step could not read the cluster (`error` says why);
    `previous` is the replica count before the step (None when unknown).
    """

    pool: PoolRef
    now: dt.datetime
    generation: int | None
    observation: Observation | None
    decision: Decision | None
    applied: bool
    previous: int | None
    error: str = ""
    dry_run: bool = False


class Clock(Protocol):
    """The time source; a manual clock in tests and the simulator."""

    def now(self) -> dt.datetime:
        """The current moment, timezone-aware."""
        ...


class Cluster(Protocol):
    """Reads and scales the pool's Deployment."""

    def replicas(self, pool: PoolRef) -> ReplicaStatus:
        """Current and ready replicas with their billing starts; raises LookupError if the Deployment is gone."""
        ...

    def scale(self, pool: PoolRef, replicas: int) -> None:
        """Set the Deployment's desired replicas."""
        ...


class MetricsSource(Protocol):
    """Reads demand for a pool."""

    def sample(self, pool: PoolRef, now: dt.datetime) -> DemandSample | NoData:
        """The latest demand reading, or NoData saying why there is none."""
        ...


class Ledger(Protocol):
    """Counts billed GPU time and fallback spend."""

    def usage_today(self, pool: PoolRef, now: dt.datetime) -> Usage:
        """GPU-hours and fallback dollars of the current local day."""
        ...


class Recorder(Protocol):
    """Makes every decision visible: log line, Kubernetes Event, the pool's status."""

    def record(self, step: StepReport) -> None:
        """Report one step, also a failed one; `step.applied` says whether the replicas were changed."""
        ...
