"""The pools the gateway serves, their Ready endpoints and providers: the one table the app reads.

Static mode (`--pool FILE --endpoints POOL=HOST:PORT,...`) fills it once; cluster mode (gateway.cluster)
keeps calling `set_pool` as GPUPools, Ready pods and Secrets change, and `remove_pool` when a pool goes.
Both are plain synchronous calls made on the gateway's event loop. Endpoints, provider health and the
in-flight counts survive an update: an update replaces what changed and keeps the rest.

    directory.set_pool(pool, [("vllm-0", "10.0.0.5:8000")], fallback_open=True,
                       starting=[pod_started_at], provider_keys={"openai": "sk-..."})
    directory.mark_synced()     # /readyz answers 200 from now on
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence

from gateway.accounting import GatewayMetrics, PoolMetrics
from gateway.providers import ProviderState
from gateway.upstream import Endpoint
from policies.overflow import INITIAL_COMPLETION_TOKENS, OUTPUT_EWMA_WEIGHT, output_margin, waiting_floor
from policies.spec import GPUPool, GPUPoolSpec

__all__ = ["PoolDirectory", "PoolKey", "PoolState", "WaitingWork"]

PoolKey = tuple[str, str]
"""(namespace, name) of a GPUPool."""

_LOG = logging.getLogger("ebbtide.gateway")


class WaitingWork:
    """One lane's streamed GPU requests that have not had their first token yet, oldest first.

    Their estimated work is still ahead on the replicas, but for what the one that has waited longest
    may have prefilled: `floor` (`policies.overflow.waiting_floor`) is what the lane's backlog cannot be
    below. A non-streamed answer arrives whole, so the gateway cannot tell when it started; those are
    not counted, which keeps the floor a floor.
    """

    __slots__ = ("_items", "_next", "_order", "work")

    def __init__(self) -> None:
        self._items: dict[int, tuple[float, float]] = {}
        self._order: deque[int] = deque()
        """Tokens in the order they were added; those done are dropped from the front as `floor` meets them."""
        self._next = 0
        self.work = 0.0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, work: float, prefill: float) -> int:
        """A request of `work` tokens, `prefill` of them its own prefill, waits; returns its token."""
        token = self._next
        self._next += 1
        self._items[token] = (work, prefill)
        self._order.append(token)
        self.work += work
        return token

    def done(self, token: int) -> None:
        """The request had its first token, or ended without one (idempotent)."""
        item = self._items.pop(token, None)
        if item is not None:
            self.work = self.work - item[0] if self._items else 0.0
            if not self._items:
                self._order.clear()

    def floor(self) -> float:
        """Tokens of work these requests still have ahead, at least."""
        order, items = self._order, self._items
        while order and order[0] not in items:
            order.popleft()
        if not order:
            return 0.0
        return waiting_floor(self.work, items[order[0]][1])


class PoolState:
    """One pool as the gateway routes it: spec, endpoints, providers, in-flight work, hold and series."""

    def __init__(self, pool: GPUPool, metrics: PoolMetrics) -> None:
        self.key: PoolKey = (pool.metadata.namespace, pool.metadata.name)
        self.pool = pool
        self.spec: GPUPoolSpec = pool.spec
        self.metrics = metrics
        self.endpoints: dict[str, Endpoint] = {}
        self.probe_readiness = False
        self.providers: list[ProviderState] = []
        self.fallback_open = True
        self.starting_etas: tuple[float, ...] = ()
        self.work_normal = 0.0
        """Work of this gateway's in-flight GPU requests in the normal lane, estimated at dispatch in tokens at
        `replicaTokensPerSecond` (`Demand.work_tokens`: with the replica's prefill and decode speeds, its
        replica-seconds at that rate)."""
        self.work_late = 0.0
        self.requests_normal = 0
        """This gateway's GPU requests in flight in the normal lane (for `margin`)."""
        self.backlog_normal = 0.0
        """Of that work, what is not served yet: drained at the Ready replicas' throughput as time passes,
        normal lane first, as the simulator's fluid lanes drain (never more than the work in flight)."""
        self.backlog_late = 0.0
        self.waiting = (WaitingWork(), WaitingWork())
        """The normal and the late lane's requests still waiting for their first token: the backlog is
        never below what they have ahead (a low estimate of the work ahead corrects itself)."""
        self._backlog_at = time.monotonic()
        self.mean_completion = INITIAL_COMPLETION_TOKENS
        self.var_completion = 0.0
        """The moving variance of reported outputs, with the mean's weight (for `margin`)."""
        self.mean_request = self.spec.demand.work_tokens(INITIAL_COMPLETION_TOKENS, INITIAL_COMPLETION_TOKENS)
        self.held = 0
        self.ready_event = asyncio.Event()
        self._created = time.monotonic()
        metrics.watch_work_ahead(self.work_ahead_seconds)

    @property
    def name(self) -> str:
        """`namespace/name`, for messages."""
        return f"{self.key[0]}/{self.key[1]}"

    @property
    def served_model(self) -> str | None:
        """The model name the replicas serve."""
        return self.spec.served_model

    def routable(self, now: float) -> list[Endpoint]:
        """Endpoints that take a new request now."""
        return [e for e in self.endpoints.values() if e.routable(now)]

    def refresh_ready(self, now: float | None = None) -> None:
        """Wake held requests when an endpoint is routable (and stop waking them when none is)."""
        if any(e.routable(time.monotonic() if now is None else now) for e in self.endpoints.values()):
            self.ready_event.set()
        else:
            self.ready_event.clear()

    def drain(self, now: float, ready: int) -> None:
        """Serve the backlog from the last update until `now` at `ready` replicas' throughput; neither lane
        falls below what its requests waiting for a first token have ahead."""
        elapsed = now - self._backlog_at
        self._backlog_at = now
        if elapsed > 0 and ready > 0:
            capacity = elapsed * ready * self.spec.demand.replica_tokens_per_second
            if capacity < self.backlog_normal:
                self.backlog_normal -= capacity
            else:
                capacity -= self.backlog_normal
                self.backlog_normal = 0.0
                self.backlog_late = max(self.backlog_late - capacity, 0.0)
        self.backlog_normal = max(self.backlog_normal, self.waiting[0].floor())
        self.backlog_late = max(self.backlog_late, self.waiting[1].floor())

    def add_work(self, work: float, late: bool, now: float, *, prefill: float | None = None) -> int | None:
        """A GPU request of `work` tokens was sent, in the late lane or not. With `prefill` (the tokens of
        its own prefill in the same units; a streamed request, whose first token the gateway sees) it
        also waits until `first_token` with the token returned."""
        self.drain(now, len(self.routable(now)))
        if late:
            self.work_late += work
            self.backlog_late += work
        else:
            self.work_normal += work
            self.backlog_normal += work
            self.requests_normal += 1
        return None if prefill is None else self.waiting[1 if late else 0].add(work, prefill)

    def first_token(self, late: bool, token: int | None) -> None:
        """The request `add_work` gave `token` has its first token: it no longer waits."""
        if token is not None:
            self.waiting[1 if late else 0].done(token)

    def remove_work(self, work: float, late: bool, token: int | None = None) -> None:
        """A GPU request ended: its estimate leaves the work in flight (and the waiting, if it never had a
        first token), and the backlog is capped by what is left in flight."""
        self.first_token(late, token)
        if late:
            self.work_late = max(self.work_late - work, 0.0)
            self.backlog_late = min(self.backlog_late, self.work_late)
        else:
            self.requests_normal = max(self.requests_normal - 1, 0)
            self.work_normal = max(self.work_normal - work, 0.0)
            self.backlog_normal = min(self.backlog_normal, self.work_normal)

    def work_ahead_seconds(self, late: bool, now: float | None = None) -> float:
        """The wait a new request would expect now in the normal lane, or behind both lanes (`late`): the
        work ahead as routing sees it over the Ready replicas' throughput; infinite with none Ready."""
        now = time.monotonic() if now is None else now
        ready = len(self.routable(now))
        self.drain(now, ready)
        if ready == 0:
            return float("inf")
        ahead = self.normal_ahead() + (self.backlog_late if late else 0.0)
        return ahead / (ready * self.spec.demand.replica_tokens_per_second)

    def normal_ahead(self) -> float:
        """Tokens of work ahead in the normal lane as routing reads it: what is left of this gateway's, the
        other clients' (`others_requests` at the mean request), and a margin for the spread of all their
        outputs (`output_margin`)."""
        others = self.others_requests()
        margin = output_margin(self.requests_normal + others, self.var_completion)
        return self.backlog_normal + others * self.mean_request + self.spec.demand.work_tokens(0.0, margin)

    def others_requests(self) -> int:
        """Requests on the engines that are not this gateway's, from the last scrapes."""
        return sum(e.others for e in self.endpoints.values() if e.ready)

    def fallback_usable(self, now: float) -> bool:
        """The fallback is open (status) and at least one provider may take a request now."""
        return self.fallback_open and any(p.available(now) for p in self.providers)

    def ready_eta(self, now: float, controller_tick: float) -> float:
        """When a replica is expected to be Ready (monotonic seconds): the earliest starting one's cold start,
        or a fresh scale-up (the controller sees the held request within a tick) when none is starting."""
        if self.starting_etas:
            return max(min(self.starting_etas), now)
        if self.probe_readiness:
            # Static addresses that do not answer yet: starting since they were first seen down.
            downs = [e.down_since for e in self.endpoints.values() if e.down_since is not None]
            start = min(downs) if downs else self._created
            return max(start + self.spec.cold_start_seconds, now)
        return now + controller_tick + self.spec.cold_start_seconds

    def learn(self, prompt_tokens: int, completion_tokens: int) -> None:
        """Fold one GPU request's reported usage into the per-request work estimate."""
        deviation = completion_tokens - self.mean_completion
        self.mean_completion += OUTPUT_EWMA_WEIGHT * deviation
        self.var_completion += OUTPUT_EWMA_WEIGHT * (deviation * deviation - self.var_completion)
        work = self.spec.demand.work_tokens(prompt_tokens, completion_tokens)
        self.mean_request += OUTPUT_EWMA_WEIGHT * (work - self.mean_request)


class PoolDirectory:
    """Every pool by key and by model name."""

    def __init__(self, metrics: GatewayMetrics | None = None) -> None:
        self.metrics = metrics or GatewayMetrics()
        self.pools: dict[PoolKey, PoolState] = {}
        self.by_model: dict[str, PoolState] = {}
        self._synced = False

    @property
    def synced(self) -> bool:
        """Whether the directory holds the configured pools (readiness)."""
        return self._synced

    def mark_synced(self) -> None:
        """Say the directory is filled: /readyz answers 200."""
        self._synced = True

    def set_pool(
        self,
        pool: GPUPool,
        endpoints: Iterable[tuple[str, str]],
        *,
        fallback_open: bool = True,
        starting: Sequence[dt.datetime] = (),
        provider_keys: Mapping[str, str | None] | None = None,
        probe_readiness: bool = False,
    ) -> list[str]:
        """Add or update a pool; return problems (model names another pool already claims).

        `endpoints` are (pod name, "ip:port") of the Ready pods (controller.kube.pods.ready_endpoints);
        `starting` when each not-yet-Ready pod started (its cold start counts from there); with
        `probe_readiness` (static mode) an endpoint takes requests only while its /metrics answers.
        """
        key = (pool.metadata.namespace, pool.metadata.name)
        state = self.pools.get(key)
        if state is None:
            state = PoolState(pool, self.metrics.pool(*key))
            self.pools[key] = state
        state.pool, state.spec = pool, pool.spec
        state.fallback_open = fallback_open
        state.probe_readiness = probe_readiness
        now_wall, now = dt.datetime.now(dt.UTC), time.monotonic()
        cold = pool.spec.cold_start_seconds
        state.starting_etas = tuple(now + (s - now_wall).total_seconds() + cold for s in starting)
        self._set_endpoints(state, endpoints)
        self._set_providers(state, provider_keys or {})
        state.refresh_ready(now)
        return self._index_models()

    def remove_pool(self, namespace: str, name: str) -> None:
        """Forget a pool (its GPUPool was deleted); requests in flight finish on what they hold."""
        state = self.pools.pop((namespace, name), None)
        if state is not None:
            state.metrics.forget_work_ahead()
            state.endpoints.clear()
            state.ready_event.set()  # held requests wake, find nothing Ready and move on
            self._index_models()

    def _set_endpoints(self, state: PoolState, endpoints: Iterable[tuple[str, str]]) -> None:
        path = state.spec.metrics.path
        fresh: dict[str, Endpoint] = {}
        for name, address in endpoints:
            known = state.endpoints.get(address)
            if known is None:
                known = Endpoint(name, address, path, ready=not state.probe_readiness)
            else:
                known.name = name
                if not state.probe_readiness:
                    known.ready = True
            fresh[address] = known
        state.endpoints = fresh

    def _set_providers(self, state: PoolState, keys: Mapping[str, str | None]) -> None:
        known = {p.name: p for p in state.providers}
        fresh: list[ProviderState] = []
        for spec in state.spec.fallback.providers:
            old = known.get(spec.name)
            key = keys.get(spec.name)
            fresh.append(old.update(spec, key) if old is not None else ProviderState(spec, key))
        state.providers = fresh

    def _index_models(self) -> list[str]:
        problems: list[str] = []
        index: dict[str, PoolState] = {}
        for key in sorted(self.pools):
            state = self.pools[key]
            for model in state.spec.models or ([state.served_model] if state.served_model else []):
                owner = index.get(model)
                if owner is not None:
                    problems.append(f"model {model!r} of pool {state.name} is already served by pool {owner.name}")
                    continue
                index[model] = state
        for problem in problems:
            _LOG.warning(problem)
        self.by_model = index
        return problems
