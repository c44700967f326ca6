"""scrape_vllm and scrape_vllm_async over httpx: every failure is NoData, never zeros."""

from __future__ import annotations

import asyncio

import httpx

from controller.scrape import EngineSample, NoData, scrape_vllm, scrape_vllm_async

URL = "http://vllm.test:8000/metrics"
GOOD = (
    "# TYPE vllm:num_requests_running gauge\n"
    'vllm:num_requests_running{engine="0",model_name="m"} 4.0\n'
    "# TYPE vllm:num_requests_waiting gauge\n"
    'vllm:num_requests_waiting{engine="0",model_name="m"} 6.0\n'
)


def _client(handler: httpx.MockTransport) -> httpx.Client:
    return httpx.Client(transport=handler)


def test_scrape_parses_a_good_answer_and_asks_for_classic_text() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text=GOOD)

    with _client(httpx.MockTransport(handler)) as client:
        reading = scrape_vllm(URL, client=client, model_name="m")
    assert isinstance(reading, EngineSample)
    assert (reading.running, reading.waiting) == (4, 6)
    assert seen[0].headers["accept"].startswith("text/plain")


def test_non_200_is_no_data() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(503, text=GOOD))
    with _client(transport) as client:
        reading = scrape_vllm(URL, client=client)
    assert reading == NoData(f"HTTP 503 from {URL}")


def test_connection_failure_is_no_data() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with _client(httpx.MockTransport(handler)) as client:
        reading = scrape_vllm(URL, client=client)
    assert isinstance(reading, NoData)
    assert "ConnectError" in reading.reason


def test_timeout_is_no_data() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with _client(httpx.MockTransport(handler)) as client:
        reading = scrape_vllm(URL, client=client, timeout=0.01)
    assert isinstance(reading, NoData)
    assert "ReadTimeout" in reading.reason


def test_invalid_url_is_no_data() -> None:
    with httpx.Client() as client:
        reading = scrape_vllm("http://[::1", client=client)
    assert isinstance(reading, NoData)


def test_refused_port_on_loopback_is_no_data() -> None:
    # Port 9 (discard) is closed on a test machine; the refusal comes from the local kernel.
    with httpx.Client() as client:
        reading = scrape_vllm("http://127.0.0.1:9/metrics", client=client, timeout=2.0)
    assert isinstance(reading, NoData)


def test_async_variant_matches() -> None:
    async def run() -> tuple[object, object]:
        good = httpx.MockTransport(lambda request: httpx.Response(200, text=GOOD))
        bad = httpx.MockTransport(lambda request: httpx.Response(500))
        async with httpx.AsyncClient(transport=good) as a, httpx.AsyncClient(transport=bad) as b:
            return await scrape_vllm_async(URL, client=a), await scrape_vllm_async(URL, client=b)

    ok, failed = asyncio.run(run())
    assert isinstance(ok, EngineSample) and ok.in_flight == 10
    assert isinstance(failed, NoData)
