"""Per-pool Prometheus series of the controller: what the dashboard shows next to the gateway's counters.

`MetricsRecorder` wraps the daemon's Recorder: every step updates the pool's gauges and counts its
decision by reason, then goes on to the inner recorder unchanged. Only the replica that may act (the
leader, or any replica with election off) exports pool series: a standby's /metrics has none (checked at
each scrape), so a query summing over the controller's pods never counts a pool twice and a replica
that lost the lease never shows stale values. A pool without usable demand data has
no demand series (no data is not zero); a deleted pool's series go with it (`forget`).

The names live in one table, `POOL_SERIES`, which the chart's dashboard test reads.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from controller.ports import PoolRef, StepReport
from policies.replay import cheapest_count, replay_count
from policies.spec import GPUPoolSpec

__all__ = [
    "CURRENT_REPLICAS",
    "DECISIONS",
    "DEMAND_REPLICAS",
    "DESIRED_REPLICAS",
    "FALLBACK_USD_TODAY",
    "GPU_HOURS_TODAY",
    "OFFERED_TOKENS",
    "POOL_SERIES",
    "QUEUE",
    "READY_REPLICAS",
    "REPLAY_REPLICAS",
    "SCHEDULE_FLOOR",
    "WINDOW_OPEN",
    "ForgettingRecorder",
    "MetricsRecorder",
    "PoolMetrics",
]

DESIRED_REPLICAS = "ebbtide_pool_desired_replicas"
"""Gauge {namespace, pool}: the replicas the last decision asked for."""
CURRENT_REPLICAS = "ebbtide_pool_current_replicas"
"""Gauge {namespace, pool}: the target Deployment's pods now (Ready or starting)."""
READY_REPLICAS = "ebbtide_pool_ready_replicas"
"""Gauge {namespace, pool}: the Ready ones among them."""
DEMAND_REPLICAS = "ebbtide_pool_demand_replicas"
"""Gauge {namespace, pool}: replicas the demand alone calls for (queue over targetQueuePerReplica, offered
tokens/s over replicaTokensPerSecond, the larger), before schedule, cost and limits; absent without data."""
REPLAY_REPLICAS = "ebbtide_pool_replay_replicas"
"""Gauge {namespace, pool}: the count the replay of the last hour found cheapest (`policies.replay`); absent
without a replay."""
QUEUE = "ebbtide_pool_queue_requests"
"""Gauge {namespace, pool}: vLLM waiting + running, plus requests in flight at the fallback; absent without data."""
OFFERED_TOKENS = "ebbtide_pool_offered_tokens_per_second"
"""Gauge {namespace, pool}: offered prompt + completion tokens per second (all routes); absent when unknown."""
SCHEDULE_FLOOR = "ebbtide_pool_schedule_floor_replicas"
"""Gauge {namespace, pool}: the floor the schedule sets now (window minimum, pre-warm, keepWarm)."""
WINDOW_OPEN = "ebbtide_pool_window_open"
"""Gauge {namespace, pool, window}: 1 while that window is the pool's active one, else 0."""
GPU_HOURS_TODAY = "ebbtide_pool_gpu_hours_today"
"""Gauge {namespace, pool}: GPU-hours billed today (the pool's timezone); absent when unknown."""
FALLBACK_USD_TODAY = "ebbtide_pool_fallback_usd_today"
"""Gauge {namespace, pool}: dollars spent at the fallback providers today; absent when unknown."""
DECISIONS = "ebbtide_pool_decisions_total"
"""Counter {namespace, pool, reason}: decisions taken, by reason (`read-error` when none could be)."""

POOL_SERIES = (
    DESIRED_REPLICAS,
    CURRENT_REPLICAS,
    READY_REPLICAS,
    DEMAND_REPLICAS,
    REPLAY_REPLICAS,
    QUEUE,
    OFFERED_TOKENS,
    SCHEDULE_FLOOR,
    WINDOW_OPEN,
    GPU_HOURS_TODAY,
    FALLBACK_USD_TODAY,
    DECISIONS,
)
"""Every per-pool series the controller exports."""

_READ_ERROR = "read-error"
_log = logging.getLogger("ebbtide.poolmetrics")


class ForgettingRecorder(Protocol):
    """The daemon's recorder: the Recorder port plus `forget` for a deleted pool."""

    def record(self, step: StepReport) -> None:
        """Report one step."""
        ...

    def forget(self, pool: PoolRef) -> None:
        """Drop what is remembered of a deleted pool."""
        ...


class PoolMetrics:
    """The per-pool gauges and the decisions counter, in one registry."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY, *, leading: Callable[[], bool]) -> None:
        labels = ("namespace", "pool")
        # Unregistered metrics, exported through one collector that asks `leading` at each scrape.
        self._leading = leading
        self._gauges = {
            name: Gauge(name, _doc(name), labels, registry=None)
            for name in (
                DESIRED_REPLICAS,
                CURRENT_REPLICAS,
                READY_REPLICAS,
                DEMAND_REPLICAS,
                REPLAY_REPLICAS,
                QUEUE,
                OFFERED_TOKENS,
                SCHEDULE_FLOOR,
                GPU_HOURS_TODAY,
                FALLBACK_USD_TODAY,
            )
        }
        self._window = Gauge(WINDOW_OPEN, _doc(WINDOW_OPEN), (*labels, "window"), registry=None)
        # prometheus_client appends _total to a counter's name itself.
        self._decisions = Counter(DECISIONS.removesuffix("_total"), _doc(DECISIONS), (*labels, "reason"), registry=None)
        self._windows: dict[tuple[str, str], set[str]] = {}
        self._reasons: dict[tuple[str, str], set[str]] = {}
        if registry is not None:
            registry.register(self)

    def collect(self) -> Iterator[Any]:
        """The prometheus_client collector protocol: every pool series, only while this replica leads."""
        try:
            leading = self._leading()
        except Exception:
            _log.exception("asking whether this replica leads failed; exporting no pool series")
            leading = False
        if not leading:
            return
        for metric in (*self._gauges.values(), self._window, self._decisions):
            yield from metric.collect()

    def describe(self) -> list[Any]:
        """No fixed description: the registry then does not call collect() at registration."""
        return []

    def observe(self, step: StepReport, spec: GPUPoolSpec | None, window: str | None) -> None:
        """Set the pool's series from one step (and the pool's spec and open window, when known)."""
        key = (step.pool.namespace, step.pool.name)
        reason = step.decision.reason.value if step.decision is not None else _READ_ERROR
        self._decisions.labels(*key, reason).inc()
        self._reasons.setdefault(key, set()).add(reason)
        decision, observation = step.decision, step.observation
        self._set(DESIRED_REPLICAS, key, decision.desired_replicas if decision is not None else None)
        self._set(SCHEDULE_FLOOR, key, decision.limits.floor if decision is not None else None)
        self._set(CURRENT_REPLICAS, key, observation.current_replicas if observation is not None else None)
        self._set(READY_REPLICAS, key, observation.ready_replicas if observation is not None else None)
        self._set(GPU_HOURS_TODAY, key, observation.gpu_hours_today if observation is not None else None)
        self._set(FALLBACK_USD_TODAY, key, observation.fallback_usd_today if observation is not None else None)
        demand = observation.demand if observation is not None else None
        self._set(QUEUE, key, demand.queue if demand is not None else None)
        tokens = None
        if demand is not None and demand.input_tokens_per_second is not None:
            tokens = demand.input_tokens_per_second + (demand.output_tokens_per_second or 0.0)
        self._set(OFFERED_TOKENS, key, tokens)
        wanted = None
        if demand is not None and spec is not None:
            wanted = math.ceil(demand.queue / spec.demand.target_queue_per_replica - 1e-9)
            if tokens is not None:
                wanted = max(wanted, math.ceil(tokens / spec.demand.replica_tokens_per_second - 1e-9))
        self._set(DEMAND_REPLICAS, key, wanted)
        replay = None
        if demand is not None and demand.replay_usd:
            costs = demand.replay_usd
            replay = replay_count(spec, costs) if spec is not None else cheapest_count(costs)
        self._set(REPLAY_REPLICAS, key, replay)
        if spec is not None:
            names = {w.name for w in spec.schedule.windows}
            for gone in self._windows.get(key, set()) - names:
                self._remove(self._window, (*key, gone))
            self._windows[key] = names
            for name in names:
                self._window.labels(*key, name).set(1.0 if name == window else 0.0)

    def forget(self, namespace: str, name: str) -> None:
        """Remove every series of one pool."""
        key = (namespace, name)
        for gauge in self._gauges.values():
            self._remove(gauge, key)
        for window in self._windows.pop(key, set()):
            self._remove(self._window, (*key, window))
        for reason in self._reasons.pop(key, set()):
            self._remove(self._decisions, (*key, reason))

    def _set(self, name: str, key: tuple[str, str], value: float | None) -> None:
        gauge = self._gauges[name]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            self._remove(gauge, key)
        else:
            gauge.labels(*key).set(float(value))

    @staticmethod
    def _remove(metric: Gauge | Counter, labels: tuple[str, ...]) -> None:
        with contextlib.suppress(KeyError):  # never set: nothing to remove
            metric.remove(*labels)


class MetricsRecorder:
    """A Recorder that exports each step as pool series, then hands it to the daemon's recorder."""

    def __init__(
        self,
        inner: ForgettingRecorder,
        metrics: PoolMetrics,
        *,
        spec: Callable[[PoolRef], GPUPoolSpec | None],
        window: Callable[[PoolRef, dt.datetime], str | None],
    ) -> None:
        self._inner = inner
        self._metrics = metrics
        self._spec = spec
        self._window = window

    def record(self, step: StepReport) -> None:
        """Export the step, then record it with the inner recorder; a failure to export never stops it."""
        try:
            spec = self._spec(step.pool)
            window = self._window(step.pool, step.now) if spec is not None else None
            self._metrics.observe(step, spec, window)
        except Exception:
            _log.exception("exporting the metrics of %s/%s failed", step.pool.namespace, step.pool.name)
        self._inner.record(step)

    def forget(self, pool: PoolRef) -> None:
        """Drop a deleted pool's series and the inner recorder's memory of it."""
        self._metrics.forget(pool.namespace, pool.name)
        self._inner.forget(pool)


def _doc(name: str) -> str:
    docs = {
        DESIRED_REPLICAS: "Replicas the last decision asked for",
        CURRENT_REPLICAS: "Pods of the target Deployment now (Ready or starting)",
        READY_REPLICAS: "Ready pods of the target Deployment",
        DEMAND_REPLICAS: "Replicas the demand alone calls for, before schedule, cost and limits",
        REPLAY_REPLICAS: "Replicas that would have cost least through the last hour, replayed",
        QUEUE: "vLLM waiting + running, plus requests in flight at the fallback",
        OFFERED_TOKENS: (
            "Offered prompt + completion tokens per second, all routes (less prompts too long for the objective)"
        ),
        SCHEDULE_FLOOR: "Replicas the schedule requires now (window minimum, pre-warm, keepWarm)",
        WINDOW_OPEN: "1 while the window is the pool's active one",
        GPU_HOURS_TODAY: "GPU-hours billed today, in the pool's timezone",
        FALLBACK_USD_TODAY: "Dollars spent at the fallback providers today",
        DECISIONS: "Decisions taken, by reason",
    }
    return docs[name]
