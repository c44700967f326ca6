"""Source `prometheus`: the engines' signals from a Prometheus server's HTTP API, with the pool's PromQL.

Each signal's query must give one series; the `pods` query gives one series per pod the server has
fresh samples of, and a Ready pod missing there makes the read no data (aggregate.py), as an
unreadable pod does for the `pods` source: its series leaving the sums would look like a shorter
queue. An empty vector, NaN or infinity, or a sample older than the pool's
`metricMaxAgeSeconds` is no data, never zero. Staleness is asked of the server with the query API's
`lookback_delta` (Prometheus >= 2.43; older servers ignore it and need `--query.lookback-delta` set at
most to the pool's max age), and the evaluation time the server reports is checked against the clock.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections.abc import Callable, Mapping
from string import Template
from typing import Any, ClassVar

import httpx

from controller.demand.aggregate import EngineTotals
from controller.ports import NoData, PoolRef
from policies.spec import PrometheusQueries

__all__ = ["PrometheusSource", "render_queries"]

_REQUIRED = ("waiting", "running")
_OPTIONAL = ("kv_cache_usage", "prompt_tokens_per_second", "generation_tokens_per_second")
_PODS = "pods"


def render_queries(queries: PrometheusQueries, pool: PoolRef) -> dict[str, str | None]:
    """The pool's PromQL with `$namespace`, `$deployment` and `$pool` filled in (other `$` left alone)."""
    values = {"namespace": pool.deployment_namespace, "deployment": pool.deployment, "pool": pool.name}
    out: dict[str, str | None] = {}
    for name in (*_REQUIRED, *_OPTIONAL, _PODS):
        text: str | None = getattr(queries, name)
        out[name] = Template(text).safe_substitute(values) if text else None
    return out


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class PrometheusSource:
    """Runs the pool's queries concurrently, each within `timeout`; returns EngineTotals or NoData."""

    kind: ClassVar[str] = "prometheus"

    def __init__(
        self,
        url: str,
        queries: Mapping[str, str | None],
        *,
        timeout: float,
        max_age_seconds: float,
        bearer_token: str | None = None,
        clock: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        self.endpoint = url.rstrip("/") + "/api/v1/query"
        self.queries = dict(queries)
        self.timeout = timeout
        self.max_age_seconds = max_age_seconds
        self.headers = {"Authorization": f"Bearer {bearer_token}"} if bearer_token else {}
        self.clock = clock

    async def _query(self, http: httpx.AsyncClient, name: str, promql: str) -> Any:
        """The `data` of one query's answer, or NoData on any failure."""
        params = {"query": promql, "lookback_delta": f"{self.max_age_seconds:g}s"}
        try:
            response = await asyncio.wait_for(
                http.get(self.endpoint, params=params, headers=self.headers, timeout=self.timeout), self.timeout
            )
        except TimeoutError:
            return NoData(f"prometheus query {name} timed out after {self.timeout:g}s")
        except (httpx.HTTPError, httpx.InvalidURL) as err:
            return NoData(f"prometheus query {name} failed: {type(err).__name__}: {err}")
        try:
            body: Any = response.json()
        except ValueError:
            return NoData(f"prometheus query {name}: HTTP {response.status_code}, not JSON")
        if response.status_code != httpx.codes.OK or not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else None
            return NoData(f"prometheus query {name}: HTTP {response.status_code}: {error or 'no success status'}")
        return body.get("data")

    async def read(self, http: httpx.AsyncClient) -> EngineTotals | NoData:
        """Every query at once; the required ones must give a fresh finite value."""
        names = [n for n, q in self.queries.items() if q]
        for required in _REQUIRED:
            if required not in names:
                return NoData(f"prometheus query {required} is not configured")
        answers = await asyncio.gather(*(self._query(http, n, self.queries[n] or "") for n in names))
        got: dict[str, float | None] = {}
        evaluated: list[float] = []
        pods_answer: Any = None
        for name, data in zip(names, answers, strict=True):
            if isinstance(data, NoData):
                return data
            if name == _PODS:
                pods_answer = data  # judged once the signals are known good and fresh
                continue
            result = _value(name, data)
            if isinstance(result, NoData):
                return result
            if result is None:
                if name in _REQUIRED:
                    return NoData(f"prometheus query {name} returned an empty vector")
                got[name] = None  # an optional signal nobody exports: unknown
                continue
            value, at = result
            if not math.isfinite(value):
                if name in _REQUIRED:
                    return NoData(f"prometheus query {name} returned {value}")
                got[name] = None
                continue
            got[name] = value
            evaluated.append(at)
        oldest = dt.datetime.fromtimestamp(min(evaluated), dt.UTC)
        age = (self.clock() - oldest).total_seconds()
        if age > self.max_age_seconds:
            return NoData(
                f"prometheus answered for {oldest.isoformat()}, {age:.0f}s old (max {self.max_age_seconds:g}s)"
            )
        waiting, running = got["waiting"], got["running"]
        assert waiting is not None and running is not None  # required above
        if waiting < 0 or running < 0:
            return NoData(f"prometheus queue values negative (waiting {waiting}, running {running})")
        pods = None if pods_answer is None else _pod_names(pods_answer)
        if isinstance(pods, NoData):
            return pods
        return EngineTotals(
            waiting=waiting,
            running=running,
            kv_cache_usage=got.get("kv_cache_usage"),
            prompt_tokens_per_second=got.get("prompt_tokens_per_second"),
            generation_tokens_per_second=got.get("generation_tokens_per_second"),
            observed_at=oldest,
            pods=pods,
        )


def _pod_names(data: Any) -> frozenset[str] | NoData:
    """The `pod` label of each series of the `pods` query (an empty vector: no pod has fresh series)."""
    if not isinstance(data, dict) or data.get("resultType") != "vector" or not isinstance(data.get("result"), list):
        return NoData("prometheus query pods did not return an instant vector")
    names: set[str] = set()
    for series in data["result"]:
        labels = series.get("metric") if isinstance(series, dict) else None
        name = labels.get("pod") if isinstance(labels, dict) else None
        if not isinstance(name, str) or not name:
            return NoData("prometheus query pods returned a series without a `pod` label (use count by (pod))")
        names.add(name)
    return frozenset(names)


def _value(name: str, data: Any) -> tuple[float, float] | NoData | None:
    """The one sample of an instant query's data, None when empty, NoData for anything else."""
    if not isinstance(data, dict):
        return NoData(f"prometheus query {name}: no data section")
    kind, result = data.get("resultType"), data.get("result")
    pair: Any
    if kind == "vector" and isinstance(result, list):
        if not result:
            return None
        if len(result) > 1:
            return NoData(f"prometheus query {name} returned {len(result)} series; it must return one (sum() it)")
        pair = result[0].get("value") if isinstance(result[0], dict) else None
    elif kind == "scalar":
        pair = result
    else:
        return NoData(f"prometheus query {name} returned a {kind}, not an instant vector")
    try:
        at, text = pair
        return float(text), float(at)
    except (TypeError, ValueError):
        return NoData(f"prometheus query {name}: malformed sample {pair!r}")
