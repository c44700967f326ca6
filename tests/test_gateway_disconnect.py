"""A client that disconnects cancels its upstream request: the stand-in vLLM counts an abort, the
stand-in provider records one, and the gateway's in-flight gauges return to zero. A client that leaves
right after the stream's end marker (as the openai clients do) leaves a finished request, accounted
with the upstream's usage; one that leaves midway is counted with what it had been sent (its prompt and
the tokens relayed, estimated), billed so at a provider and logged for the replay."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from aiohttp import web

from e2e.standin import BackgroundCluster, StandinConfig
from e2e.standin.provider import BackgroundProvider, ProviderConfig
from gateway import GatewaySettings
from tests.gateway_support import (
    AppThread,
    chat_upstream,
    gateway_for,
    make_pool,
    metric,
    provider,
    scrape_text,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)
MESSAGES: Any = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def slow_vllm() -> Iterator[BackgroundCluster]:
    with BackgroundCluster(StandinConfig(tokens_per_second=5, output_tokens=50)) as cluster:
        yield cluster


def _aborts(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return metric(text, "vllm:request_success_total", finished_reason="abort")


def test_a_stream_left_after_its_first_token_aborts_on_vllm(slow_vllm: BackgroundCluster) -> None:
    url = slow_vllm.url(slow_vllm.ports[0])
    with gateway_for([(make_pool(), [url.removeprefix("http://")])]) as gw:
        before = _aborts(url)
        client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
        stream = client.chat.completions.create(model="chat-model", messages=MESSAGES, stream=True)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        stream.close()
        wait_until(lambda: _aborts(url) == before + 1, what="vLLM to see the abort")
        wait_until(lambda: metric(scrape_text(gw), "ebbtide_gateway_in_flight", route="gpu") == 0, what="in flight 0")


def test_a_plain_request_given_up_by_its_client_aborts_on_vllm(slow_vllm: BackgroundCluster) -> None:
    url = slow_vllm.url(slow_vllm.ports[0])
    with gateway_for([(make_pool(), [url.removeprefix("http://")])]) as gw:
        before = _aborts(url)
        client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0, timeout=1.0)
        with pytest.raises(openai.APITimeoutError):
            client.completions.create(model="chat-model", prompt="x")
        wait_until(lambda: _aborts(url) == before + 1, what="vLLM to see the abort")


def test_a_stream_left_at_the_provider_is_aborted_there() -> None:
    with BackgroundProvider(ProviderConfig(output_tokens=40, token_interval=0.1)) as paid:
        pool = make_pool(providers=[provider("paid", paid.base_url)])
        with gateway_for([(pool, [])]) as gw:
            client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
            stream = client.chat.completions.create(model="chat-model", messages=MESSAGES, stream=True)
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    break
            stream.close()
            [record] = paid.wait_for(lambda rs: len(rs) == 1 and rs[0].aborted, timeout=10)
            assert not record.completed
            wait_until(lambda: metric(scrape_text(gw), "ebbtide_gateway_in_flight", route="fallback") == 0,
                       what="in flight 0")  # fmt: skip


def _read_tokens_then_leave(gw: Any, tokens: int) -> None:
    """A chat stream read by the official client up to its `tokens`-th content chunk, then closed."""
    client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    stream = client.chat.completions.create(model="chat-model", messages=MESSAGES, stream=True)
    read = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            read += 1
            if read == tokens:
                break
    stream.close()
    assert read == tokens, "the stream ended before the client left"


_TOKENS = "ebbtide_gateway_tokens_total"


def test_a_stream_left_midway_on_vllm_counts_what_it_streamed(slow_vllm: BackgroundCluster) -> None:
    url = slow_vllm.url(slow_vllm.ports[0])
    with gateway_for([(make_pool(), [url.removeprefix("http://")])]) as gw:
        _read_tokens_then_leave(gw, 3)
        wait_until(lambda: metric(scrape_text(gw), "ebbtide_gateway_in_flight", route="gpu") == 0, what="in flight 0")
        text = scrape_text(gw)
        logged = httpx.get(f"{gw.url}/ebbtide/requests", timeout=5).json()["requests"]
    assert metric(text, "ebbtide_gateway_requests_total", route="gpu") == 1
    prompt = metric(text, _TOKENS, route="gpu", kind="prompt", source="estimated")
    completion = metric(text, _TOKENS, route="gpu", kind="completion", source="estimated")
    assert prompt > 0
    # The client read 3 tokens; the gateway may have relayed one or two more before it saw the close,
    # but nowhere near the 50 the replica would have generated.
    assert 3 <= completion <= 6
    assert metric(text, _TOKENS, source="reported") == 0, "the replica never reported its usage"
    assert [row[4:] for row in logged] == [[prompt, completion]], "load the replicas served: in the replay log"


def test_a_stream_left_midway_at_a_provider_is_billed_for_its_prompt_and_what_it_streamed() -> None:
    with BackgroundProvider(ProviderConfig(output_tokens=40, token_interval=0.1)) as paid:
        prices = {"inputUsdPerMillion": 2, "outputUsdPerMillion": 10}
        pool = make_pool(providers=[provider("paid", paid.base_url, **prices)])
        with gateway_for([(pool, [])]) as gw:
            _read_tokens_then_leave(gw, 3)
            [record] = paid.wait_for(lambda rs: len(rs) == 1 and rs[0].aborted, timeout=10)
            assert not record.completed
            wait_until(lambda: metric(scrape_text(gw), "ebbtide_gateway_in_flight", route="fallback") == 0,
                       what="in flight 0")  # fmt: skip
            text = scrape_text(gw)
    prompt = metric(text, _TOKENS, route="fallback", kind="prompt", source="estimated")
    completion = metric(text, _TOKENS, route="fallback", kind="completion", source="estimated")
    assert prompt > 0 and 3 <= completion <= 6
    # Its spend, which the daily cap adds up, is what the provider bills: the prompt and the tokens sent.
    spent = metric(text, "ebbtide_gateway_fallback_usd_total", provider="paid")
    assert spent == pytest.approx((prompt * 2 + completion * 10) / 1e6)


_USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def _ends_late(cut: threading.Event) -> Callable[[], web.Application]:
    """An upstream (replica or provider) whose stream sends its usage chunk and `data: [DONE]`, then holds
    its body open for 30 s: an upstream whose end of body comes after the marker (the chunked
    terminator is a write of its own; a loaded machine delays it). `cut` is set when the gateway drops
    the connection before that end."""

    def event(obj: Any) -> bytes:
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip

    usage = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [], "usage": _USAGE}
    events = [
        event(chunk({"role": "assistant", "content": ""})),
        event(chunk({"content": "one"})),
        event(chunk({"content": " two"})),
        event(chunk({"content": ""}, "stop")),
        event(usage),
        b"data: [DONE]\n\n",
    ]

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in events:
            await response.write(piece)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cut.set()
            raise
        await response.write_eof()
        return response

    return chat_upstream(chat)


def _stream_to_done(gw: Any) -> str:
    """One chat stream read by the official client to its `data: [DONE]`, where it closes the connection."""
    client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    stream = client.chat.completions.create(model="chat-model", messages=MESSAGES, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


@pytest.mark.parametrize("route", ["gpu", "fallback"])
def test_a_stream_left_right_after_its_end_marker_is_accounted_with_the_reported_usage(
    route: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ebbtide.gateway.access")
    settings = GatewaySettings(scrape_interval_seconds=0.2, check_priority=False, access_log=True)
    cut = threading.Event()
    with AppThread(_ends_late(cut)) as upstream:
        if route == "gpu":
            pools = [(make_pool(), [upstream.address])]
        else:
            paid = provider("paid", f"http://{upstream.address}/v1", inputUsdPerMillion=2, outputUsdPerMillion=10)
            pools = [(make_pool(providers=[paid]), [])]
        with gateway_for(pools, settings=settings) as gw:
            assert _stream_to_done(gw) == "one two"
            # The client closed on `[DONE]` while the gateway still waited for the upstream's end of body:
            # the gateway drops the upstream (the handler was cancelled), well before the upstream's 30 s.
            assert cut.wait(10), "the gateway did not drop the upstream when the client left"
            wait_until(lambda: metric(scrape_text(gw), "ebbtide_gateway_in_flight", route=route) == 0,
                       what="in flight 0")  # fmt: skip
            text = scrape_text(gw)
            logged = httpx.get(f"{gw.url}/ebbtide/requests", timeout=5).json()["requests"]
    tokens = "ebbtide_gateway_tokens_total"
    assert metric(text, "ebbtide_gateway_requests_total", route=route) == 1
    assert metric(text, tokens, route=route, kind="prompt", source="reported") == 7
    assert metric(text, tokens, route=route, kind="completion", source="reported") == 3
    assert metric(text, tokens, source="estimated") == 0, "the upstream reported the usage: nothing is estimated"
    assert [row[4:] for row in logged] == [[7, 3]], "a finished request: in the controller's replay log"
    if route == "fallback":
        assert metric(text, "ebbtide_gateway_fallback_usd_total", provider="paid") == pytest.approx(
            (7 * 2 + 3 * 10) / 1e6
        )
    # Its access line is a finished answer's (the handler was cancelled, but the answer had ended).
    wait_until(lambda: any(r.name == "ebbtide.gateway.access" for r in caplog.records), what="the access line")
    [line] = [r.fields for r in caplog.records if r.name == "ebbtide.gateway.access"]  # type: ignore[attr-defined]
    assert (line["status"], line["route"], line["stream"]) == (200, route, True)
    assert line["provider"] == ("paid" if route == "fallback" else None)
