"""What a simulated run takes and gives: the rows' names, the world's settings and one row's outcome.

The names of the policies and offline references in report order (`POLICY_NAMES`, `OFFLINE`), how the
simulated world behaves beyond the pool's spec (`RunSettings`), one row of the report (`PolicyRun`),
and the API's price of requests, with those not served on the GPUs in time (`request_api_usd`,
`not_on_time`), by which a row is SLO-priced. The runs that fill the rows are `controller.sim.runner`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from controller.sim.models import FallbackModel, ReplicaModel, RouteCode
from controller.sim.workload import Workload
from controller.sim.world import DecisionLog
from policies.baselines import BASELINES
from policies.cost import ApiPrice

__all__ = [
    "EBBTIDE",
    "LOWER_BOUND",
    "OFFLINE",
    "OPTIMUM",
    "OPTIMUM_PLAN",
    "POLICY_NAMES",
    "PolicyRun",
    "RunSettings",
    "not_on_time",
    "request_api_usd",
]

EBBTIDE = "ebbtide"
LOWER_BOUND = "lower_bound"
OPTIMUM = "offline_optimum"
OPTIMUM_PLAN = "optimum_plan"
OFFLINE: tuple[str, ...] = (LOWER_BOUND, OPTIMUM)
"""Rows computed offline, with no policy to run."""
POLICY_NAMES: tuple[str, ...] = (EBBTIDE, *(b.name for b in BASELINES), OPTIMUM_PLAN)
"""Report order: Ebbtide first, then the registry's baselines (sorted), then the optimum's plan replayed."""


@dataclass(frozen=True, slots=True)
class RunSettings:
    """How the simulated world behaves, beyond the pool's own spec."""

    replica: ReplicaModel = field(default_factory=ReplicaModel)
    fallback: FallbackModel = field(default_factory=FallbackModel)
    tick_seconds: float = 15.0
    """Control-loop period in simulated time."""
    gpu_cap: int | None = None
    """GPUs available to the pool; replicas beyond stay Pending (None: unlimited)."""
    initial_replicas: int = 0
    """Replicas running (and Ready) when the simulation starts."""
    scrape_fail_every: int = 0
    """Every n-th metrics read fails (0: never), to see the no-data handling at work."""
    slo_ttft_seconds: float = 2.0
    true_work: bool = False
    """Ebbtide's gateway routes on each request's true work, an idealized gateway; by default it routes
    on the work ahead as the shipped gateway estimates it (`estimates`). The baselines (plain vLLM, no
    gateway) are unaffected."""


@dataclass(slots=True)
class PolicyRun:
    """One policy's outcome on one workload."""

    name: str
    requests: int
    fallback_requests: int
    rejected_requests: int
    gpu_hours: float
    gpu_usd: float
    fallback_input_tokens: int
    fallback_output_tokens: int
    fallback_usd: float
    scale_events: int | None
    ttft: np.ndarray | None
    slo_ttft_seconds: float
    total_tokens: int
    log: DecisionLog | None = None
    route: np.ndarray | None = None
    """Per-request route codes (engine.RouteCode), for cost over time."""
    timeline: dict[str, np.ndarray] = field(default_factory=dict)
    lifetimes: tuple[tuple[float, float], ...] = ()
    """(billing start, end) of every replica that held a GPU, in seconds from the start (policy runs)."""
    slo_priced_usd: float | None = None
    """GPU $ plus the fallback's price of every request not served on the GPUs within the SLO: what
    the run costs when each late request is priced as sent to the API (comparable to offline_optimum)."""

    @property
    def total_usd(self) -> float:
        """GPU plus fallback spend."""
        return self.gpu_usd + self.fallback_usd

    @property
    def usd_per_million_tokens(self) -> float:
        """Effective price of 1M tokens served."""
        return self.total_usd / self.total_tokens * 1e6 if self.total_tokens else math.inf

    def ttft_percentile(self, q: float) -> float | None:
        """TTFT percentile in seconds (None without per-request latencies)."""
        if self.ttft is None or self.ttft.size == 0:
            return None
        return float(np.percentile(self.ttft, q))

    @property
    def slo_attainment(self) -> float | None:
        """Share of requests whose first token came within the SLO."""
        if self.ttft is None or self.ttft.size == 0:
            return None
        return float(np.count_nonzero(self.ttft <= self.slo_ttft_seconds)) / self.ttft.size


def request_api_usd(workload: Workload, price: ApiPrice) -> np.ndarray:
    """What the fallback charges for each request of the workload."""
    return np.asarray(
        (workload.input_tokens * price.input_usd_per_million + workload.output_tokens * price.output_usd_per_million)
        / 1e6,
        dtype=np.float64,
    )


def not_on_time(route: np.ndarray, ttft: np.ndarray, slo: float) -> np.ndarray:
    """Requests not served on the GPUs within `slo` (fallback ones included): those ×OPT prices at the API."""
    return np.asarray(~((route == RouteCode.GPU) & (ttft <= slo)))
