"""The pod follower's parts that need no cluster: the loopback rule, the request record, /metrics faults, staged gauges.

The follower itself runs against the real API server in e2e/test_pod_follower.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from e2e.standin import Engine, EngineMetrics, MetricsFault, PodIPError, StandinConfig, loopback_ip
from e2e.standin.api import make_replica_app
from e2e.standin.instrument import Instrument

MODEL = StandinConfig().model_name


@pytest.mark.parametrize("ip", ["127.0.0.1", "127.100.3.7", "127.255.255.254"])
def test_addresses_inside_127_8_are_accepted(ip: str) -> None:
    assert loopback_ip(ip, "vllm-0") == ip


@pytest.mark.parametrize(
    ("ip", "message"),
    [
        ("10.244.0.5", r"pod vllm-0 has IP 10\.244\.0\.5, outside 127\.0\.0\.0/8"),
        ("192.168.1.1", r"outside 127\.0\.0\.0/8"),
        ("128.0.0.1", r"outside 127\.0\.0\.0/8"),
        ("::1", r"outside 127\.0\.0\.0/8"),  # IPv6 loopback is one address: pods could not each have one
        (None, r"pod vllm-0 has no valid pod IP \(None\)"),
        ("127.0.0.300", r"no valid pod IP"),
    ],
)
def test_other_addresses_are_refused_naming_the_pod(ip: str | None, message: str) -> None:
    with pytest.raises(PodIPError, match=message):
        loopback_ip(ip, "vllm-0")


def _serve(scenario: Callable[[str, Engine, Instrument], Awaitable[None]]) -> None:
    """Run ``scenario(url, engine, instrument)`` against one instrumented replica on 127.0.0.1."""

    async def main() -> None:
        config = StandinConfig(tokens_per_second=1000.0)
        engine = Engine(config, EngineMetrics(config.model_name))
        instrument = Instrument()
        runner = web.AppRunner(make_replica_app(engine, [instrument.middleware]), handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            await scenario(f"http://127.0.0.1:{port}", engine, instrument)
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_every_request_is_recorded_with_its_body_and_status() -> None:
    async def scenario(url: str, engine: Engine, instrument: Instrument) -> None:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "a b", "max_tokens": 2}) as r:
                assert r.status == 200
            async with http.post(f"{url}/v1/completions", json={"model": "other", "prompt": "a"}) as r:
                assert r.status == 404
            async with http.get(f"{url}/metrics") as r:
                assert r.status == 200
        completions = instrument.snapshot("/v1/completions")
        assert [(c.method, c.status, c.body["model"]) for c in completions] == [
            ("POST", 200, MODEL),
            ("POST", 404, "other"),
        ]
        assert completions[0].body["prompt"] == "a b"
        assert [r.path for r in instrument.snapshot()] == ["/v1/completions", "/v1/completions", "/metrics"]
        assert instrument.snapshot("/metrics")[0].body is None

    _serve(scenario)


def test_metrics_faults_break_only_metrics_and_heal() -> None:
    async def scenario(url: str, engine: Engine, instrument: Instrument) -> None:
        async with aiohttp.ClientSession() as http:
            instrument.metrics_fault = MetricsFault.ERROR
            async with http.get(f"{url}/metrics") as r:
                assert r.status == 500
            instrument.metrics_fault = MetricsFault.GARBAGE
            async with http.get(f"{url}/metrics") as r:
                assert r.status == 200
                assert "vllm:" not in await r.text()
            instrument.metrics_fault = MetricsFault.HANG
            with pytest.raises(asyncio.TimeoutError):
                async with http.get(f"{url}/metrics", timeout=aiohttp.ClientTimeout(total=0.3)):
                    pass
            async with http.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "a", "max_tokens": 1}) as r:
                assert r.status == 200, "a /metrics fault must leave the OpenAI routes alone"
            # A scrape hung on the fault answers once it is cleared.
            pending = asyncio.create_task(http.get(f"{url}/metrics"))
            await asyncio.sleep(0.2)
            assert not pending.done()
            instrument.metrics_fault = MetricsFault.NONE
            response = await asyncio.wait_for(pending, 2)
            assert response.status == 200
            response.release()
        statuses = [r.status for r in instrument.snapshot("/metrics")]
        assert statuses == [500, 200, None, 200], statuses  # the timed-out scrape never got an answer

    _serve(scenario)


def test_reported_gauges_replace_the_schedulers_until_reset() -> None:
    async def scenario(url: str, engine: Engine, instrument: Instrument) -> None:
        async with aiohttp.ClientSession() as http:

            async def gauges() -> dict[str, float]:
                async with http.get(f"{url}/metrics") as r:
                    text = await r.text()
                found = {}
                for line in text.splitlines():
                    for name in ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc"):
                        if line.startswith(name + "{"):
                            found[name] = float(line.rsplit(" ", 1)[1])
                return found

            engine.report(waiting=9, kv_cache_usage=0.5)
            assert await gauges() == {
                "vllm:num_requests_waiting": 9.0,
                "vllm:num_requests_running": 0.0,
                "vllm:kv_cache_usage_perc": 0.5,
            }
            engine.report()
            assert (await gauges())["vllm:num_requests_waiting"] == 0.0

    _serve(scenario)


@pytest.mark.parametrize(
    ("values", "message"),
    [({"waiting": -1}, "waiting must be >= 0"), ({"kv_cache_usage": 1.5}, r"kv_cache_usage must be within \[0, 1\]")],
)
def test_reported_gauges_are_checked(values: dict[str, float], message: str) -> None:
    async def make() -> Engine:
        return Engine(StandinConfig(), EngineMetrics(MODEL))

    engine = asyncio.run(make())
    with pytest.raises(ValueError, match=message):
        engine.report(**values)  # type: ignore[arg-type]
