"""Read vLLM's Prometheus metrics into an :class:`EngineSample`, or say there is no data.

Parsing is a pure function of the exposition text; scraping adds one HTTP GET through
an injected ``httpx`` client (tests pass a client with ``httpx.MockTransport`` or point
it at the loopback stand-in server).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping

import httpx
from prometheus_client.parser import text_string_to_metric_families

from controller.scrape.sample import EngineSample, MetricsReading, NoData
from controller.scrape.signals import VLLM_SIGNALS, Aggregation, Signal, SignalSource

__all__ = ["DEFAULT_TIMEOUT_SECONDS", "parse_vllm_metrics", "scrape_vllm", "scrape_vllm_async"]

DEFAULT_TIMEOUT_SECONDS = 5.0
"""Per-scrape budget; well under a controller sync period so a hung pod cannot stall a loop."""

# Ask for the classic text format: prometheus_client servers switch to OpenMetrics when the
# Accept header allows it, and the classic parser is the one this module relies on.
_ACCEPT = {"Accept": "text/plain;version=0.0.4;q=1.0, */*;q=0.1"}

_Labels = Mapping[str, str]
_Series = list[tuple[_Labels, float]]


def _collect(text: str, model_name: str | None, wanted: frozenset[str]) -> dict[str, _Series]:
    """Samples of the wanted names, optionally kept only for one ``model_name`` label."""
    found: dict[str, _Series] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name not in wanted:
                continue
            if model_name is not None and sample.labels.get("model_name") != model_name:
                continue
            found[sample.name].append((sample.labels, float(sample.value)))
    return found


def _series(found: Mapping[str, _Series], source: SignalSource) -> _Series | None:
    """The samples under the newest name that has any (older aliases are not added on top)."""
    for name in source.names:
        if found.get(name):
            return found[name]
    return None


def _combine(series: _Series, aggregation: Aggregation) -> float:
    values = [value for _, value in series]
    if aggregation is Aggregation.MEAN:
        return sum(values) / len(values)
    return sum(values)


def _optional(found: Mapping[str, _Series], signal: Signal) -> float | None:
    source = VLLM_SIGNALS[signal]
    series = _series(found, source)
    if series is None:
        return None
    value = _combine(series, source.aggregation)
    return value if math.isfinite(value) else None


def parse_vllm_metrics(text: str, model_name: str | None = None) -> MetricsReading:
    """Parse one ``/metrics`` exposition into a sample summed over engines.

    With ``model_name``, only series labelled with that served model count. Text that does
    not parse, or that lacks either queue gauge (or holds a non-finite or negative one), is
    :class:`NoData`, never a sample of zeros.
    """
    wanted = frozenset(name for source in VLLM_SIGNALS.values() for name in source.names)
    try:
        found = _collect(text, model_name, wanted)
    except ValueError as err:  # the parser's error for malformed exposition lines
        return NoData(f"unparsable metrics text: {err}")

    scope = f" for model_name={model_name!r}" if model_name is not None else ""
    queue: dict[Signal, int] = {}
    engines: set[str] = set()
    for signal in (Signal.WAITING, Signal.RUNNING):
        source = VLLM_SIGNALS[signal]
        series = _series(found, source)
        if series is None:
            return NoData(f"no {' or '.join(source.names)} samples{scope}")
        value = _combine(series, source.aggregation)
        if not math.isfinite(value) or value < 0:
            return NoData(f"invalid {source.names[0]} value {value}{scope}")
        queue[signal] = round(value)
        engines.update(labels.get("engine", "") for labels, _ in series)

    return EngineSample(
        waiting=queue[Signal.WAITING],
        running=queue[Signal.RUNNING],
        kv_cache_usage=_optional(found, Signal.KV_CACHE_USAGE),
        prompt_tokens_total=_optional(found, Signal.PROMPT_TOKENS),
        generation_tokens_total=_optional(found, Signal.GENERATION_TOKENS),
        request_success_total=_optional(found, Signal.REQUEST_SUCCESS),
        admission_rejections_total=_optional(found, Signal.ADMISSION_REJECTIONS),
        engines=len(engines),
    )


def _reading(url: str, response: httpx.Response, model_name: str | None) -> MetricsReading:
    if response.status_code != httpx.codes.OK:
        return NoData(f"HTTP {response.status_code} from {url}")
    return parse_vllm_metrics(response.text, model_name)


def scrape_vllm(
    url: str,
    *,
    client: httpx.Client,
    model_name: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> MetricsReading:
    """GET ``url`` (a server's ``/metrics`` endpoint) and parse it; any failure is :class:`NoData`."""
    try:
        response = client.get(url, headers=_ACCEPT, timeout=timeout)
    except (httpx.HTTPError, httpx.InvalidURL) as err:
        return NoData(f"scrape of {url} failed: {type(err).__name__}: {err}")
    return _reading(url, response, model_name)


async def scrape_vllm_async(
    url: str,
    *,
    client: httpx.AsyncClient,
    model_name: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> MetricsReading:
    """Asynchronous :func:`scrape_vllm` for callers that run an event loop."""
    try:
        response = await client.get(url, headers=_ACCEPT, timeout=timeout)
    except (httpx.HTTPError, httpx.InvalidURL) as err:
        return NoData(f"scrape of {url} failed: {type(err).__name__}: {err}")
    return _reading(url, response, model_name)
