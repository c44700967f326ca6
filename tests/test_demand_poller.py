"""The DemandPoller over real loopback servers: pools read concurrently, a hung pod stalls only its own pool."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from typing import Any

import httpx
import pytest
from prometheus_client import start_http_server

from controller.demand.poller import DemandPoller
from controller.kube.pods import PodInfo
from controller.ports import NoData, PoolRef
from e2e.standin import StandinCluster, StandinConfig
from policies.spec import GPUPoolSpec
from policies.types import DemandSample
from tests.demand_servers import free_port, gateway_registry, hung_server, queue_requests

CONFIG = StandinConfig(max_num_seqs=2, tokens_per_second=2_000, output_tokens=4)
SLOW = PoolRef("slow", "team-a", "vllm-slow", "team-a")
FAST = PoolRef("fast", "team-a", "vllm-fast", "team-a")


def pod(name: str, ip: str) -> PodInfo:
    return PodInfo(name, "team-a", f"uid-{name}", {}, ip, True, None, None, False, None, None, "Running")


def spec(deployment: str, port: int, timeout: float, **metrics: Any) -> GPUPoolSpec:
    return GPUPoolSpec.model_validate(
        {
            "target": {"deployment": deployment, "port": port, "servedModel": CONFIG.model_name},
            "metrics": {"scrapeTimeoutSeconds": timeout, **metrics},
        }
    )


def test_one_hung_replica_leaves_the_other_pools_fresh() -> None:
    async def scenario() -> tuple[list[DemandSample | NoData], list[DemandSample | NoData]]:
        port = free_port("127.0.0.2")
        async with (
            StandinCluster(CONFIG, host="127.0.0.2") as slow_good,
            hung_server("127.0.0.3", port),
            StandinCluster(CONFIG, host="127.0.0.4") as fast,
            httpx.AsyncClient() as http,
        ):
            await slow_good.add_replica(port)
            await fast.add_replica(port)
            fast.pause()
            tasks = await queue_requests(http, fast.url(port), CONFIG.model_name, 3)
            poller = DemandPoller(http=http, interval=0.2)
            # A slow timeout on the pool with the hung pod: each of its reads takes the full 2 s.
            poller.set_pool(
                SLOW, spec("vllm-slow", port, 2.0), [pod("slow-a", "127.0.0.2"), pod("slow-b", "127.0.0.3")]
            )
            poller.set_pool(FAST, spec("vllm-fast", port, 2.0), [pod("fast-a", "127.0.0.4")])
            assert poller.sample(FAST, dt.datetime.now(dt.UTC)) == NoData("not read yet")
            stop = asyncio.Event()
            runner = asyncio.create_task(poller.run(stop))
            fast_seen: list[DemandSample | NoData] = []
            slow_seen: list[DemandSample | NoData] = []
            for _ in range(12):  # 3 s: one slow read completes, the fast pool is read ~15 times
                await asyncio.sleep(0.25)
                now = dt.datetime.now(dt.UTC)
                fast_seen.append(poller.sample(FAST, now))
                slow_seen.append(poller.sample(SLOW, now))
            stop.set()
            await asyncio.wait_for(runner, 5)
            fast.resume()
            await asyncio.gather(*tasks)
            return fast_seen, slow_seen

    fast_seen, slow_seen = asyncio.run(scenario())
    # The fast pool's sample is never older than a few poll intervals, hung neighbour or not.
    fresh = [s for s in fast_seen[1:] if isinstance(s, DemandSample)]
    assert len(fresh) == len(fast_seen) - 1, fast_seen
    for sample in fresh:
        assert sample.queue == 3
    stamps = [s.observed_at for s in fresh]
    assert len(set(stamps)) >= 8, "the fast pool was not re-read while the other pool hung"
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)]
    assert max(gaps) < 0.8, gaps
    # The pool with the hung pod is no data naming that pod, never a queue from its other pod alone.
    last = slow_seen[-1]
    assert isinstance(last, NoData), slow_seen
    assert "slow-b" in last.reason and "timed out" in last.reason
    assert not any(isinstance(s, DemandSample) for s in slow_seen)


def test_gateway_counters_join_each_pool_and_give_offered_rates() -> None:
    m = gateway_registry()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=m.registry)
    gateway_url = f"http://127.0.0.1:{server.server_address[1]}"

    async def scenario() -> tuple[DemandSample | NoData, float | None, DemandSample | NoData]:
        async with StandinCluster(CONFIG) as cluster, httpx.AsyncClient() as http:
            port = await cluster.add_replica()
            poller = DemandPoller(http=http, interval=0.2, gateway_endpoints=lambda: [gateway_url])
            poller.set_pool(FAST, spec("vllm-fast", port, 1.0), [pod("fast-a", "127.0.0.1")])
            poller.set_pool(SLOW, spec("vllm-slow", port, 1.0, gateway=False), [pod("slow-a", "127.0.0.1")])
            m.held.labels("team-a", "fast").set(4)
            m.in_flight.labels("team-a", "fast", "fallback").set(2)
            m.fallback_usd.labels("team-a", "fast", "mid-tier").inc(1.25)
            stop = asyncio.Event()
            runner = asyncio.create_task(poller.run(stop))
            for _ in range(8):  # offered load: 100 prompt tokens every 0.1 s, about 1,000 per second
                m.tokens.labels("team-a", "fast", "fallback", "prompt", "estimated").inc(100)
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            now = dt.datetime.now(dt.UTC)
            got = poller.sample(FAST, now), poller.fallback_usd_total(FAST), poller.sample(SLOW, now)
            poller.remove_pool(SLOW)
            assert poller.sample(SLOW, now) == NoData("pool team-a/slow is not being read")
            stop.set()
            await asyncio.wait_for(runner, 5)
            return got

    try:
        fast, usd, slow = asyncio.run(scenario())
    finally:
        server.shutdown()
        thread.join(5)
    assert isinstance(fast, DemandSample), fast
    assert fast.waiting == 4 and fast.overflow_in_flight == 2  # held requests are queue
    assert fast.input_tokens_per_second is not None and 300 < fast.input_tokens_per_second < 2_000
    assert usd == pytest.approx(1.25)
    # The pool that opted out of the gateway sees only its engines.
    assert isinstance(slow, DemandSample) and slow.queue == 0 and slow.overflow_in_flight == 0


def test_the_first_read_waits_for_the_first_gateway_scrape() -> None:
    m = gateway_registry()
    m.held.labels("team-a", "fast").set(1)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=m.registry)
    gateway_url = f"http://127.0.0.1:{server.server_address[1]}"

    async def scenario() -> DemandSample | NoData:
        async with StandinCluster(CONFIG) as cluster, httpx.AsyncClient() as http:
            port = await cluster.add_replica()
            poller = DemandPoller(http=http, interval=0.2, gateway_endpoints=lambda: [gateway_url])
            poller.set_pool(FAST, spec("vllm-fast", port, 1.0), [pod("fast-a", "127.0.0.1")])
            # The pool's read starts before the gateway's: it must not report the gateway as unreadable.
            read = asyncio.create_task(poller.read_pool(FAST))
            await asyncio.sleep(0.05)
            await poller.read_gateway()
            return await read

    try:
        got = asyncio.run(scenario())
    finally:
        server.shutdown()
        thread.join(5)
    assert isinstance(got, DemandSample) and got.waiting == 1


def test_an_unreachable_gateway_is_no_data_for_pools_that_add_it() -> None:
    async def scenario() -> DemandSample | NoData:
        async with StandinCluster(CONFIG) as cluster, httpx.AsyncClient() as http:
            port = await cluster.add_replica()
            dead = f"http://127.0.0.1:{free_port()}"
            poller = DemandPoller(http=http, interval=0.2, gateway_endpoints=lambda: [dead])
            poller.set_pool(FAST, spec("vllm-fast", port, 1.0), [pod("fast-a", "127.0.0.1")])
            await poller.read_gateway()
            return await poller.read_pool(FAST)

    got = asyncio.run(scenario())
    assert isinstance(got, NoData) and "gateway" in got.reason


def test_no_gateway_pods_means_the_counters_are_absent_not_zero() -> None:
    async def scenario() -> DemandSample | NoData:
        async with StandinCluster(CONFIG) as cluster, httpx.AsyncClient() as http:
            port = await cluster.add_replica()
            poller = DemandPoller(http=http, interval=0.2, gateway_endpoints=lambda: [])
            poller.set_pool(FAST, spec("vllm-fast", port, 1.0), [pod("fast-a", "127.0.0.1")])
            await poller.read_gateway()
            return await poller.read_pool(FAST)

    got = asyncio.run(scenario())
    assert isinstance(got, DemandSample) and got.overflow_tokens_per_second is None


def test_poll_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="poll interval"):
        DemandPoller(http=httpx.AsyncClient(), interval=0)
