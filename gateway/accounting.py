"""The gateway's Prometheus series (names from controller/demand/series.py) and per-request accounting.

Children of every labelled series are looked up once per pool and kept, so a request only increments
counters. Labels carry pool, route, provider and token kind, never a prompt, a completion or a key.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from controller.demand import series
from controller.demand.series import RouteLabel, TokenKind, TokenSource
from gateway.requestlog import RequestLog

__all__ = ["GatewayMetrics", "PoolMetrics", "usd"]

_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
_LANES = {"gpu": "gpu", "fallback": "fallback"}


def usd(prompt_tokens: int, completion_tokens: int, input_per_million: float, output_per_million: float) -> float:
    """What a provider bills for one request's tokens."""
    return (prompt_tokens * input_per_million + completion_tokens * output_per_million) / 1e6


class GatewayMetrics:
    """Every series the gateway exports, in its own registry (served on /metrics)."""

    def __init__(self) -> None:
        self.request_log = RequestLog()
        """The finished requests of the last hour, for the controller's replay (GET /ebbtide/requests)."""
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        pool = list(series.POOL_LABELS)
        self.requests = Counter(
            series.REQUESTS, "Requests finished, by where they went.", [*pool, "route"], registry=reg
        )
        self.tokens = Counter(
            series.TOKENS, "Tokens of finished requests.", [*pool, "route", "kind", "source"], registry=reg
        )
        self.fallback_usd = Counter(
            series.FALLBACK_USD, "Dollars spent at the fallback providers.", [*pool, "provider"], registry=reg
        )
        self.saturation_requests = Counter(
            series.SATURATION_REQUESTS, "Requests sent to the fallback because the Ready replicas were too busy.",
            pool, registry=reg,
        )  # fmt: skip
        self.saturation_tokens = Counter(
            series.SATURATION_TOKENS, "Tokens of requests sent to the fallback because the replicas were too busy.",
            [*pool, "kind"], registry=reg,
        )  # fmt: skip
        self.beyond_objective_tokens = Counter(
            series.BEYOND_OBJECTIVE_TOKENS,
            "Tokens of requests sent to the fallback because their own prefill is longer than the objective.",
            [*pool, "kind"], registry=reg,
        )  # fmt: skip
        self.in_flight = Gauge(series.IN_FLIGHT, "Requests being served now.", [*pool, "route"], registry=reg)
        self.held = Gauge(series.HELD, "Requests held now, waiting for a replica to become Ready.", pool, registry=reg)
        self.work_ahead = Gauge(
            series.WORK_AHEAD,
            "Queue wait a new request would expect now, from the gateway's estimate of the work ahead (normal: "
            "in the normal lane; late: behind both lanes) over the Ready replicas' throughput; +Inf with none Ready.",
            [*pool, "lane"], registry=reg,
        )  # fmt: skip
        self.added_latency = Histogram(
            series.ADDED_LATENCY, "Time the gateway adds before the upstream sees the request.",
            pool, buckets=_LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self.provider_failures = Counter(
            "ebbtide_gateway_provider_failures_total",
            "Failed attempts at a fallback provider, by reason (connect, timeout, status code, stream).",
            [*pool, "provider", "reason"], registry=reg,
        )  # fmt: skip
        self.invalid_requests = Counter(
            "ebbtide_gateway_invalid_requests_total",
            "Requests refused before routing (bad JSON, unknown model, too large, unauthorised), by status.",
            ["status"], registry=reg,
        )  # fmt: skip

    def pool(self, namespace: str, name: str) -> PoolMetrics:
        """The series children of one pool."""
        return PoolMetrics(self, namespace, name)

    def render(self) -> bytes:
        """The text exposition."""
        return generate_latest(self.registry)


class PoolMetrics:
    """One pool's series children, created once."""

    __slots__ = (
        "_metrics",
        "_tokens",
        "_usd",
        "added_latency",
        "beyond_objective_tokens",
        "held",
        "in_flight",
        "labels",
        "requests",
        "saturation_requests",
        "saturation_tokens",
    )

    def __init__(self, metrics: GatewayMetrics, namespace: str, name: str) -> None:
        self._metrics = metrics
        self.labels = (namespace, name)
        self.requests = {route: metrics.requests.labels(namespace, name, route.value) for route in RouteLabel}
        self.in_flight = {lane: metrics.in_flight.labels(namespace, name, lane) for lane in _LANES}
        self.held = metrics.held.labels(namespace, name)
        self.added_latency = metrics.added_latency.labels(namespace, name)
        self.saturation_requests = metrics.saturation_requests.labels(namespace, name)
        self.saturation_tokens = {
            kind: metrics.saturation_tokens.labels(namespace, name, kind.value) for kind in TokenKind
        }
        self.beyond_objective_tokens = {
            kind: metrics.beyond_objective_tokens.labels(namespace, name, kind.value) for kind in TokenKind
        }
        self._tokens: dict[tuple[RouteLabel, TokenSource], tuple[Counter, Counter]] = {}
        self._usd: dict[str, Counter] = {}

    def finished(
        self,
        route: RouteLabel,
        prompt_tokens: int,
        completion_tokens: int,
        *,
        estimated: bool,
        saturated: bool = False,
        beyond_objective: bool = False,
        provider: str | None = None,
        dollars: float = 0.0,
        arrived_at: float | None = None,
    ) -> None:
        """Count one finished request: its route, tokens (reported or estimated), saturation and spend;
        with `arrived_at` (epoch seconds) it is also logged for the controller's replay. `beyond_objective`:
        a request sent away because no replica could serve it on time (its tokens are no GPU demand)."""
        self.requests[route].inc()
        if arrived_at is not None:
            self._metrics.request_log.record(*self.labels, arrived_at, prompt_tokens, completion_tokens)
        source = TokenSource.ESTIMATED if estimated else TokenSource.REPORTED
        pair = self._tokens.get((route, source))
        if pair is None:
            namespace, name = self.labels
            tokens = self._metrics.tokens
            pair = (
                tokens.labels(namespace, name, route.value, TokenKind.PROMPT.value, source.value),
                tokens.labels(namespace, name, route.value, TokenKind.COMPLETION.value, source.value),
            )
            self._tokens[(route, source)] = pair
        if prompt_tokens:
            pair[0].inc(prompt_tokens)
        if completion_tokens:
            pair[1].inc(completion_tokens)
        if saturated:
            self.saturation_requests.inc()
            self.saturation_tokens[TokenKind.PROMPT].inc(prompt_tokens)
            self.saturation_tokens[TokenKind.COMPLETION].inc(completion_tokens)
        if beyond_objective:
            self.beyond_objective_tokens[TokenKind.PROMPT].inc(prompt_tokens)
            self.beyond_objective_tokens[TokenKind.COMPLETION].inc(completion_tokens)
        if provider is not None:
            counter = self._usd.get(provider)
            if counter is None:
                counter = self._usd[provider] = self._metrics.fallback_usd.labels(*self.labels, provider)
            if dollars > 0:
                counter.inc(dollars)

    def watch_work_ahead(self, wait: Callable[[bool], float]) -> None:
        """Read the work ahead at each scrape: `wait(late)` is the expected wait in seconds."""
        namespace, name = self.labels
        gauge = self._metrics.work_ahead
        gauge.labels(namespace, name, "normal").set_function(lambda: wait(False))
        gauge.labels(namespace, name, "late").set_function(lambda: wait(True))

    def forget_work_ahead(self) -> None:
        """The pool is gone: its work-ahead series go too (they would read a pool no longer served)."""
        for lane in ("normal", "late"):
            self._metrics.work_ahead.remove(*self.labels, lane)

    def provider_failed(self, provider: str, reason: str) -> None:
        """Count a failed attempt at a provider."""
        self._metrics.provider_failures.labels(*self.labels, provider, reason).inc()
