"""The prometheus demand source against a real Prometheus server scraping stand-in vLLM replicas on loopback.

Needs no Kubernetes: the server (Debian's `prometheus` package, installed by e2e/prometheus/install.sh,
found through EBBTIDE_PROMETHEUS) scrapes the stand-ins every second with its own storage directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from controller.demand.aggregate import EngineTotals, aggregate
from controller.demand.prometheus import PrometheusSource, render_queries
from controller.demand.sources import build_engine_source
from controller.ports import NoData, PoolRef
from e2e.standin import BackgroundCluster, StandinConfig
from e2e.system_support import prometheus as prometheus_server
from policies.spec import GPUPoolSpec, PrometheusQueries
from policies.types import DemandSample

CONFIG = StandinConfig(max_num_seqs=2, tokens_per_second=2_000, output_tokens=4)
POOL = PoolRef("chat", "team-a", "vllm-chat", "team-a")
MAX_AGE = 30
"""The pools' metricMaxAgeSeconds here (the server's lookback is set to it, see below)."""
LAG_SECONDS = 60
"""How far behind the lagging exporter's samples are: older than MAX_AGE, well inside Prometheus' 5 min."""


def prometheus_binary() -> str:
    """The server binary; a missing one fails the test with what to run (the test command installs it)."""
    for candidate in (os.environ.get("EBBTIDE_PROMETHEUS"), shutil.which("prometheus"), "/usr/bin/prometheus"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        "no Prometheus binary: run `bash e2e/prometheus/install.sh` (installs Debian's prometheus package) "
        "and export EBBTIDE_PROMETHEUS=<the path it prints>; tests/run.sh does both"
    )


class _Lagging(BaseHTTPRequestHandler):
    """An exporter whose samples carry timestamps LAG_SECONDS in the past (honoured by Prometheus)."""

    def do_GET(self) -> None:
        stamp = int((time.time() - LAG_SECONDS) * 1000)
        body = f'lagging_waiting{{namespace="team-a"}} 5 {stamp}\n'.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def standins() -> Iterator[BackgroundCluster]:
    with BackgroundCluster(CONFIG, replicas=2) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def lagging() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Lagging)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    thread.join(5)


@pytest.fixture(scope="module")
def prometheus(standins: BackgroundCluster, lagging: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    targets = [
        {"targets": [f"127.0.0.1:{p}"], "labels": {"namespace": "team-a", "pod": f"vllm-chat-{i}"}}
        for i, p in enumerate(standins.ports)
    ]
    jobs = [
        {"job_name": "vllm", "static_configs": targets},
        {"job_name": "lagging", "static_configs": [{"targets": [f"127.0.0.1:{lagging}"]}]},
    ]
    # Debian's 2.42 ignores the query API's lookback_delta (Prometheus >= 2.43 honours it per query), so
    # the server's lookback is set to the pools' max age: what an operator of an older server must do.
    with prometheus_server(
        prometheus_binary(),
        tmp_path_factory.mktemp("prometheus"),
        scrape_configs=jobs,
        extra_args=[f"--query.lookback-delta={MAX_AGE}s"],
    ) as url:
        yield url


def read(url: str, queries: PrometheusQueries | None = None, pool: PoolRef = POOL) -> EngineTotals | NoData:
    source = PrometheusSource(
        url, render_queries(queries or PrometheusQueries(), pool), timeout=2, max_age_seconds=MAX_AGE
    )

    async def go() -> EngineTotals | NoData:
        async with httpx.AsyncClient() as http:
            return await source.read(http)

    return asyncio.run(go())


def test_the_prometheus_source_returns_the_standins_queue(prometheus: str, standins: BackgroundCluster) -> None:
    first, second = standins.ports
    standins.pause()

    def send(port: int, count: int) -> list[threading.Thread]:
        def one() -> None:
            body = {"model": CONFIG.model_name, "prompt": "hello there", "max_tokens": 4}
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(standins.url(port) + "/v1/completions", json=body, timeout=60)

        threads = [threading.Thread(target=one, daemon=True) for _ in range(count)]
        for thread in threads:
            thread.start()
        return threads

    threads = send(first, 5) + send(second, 1)
    try:
        # Built from the spec as the daemon builds it.
        spec = GPUPoolSpec.model_validate(
            {
                "target": {"deployment": "vllm-chat"},
                "metrics": {"source": "prometheus", "prometheus": {"url": prometheus}},
                "demand": {"metricMaxAgeSeconds": MAX_AGE},
            }
        )
        source = build_engine_source(POOL, spec, [])
        assert isinstance(source, PrometheusSource)
        deadline = time.monotonic() + 20
        got: EngineTotals | NoData = NoData("not read")
        while time.monotonic() < deadline:
            got = read(prometheus)
            if isinstance(got, EngineTotals) and (got.waiting, got.running) == (3, 3):
                break
            time.sleep(0.5)
        # Replica one runs 2 (max_num_seqs) and queues 3; replica two runs 1.
        assert isinstance(got, EngineTotals), got
        assert (got.waiting, got.running) == (3, 3)
        assert got.kv_cache_usage is not None and 0 < got.kv_cache_usage <= 1
        assert abs(time.time() - got.observed_at.timestamp()) < 10
    finally:
        standins.resume()
        for thread in threads:
            thread.join(30)
    # Served, the requests' tokens show in the token rates (rate() over the counters, per second).
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        got = read(prometheus)
        # Prometheus scrapes every second: the drained queue and the served tokens show within a scrape.
        if isinstance(got, EngineTotals) and (got.prompt_tokens_per_second or 0) > 0 and got.running == 0:
            break
        time.sleep(0.5)
    assert isinstance(got, EngineTotals), got
    assert got.prompt_tokens_per_second is not None and got.prompt_tokens_per_second > 0
    assert got.generation_tokens_per_second is not None and got.generation_tokens_per_second > 0
    assert (got.waiting, got.running) == (0, 0)


def test_an_empty_vector_is_no_data(prometheus: str) -> None:
    got = read(prometheus, pool=PoolRef("chat", "team-a", "no-such-deployment", "team-a"))
    assert isinstance(got, NoData) and "empty vector" in got.reason


def test_nan_is_no_data(prometheus: str, standins: BackgroundCluster) -> None:
    # 0/0 over a series that exists: Prometheus answers NaN, which must not become a queue of zero.
    queries = PrometheusQueries(waiting='sum(vllm:num_requests_waiting{namespace="$namespace"}) * 0 / 0')
    deadline = time.monotonic() + 15
    got = read(prometheus, queries)
    while isinstance(got, NoData) and "empty" in got.reason and time.monotonic() < deadline:
        time.sleep(0.5)
        got = read(prometheus, queries)
    assert isinstance(got, NoData) and "nan" in got.reason.lower()


def test_a_sample_older_than_the_max_age_is_no_data(prometheus: str, lagging: int) -> None:
    # The lagging exporter's series is in Prometheus (a 5 min window finds it) but older than the max age.
    deadline = time.monotonic() + 15
    while True:
        found = httpx.get(
            prometheus + "/api/v1/query", params={"query": "count_over_time(lagging_waiting[5m])"}, timeout=2
        ).json()
        if found["data"]["result"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert found["data"]["result"], "Prometheus never ingested the lagging exporter's samples"
    got = read(prometheus, PrometheusQueries(waiting='sum(lagging_waiting{namespace="$namespace"})'))
    assert isinstance(got, NoData) and "empty vector" in got.reason


def test_a_ready_pod_the_server_stopped_scraping_makes_the_read_no_data(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # Two replicas scraped; one goes away. Prometheus marks its series stale at the failed scrape, so
    # the sums shrink at once: the `pods` query is what tells that shrink from a shorter queue.
    pool = PoolRef("chat", "team-b", "vllm-b", "team-b")
    names = ["vllm-b-0", "vllm-b-1"]
    with BackgroundCluster(CONFIG, replicas=2) as cluster:
        targets = [
            {"targets": [f"127.0.0.1:{port}"], "labels": {"namespace": "team-b", "pod": name}}
            for name, port in zip(names, cluster.ports, strict=True)
        ]
        jobs = [{"job_name": "vllm", "static_configs": targets}]
        work = tmp_path_factory.mktemp("prometheus-gone")
        with prometheus_server(
            prometheus_binary(), work, scrape_configs=jobs, extra_args=[f"--query.lookback-delta={MAX_AGE}s"]
        ) as url:

            def demand() -> object:
                return aggregate(read(url, pool=pool), names, None, None, dt_now())[0]

            deadline = time.monotonic() + 20
            got = demand()
            while not (isinstance(got, DemandSample) and got.running == 0) and time.monotonic() < deadline:
                time.sleep(0.5)
                got = demand()
            assert isinstance(got, DemandSample), got

            cluster.remove_replica(cluster.ports[1])
            deadline = time.monotonic() + 20
            while isinstance(got, DemandSample) and time.monotonic() < deadline:
                time.sleep(0.5)
                got = demand()
            assert isinstance(got, NoData), got
            assert got.reason == "1 of 2 Ready pods have no fresh series in Prometheus (pod vllm-b-1)"
            # The same read without the `pods` query: a whole-looking sum over one pod.
            totals = read(url, PrometheusQueries(pods=None), pool=pool)
            assert isinstance(totals, EngineTotals) and totals.pods is None


def dt_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
