"""The gateway's counters, scraped from every gateway process's /metrics (series in controller/demand/series.py).

One scrape serves every pool: the gateway labels its series {namespace, pool}. The gateway is read all
or nothing: with one of its processes unreadable, the counters of every pool are NoData (the held and
fallback requests of the missing process would otherwise vanish from the demand).
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

from controller.demand import series as S
from controller.demand.aggregate import GatewayCounters, GatewaySeries
from controller.ports import NoData

__all__ = ["GatewayScrape", "GatewaySource", "gateway_counters", "metrics_url", "parse_gateway_metrics"]

PoolKey = tuple[str, str]
"""(namespace, pool name)."""

# Same as the vLLM reader: ask for the classic text format the parser below reads.
_ACCEPT = {"Accept": "text/plain;version=0.0.4;q=1.0, */*;q=0.1"}
_ZERO = GatewaySeries()


def metrics_url(endpoint: str) -> str:
    """The /metrics URL of a gateway endpoint given as a base URL (or already as its /metrics URL)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/metrics") else f"{endpoint}/metrics"


def _add(series: GatewaySeries, field: str, value: float) -> GatewaySeries:
    return replace(series, **{field: getattr(series, field) + value})


def _field(name: str, labels: Mapping[str, str]) -> str | None:
    """Which GatewaySeries field a sample adds to, or None when it is not one we read."""
    if name == S.TOKENS:
        kind = labels.get("kind")
        return {"prompt": "prompt_tokens_total", "completion": "completion_tokens_total"}.get(kind or "")
    if name == S.SATURATION_TOKENS:
        return "saturation_tokens_total"
    if name == S.BEYOND_OBJECTIVE_TOKENS:
        kind = labels.get("kind")
        return {"prompt": "beyond_prompt_tokens_total", "completion": "beyond_completion_tokens_total"}.get(kind or "")
    if name == S.FALLBACK_USD:
        return "fallback_usd_total"
    if name == S.IN_FLIGHT:
        return "fallback_in_flight" if labels.get("route") == S.RouteLabel.FALLBACK else None
    if name == S.HELD:
        return "held"
    return None


def parse_gateway_metrics(text: str) -> dict[PoolKey, GatewaySeries] | NoData:
    """Each pool's series in one gateway process's exposition, summed over the other labels.

    Unparsable text, or a non-finite or negative value, is NoData for the whole process.
    """
    pools: dict[PoolKey, GatewaySeries] = defaultdict(GatewaySeries)
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                field = _field(sample.name, sample.labels)
                if field is None:
                    continue
                value = float(sample.value)
                if not math.isfinite(value) or value < 0:
                    return NoData(f"invalid {sample.name} value {value}")
                key = (sample.labels.get("namespace", ""), sample.labels.get("pool", ""))
                pools[key] = _add(pools[key], field, value)
    except ValueError as err:  # the parser's error for malformed lines
        return NoData(f"unparsable gateway metrics: {err}")
    return dict(pools)


@dataclass(frozen=True, slots=True)
class GatewayScrape:
    """One round over every gateway process: each endpoint's per-pool series."""

    endpoints: Mapping[str, Mapping[PoolKey, GatewaySeries]]


def gateway_counters(scrape: GatewayScrape, namespace: str, pool: str) -> GatewayCounters:
    """One pool's counters from a round; a process that never served the pool counts zeros."""
    return GatewayCounters({ep: pools.get((namespace, pool), _ZERO) for ep, pools in scrape.endpoints.items()})


class GatewaySource:
    """Scrapes every gateway endpoint concurrently within `timeout` seconds; any failure is NoData."""

    kind: ClassVar[str] = "gateway"

    def __init__(self, endpoints: Sequence[str], *, timeout: float) -> None:
        self.endpoints = tuple(endpoints)
        self.timeout = timeout

    async def _one(self, http: httpx.AsyncClient, endpoint: str) -> dict[PoolKey, GatewaySeries] | NoData:
        url = metrics_url(endpoint)
        try:
            response = await asyncio.wait_for(http.get(url, headers=_ACCEPT, timeout=self.timeout), self.timeout)
        except TimeoutError:
            return NoData(f"scrape of {url} timed out after {self.timeout:g}s")
        except (httpx.HTTPError, httpx.InvalidURL) as err:
            return NoData(f"scrape of {url} failed: {type(err).__name__}: {err}")
        if response.status_code != httpx.codes.OK:
            return NoData(f"HTTP {response.status_code} from {url}")
        return parse_gateway_metrics(response.text)

    async def read(self, http: httpx.AsyncClient) -> GatewayScrape | NoData:
        """Scrape every endpoint; NoData naming the first that failed when any did."""
        results = await asyncio.gather(*(self._one(http, ep) for ep in self.endpoints))
        endpoints: dict[str, Mapping[PoolKey, GatewaySeries]] = {}
        for endpoint, result in zip(self.endpoints, results, strict=True):
            if isinstance(result, NoData):
                return NoData(f"gateway {endpoint}: {result.reason}")
            endpoints[endpoint] = result
        return GatewayScrape(endpoints)
