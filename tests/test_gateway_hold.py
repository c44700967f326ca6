"""Scale from zero: with no Ready replica a request is held while a replica will be Ready in time for
the objective, else it goes to the fallback at once; the hold is bounded and a client that leaves is
dropped from it; held requests show in the gauge the controller reads."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from e2e.standin import BackgroundCluster, StandinConfig
from e2e.standin.provider import BackgroundProvider
from gateway import GatewaySettings
from tests.gateway_support import gateway_for, make_pool, metric, provider, scrape_text, wait_until

pytestmark = pytest.mark.timeout(90)
MESSAGES: Any = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def paid() -> Iterator[BackgroundProvider]:
    with BackgroundProvider() as p:
        yield p


@pytest.fixture
def vllm() -> Iterator[BackgroundCluster]:
    with BackgroundCluster(StandinConfig(output_tokens=2), replicas=0) as cluster:
        yield cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _route(gw: Any, timeout: float = 60.0) -> str:
    client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0, timeout=timeout)
    raw = client.chat.completions.with_raw_response.create(model="chat-model", messages=MESSAGES)
    raw.parse()
    return str(raw.headers["x-ebbtide-route"])


def _in_thread(gw: Any) -> tuple[threading.Thread, dict[str, str]]:
    out: dict[str, str] = {}

    def run() -> None:
        try:
            out["route"] = _route(gw)
        except openai.APIStatusError as err:
            out["status"] = str(err.status_code)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _held(gw: Any) -> float:
    return metric(scrape_text(gw), "ebbtide_gateway_held", pool="chat")


@pytest.mark.parametrize("with_fallback", [True, False])
def test_hold_then_gpu_when_the_replica_comes_up_in_time(
    vllm: BackgroundCluster, paid: Any, with_fallback: bool
) -> None:
    port = _free_port()
    providers = [provider("paid", paid.base_url)] if with_fallback else []
    pool = make_pool(providers=providers, spec={"coldStartSeconds": 1, "objective": {"ttftSeconds": 20}})
    with gateway_for([(pool, [f"127.0.0.1:{port}"])]) as gw:
        thread, out = _in_thread(gw)
        wait_until(lambda: _held(gw) == 1, what="the request held (the controller's signal to scale up)")
        vllm.add_replica(port)
        thread.join(20)
        assert out == {"route": "held-gpu"}
        text = scrape_text(gw)
        assert metric(text, "ebbtide_gateway_requests_total", route="held-gpu") == 1
        assert metric(text, "ebbtide_gateway_held") == 0


def test_hold_then_fallback_when_no_replica_comes_in_time(paid: Any) -> None:
    pool = make_pool(providers=[provider("paid", paid.base_url)],
                     spec={"coldStartSeconds": 1, "objective": {"ttftSeconds": 1.5}})  # fmt: skip
    with gateway_for([(pool, [f"127.0.0.1:{_free_port()}"])]) as gw:
        started = time.monotonic()
        assert _route(gw) == "held-fallback"
        assert 1.0 < time.monotonic() - started < 5.0, "held until the objective ran out, then sent on"


def test_fallback_at_once_when_the_cold_start_exceeds_the_objective(paid: Any) -> None:
    pool = make_pool(providers=[provider("paid", paid.base_url)],
                     spec={"coldStartSeconds": 180, "objective": {"ttftSeconds": 5}})  # fmt: skip
    with gateway_for([(pool, [f"127.0.0.1:{_free_port()}"])]) as gw:
        started = time.monotonic()
        assert _route(gw) == "fallback"
        assert time.monotonic() - started < 1.5
        assert metric(scrape_text(gw), "ebbtide_gateway_saturation_requests_total") == 0, "cold, not saturated"


def test_the_hold_queue_is_bounded(vllm: BackgroundCluster, paid: Any) -> None:
    port = _free_port()
    pool = make_pool(providers=[provider("paid", paid.base_url)],
                     spec={"coldStartSeconds": 1, "objective": {"ttftSeconds": 20}})  # fmt: skip
    settings = GatewaySettings(scrape_interval_seconds=0.2, check_priority=False, max_held=1)
    with gateway_for([(pool, [f"127.0.0.1:{port}"])], settings=settings) as gw:
        thread, out = _in_thread(gw)
        wait_until(lambda: _held(gw) == 1, what="one request held")
        assert _route(gw) == "held-fallback", "the queue is full: the next one goes to the fallback"
        vllm.add_replica(port)
        thread.join(20)
        assert out == {"route": "held-gpu"}


def test_without_fallback_the_hold_ends_with_503_after_max_hold(paid: Any) -> None:
    pool = make_pool(spec={"coldStartSeconds": 1, "objective": {"ttftSeconds": 20}})
    settings = GatewaySettings(scrape_interval_seconds=0.2, check_priority=False, max_hold_seconds=1.0)
    with gateway_for([(pool, [f"127.0.0.1:{_free_port()}"])], settings=settings) as gw:
        with pytest.raises(openai.APIStatusError) as err:
            _route(gw)
        assert err.value.status_code == 503 and err.value.body["code"] == "no_replica"  # type: ignore[index]
        assert metric(scrape_text(gw), "ebbtide_gateway_requests_total", route="rejected") == 1


def test_without_fallback_the_hold_ends_before_the_clients_deadline() -> None:
    # The openai client sends its timeout (X-Stainless-Timeout): a 503 it can read beats its own timeout.
    pool = make_pool(spec={"coldStartSeconds": 1, "objective": {"ttftSeconds": 20}})
    settings = GatewaySettings(scrape_interval_seconds=0.2, check_priority=False, max_hold_seconds=60.0)
    with gateway_for([(pool, [f"127.0.0.1:{_free_port()}"])], settings=settings) as gw:
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as err:
            _route(gw, timeout=3.0)
        waited = time.monotonic() - started
        assert err.value.status_code == 503 and err.value.body["code"] == "no_replica"  # type: ignore[index]
        assert 1.5 < waited < 2.9, waited  # the deadline (3 s) less the 1 s margin, not --max-hold-seconds


def test_a_client_that_leaves_while_held_is_dropped(vllm: BackgroundCluster, paid: Any) -> None:
    port = _free_port()
    pool = make_pool(providers=[provider("paid", paid.base_url)],
                     spec={"coldStartSeconds": 1, "objective": {"ttftSeconds": 30}})  # fmt: skip
    with gateway_for([(pool, [f"127.0.0.1:{port}"])]) as gw:

        async def leave() -> None:
            # A client that says nothing of its timeout (the openai client's would end the hold first).
            async with httpx.AsyncClient(timeout=1.0) as client:
                with pytest.raises(httpx.ReadTimeout):
                    body = {"model": "chat-model", "messages": MESSAGES}
                    await client.post(f"{gw.base_url}/chat/completions", json=body)

        asyncio.run(leave())
        wait_until(lambda: _held(gw) == 0, what="the departed client dropped from the hold")
        vllm.add_replica(port)
        time.sleep(0.6)
        served = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert metric(served, "vllm:request_success_total") == 0, "nothing was sent for the client that left"
        assert _route(gw) == "gpu"


def test_cluster_seam_a_starting_pod_is_waited_for_then_its_endpoint_serves(vllm: BackgroundCluster, paid: Any) -> None:
    pool = make_pool(providers=[provider("paid", paid.base_url)],
                     spec={"coldStartSeconds": 180, "objective": {"ttftSeconds": 20}})  # fmt: skip
    with gateway_for([(pool, [])], static=False) as gw:
        directory = gw.gateway.directory
        started = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=175)  # Ready in about 5 s
        gw.run(lambda: directory.set_pool(pool, [], starting=[started]))
        thread, out = _in_thread(gw)
        wait_until(lambda: _held(gw) == 1, what="held for the starting pod")
        port = vllm.add_replica()
        gw.run(lambda: directory.set_pool(pool, [("vllm-0", f"127.0.0.1:{port}")]))
        thread.join(20)
        assert out == {"route": "held-gpu"}
        gw.run(lambda: directory.set_pool(pool, [], fallback_open=False))
        gw.run(lambda: directory.remove_pool("default", "chat"))
        with pytest.raises(openai.NotFoundError):
            _route(gw)


def test_a_long_hold_of_a_stream_sends_keep_alive_comments_then_the_answer(vllm: BackgroundCluster, paid: Any) -> None:
    port = _free_port()
    pool = make_pool(providers=[provider("paid", paid.base_url)],
                     spec={"coldStartSeconds": 1, "objective": {"ttftSeconds": 20}})  # fmt: skip
    settings = GatewaySettings(scrape_interval_seconds=0.2, check_priority=False, keepalive_seconds=0.3)
    with gateway_for([(pool, [f"127.0.0.1:{port}"])], settings=settings) as gw:
        body = {"model": "chat-model", "messages": MESSAGES, "stream": True}
        with httpx.stream("POST", f"{gw.base_url}/chat/completions", json=body, timeout=30) as response:
            assert response.status_code == 200 and response.headers["x-ebbtide-route"] == "held"
            pieces = response.iter_raw()
            first = next(pieces)
            assert first.startswith(b": keep-alive\n\n"), "the stream starts with a comment while held"
            vllm.add_replica(port)
            rest = b"".join(pieces)
        assert rest.rstrip().endswith(b"data: [DONE]") and b'"content":" ebb"' in rest
        assert metric(scrape_text(gw), "ebbtide_gateway_requests_total", route="held-gpu") == 1


def test_a_kept_alive_stream_whose_hold_fails_ends_with_an_error_event() -> None:
    pool = make_pool(spec={"coldStartSeconds": 1, "objective": {"ttftSeconds": 20}})
    settings = GatewaySettings(scrape_interval_seconds=0.2, check_priority=False, keepalive_seconds=0.2,
                               max_hold_seconds=1.0)  # fmt: skip
    with gateway_for([(pool, [f"127.0.0.1:{_free_port()}"])], settings=settings) as gw:
        client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
        with pytest.raises(openai.APIError) as err:
            for _ in client.chat.completions.create(model="chat-model", messages=MESSAGES, stream=True):
                pass
        assert "no replica became Ready in time" in str(err.value)


def test_the_hold_ends_early_when_the_starting_pod_goes_away(paid: Any) -> None:
    pool = make_pool(providers=[provider("paid", paid.base_url)],
                     spec={"coldStartSeconds": 180, "objective": {"ttftSeconds": 30}})  # fmt: skip
    with gateway_for([(pool, [])], static=False) as gw:
        directory = gw.gateway.directory
        started = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=170)  # Ready in about 10 s
        gw.run(lambda: directory.set_pool(pool, [], starting=[started]))
        thread, out = _in_thread(gw)
        wait_until(lambda: _held(gw) == 1, what="held for the starting pod")
        began = time.monotonic()
        gw.run(lambda: directory.set_pool(pool, []))  # the pod was deleted: nothing is due any more
        thread.join(20)
        assert out == {"route": "held-fallback"} and time.monotonic() - began < 3.0
