"""The official `openai` client (sync and async, streaming and not) against the gateway on loopback,
with the stand-in vLLM behind it: answers, usage, bytes relayed unchanged, errors, models, auth."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from aiohttp import web

from e2e.standin import BackgroundCluster, StandinConfig
from tests.gateway_support import AppThread, chat_upstream, gateway_for, make_pool, metric, scrape_text, wait_until

pytestmark = pytest.mark.timeout(60)
MESSAGES: Any = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def vllm() -> Iterator[BackgroundCluster]:
    with BackgroundCluster(StandinConfig(output_tokens=8), replicas=2) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def gw(vllm: BackgroundCluster) -> Iterator[Any]:
    with gateway_for([(make_pool(), [f"127.0.0.1:{p}" for p in vllm.ports])], keys=["client-key"]) as gateway:
        yield gateway


def _client(gw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="client-key", max_retries=0)


def test_sync_chat_and_completions_plain_and_streaming(gw: Any) -> None:
    client = _client(gw)
    raw = client.chat.completions.with_raw_response.create(model="chat-model", messages=MESSAGES, max_tokens=5)
    answer = raw.parse()
    assert raw.headers["x-ebbtide-route"] == "gpu"
    assert answer.choices[0].message.content == " ebb and flow of the"
    assert answer.usage is not None and answer.usage.completion_tokens == 5
    text = client.completions.create(model="chat-model", prompt="one two three")
    assert text.usage is not None and text.usage.prompt_tokens == 3 and text.usage.completion_tokens == 8
    chunks = list(client.chat.completions.create(model="chat-model", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).split() == [
        "ebb",
        "and",
        "flow",
        "of",
        "the",
        "tide",
        "lifts",
        "every",
    ]
    assert all(c.usage is None for c in chunks), "the client did not ask for usage: the usage chunk is stripped"
    texts = list(client.completions.create(model="chat-model", prompt="x", stream=True,
                                           stream_options={"include_usage": True}))  # fmt: skip
    assert texts[-1].usage is not None and texts[-1].usage.completion_tokens == 8 and texts[-1].choices == []


def test_async_client_concurrent_plain_and_streaming(gw: Any) -> None:
    async def main() -> list[str]:
        client = openai.AsyncOpenAI(base_url=gw.base_url, api_key="client-key", max_retries=0)

        async def plain() -> str:
            r = await client.chat.completions.create(model="chat-model", messages=MESSAGES, max_tokens=3)
            return r.choices[0].message.content or ""

        async def streamed() -> str:
            s = await client.completions.create(model="chat-model", prompt="p", max_tokens=3, stream=True)
            return "".join([c.choices[0].text async for c in s if c.choices])

        out = await asyncio.gather(*(plain() for _ in range(10)), *(streamed() for _ in range(10)))
        await client.close()
        return out

    assert asyncio.run(main()) == [" ebb and flow"] * 20


def test_usage_counted_equals_what_the_upstream_reported(gw: Any) -> None:
    client = _client(gw)
    # The module's earlier requests all accounted (each leaves the in-flight gauge as it is counted):
    # none of them can be counted inside this test's window.
    wait_until(lambda: metric(scrape_text(gw), "ebbtide_gateway_in_flight", route="gpu") == 0, what="in flight 0")
    before = scrape_text(gw)
    reported_prompt = reported_completion = 0
    for i in range(4):
        r = client.completions.create(model="chat-model", prompt="a b c d"[: 1 + 2 * i], max_tokens=2 + i)
        assert r.usage is not None
        reported_prompt += r.usage.prompt_tokens
        reported_completion += r.usage.completion_tokens
    for _ in range(3):  # streams: usage read from the (stripped) usage chunk the gateway asked for
        for _chunk in client.completions.create(model="chat-model", prompt="x y", max_tokens=4, stream=True):
            pass
        reported_prompt += 2
        reported_completion += 4
    # A stream is accounted when the upstream's body has ended or, the client having closed on `[DONE]`
    # first, when the gateway sees that close: a moment after the client read its last event. Wait
    # (bounded, generously for a loaded machine) until all seven requests are counted, then compare
    # exactly: a stream closed on `[DONE]` counts the upstream's usage too
    # (test_gateway_disconnect.py::test_a_stream_left_right_after_its_end_marker_...).
    deadline = time.monotonic() + 15.0
    while True:
        after = scrape_text(gw)
        done = metric(after, "ebbtide_gateway_requests_total", route="gpu") - metric(
            before, "ebbtide_gateway_requests_total", route="gpu"
        )
        if done >= 7 or time.monotonic() > deadline:
            break
        time.sleep(0.05)

    def delta(kind: str) -> float:
        labels = {"route": "gpu", "kind": kind, "source": "reported", "pool": "chat"}
        return metric(after, "ebbtide_gateway_tokens_total", **labels) - metric(
            before, "ebbtide_gateway_tokens_total", **labels
        )

    assert delta("prompt") == reported_prompt
    assert delta("completion") == reported_completion
    assert (
        metric(after, "ebbtide_gateway_requests_total", route="gpu")
        - metric(before, "ebbtide_gateway_requests_total", route="gpu")
        == 7
    )
    assert metric(after, "ebbtide_gateway_added_latency_seconds_count") > 0


def test_errors_are_openai_shaped_4xx(gw: Any) -> None:
    client = _client(gw)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert missing.value.body == {
        "message": "the model `no-such-model` does not exist",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gw.base_url, api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="chat-model", messages=[])
    assert bad.value.body["param"] == "messages"  # type: ignore[index]

    def raw(method: str, path: str, body: bytes | None = None, auth: bool = True) -> tuple[int, Any]:
        headers = {"Authorization": "Bearer client-key"} if auth else {}
        response = httpx.request(method, f"{gw.url}{path}", content=body, headers=headers, timeout=10)
        return response.status_code, response.json()

    for body in (b"{not json", b"[]", b'{"model": 3}', '{"model": "\u00e9\u6f22", "messages": [1]}'.encode()):
        status, payload = raw("POST", "/v1/chat/completions", body)
        assert status in (400, 404) and set(payload["error"]) == {"message", "type", "param", "code"}
    assert raw("POST", "/v1/chat/completions", b"x" * (17 * 1024 * 1024))[0] == 413
    assert raw("GET", "/v1/chat/completions")[0] == 405
    assert raw("GET", "/v2/nothing")[0] == 404
    assert raw("POST", "/v1/completions", b"{}", auth=False)[0] == 401


def test_models_health_ready_metrics(gw: Any) -> None:
    assert [m.id for m in _client(gw).models.list()] == ["chat-model"]
    for path, expected in (("/healthz", 200), ("/readyz", 200)):
        with urllib.request.urlopen(f"{gw.url}{path}", timeout=5) as response:
            assert response.status == expected
    text = scrape_text(gw)
    assert "ebbtide_gateway_requests_total" in text and "client-key" not in text and "hello" not in text


def _canned_upstream(events: list[bytes]) -> Any:
    """A replica that answers every chat request with exactly these bytes, each written (and flushed) apart."""

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in events:
            await response.write(piece)
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    return chat_upstream(chat)


def test_stream_relayed_byte_for_byte_with_a_200kb_event_split_mid_event() -> None:
    big = orjson.dumps({"id": "c", "choices": [{"index": 0, "delta": {"content": "z" * 200_000}}]})
    usage = b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n'
    stream = [b'data: {"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n',
              b"data: " + big[:70_000], big[70_000:] + b"\n\ndata: {\"id\":\"c\",\"choices\":[{\"index\":0,",
              b'"delta":{"content":"!"},"finish_reason":"stop"}]}\n\n', usage, b"data: [DONE]\n\n"]  # fmt: skip
    with AppThread(_canned_upstream(stream)) as upstream, gateway_for([(make_pool(), [upstream.address])]) as gw:
        body = {"model": "chat-model", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
        with httpx.stream("POST", f"{gw.base_url}/chat/completions", json=body, timeout=10) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            received = b"".join(response.iter_raw())
        assert received == b"".join(stream)
        body.pop("stream_options")
        with httpx.stream("POST", f"{gw.base_url}/chat/completions", json=body, timeout=10) as response:
            stripped = b"".join(response.iter_raw())
        assert stripped == b"".join(stream).replace(usage, b"")
        text = scrape_text(gw)
        assert metric(text, "ebbtide_gateway_tokens_total", kind="completion", source="reported") == 4


def test_cli_static_mode_serves_and_bad_config_exits_2(vllm: BackgroundCluster, tmp_path: Any) -> None:
    import subprocess
    import sys
    import time

    pool_file = tmp_path / "pool.yaml"
    pool_file.write_text(
        "apiVersion: ebbtide.dev/v1alpha1\nkind: GPUPool\nmetadata: {name: chat}\n"
        "spec:\n  models: [chat-model]\n  target: {deployment: vllm, servedModel: standin-model}\n"
    )
    bad = subprocess.run([sys.executable, "-m", "controller.cli", "gateway", "--pool", str(pool_file), "--endpoints",
                          "other=127.0.0.1:1"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "unknown pools: other" in bad.stderr
    # Port 0 and the bound port read from the log: no race with other servers for a free port.
    args = [sys.executable, "-m", "controller.cli", "gateway", "--listen", "127.0.0.1:0", "--pool", str(pool_file),
            "--endpoints", f"chat=127.0.0.1:{vllm.ports[0]}", "--log-format", "text"]  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        port = 0
        deadline = time.monotonic() + 30
        while not port:
            line = process.stderr.readline()
            assert line and time.monotonic() < deadline, "the gateway did not come up"
            found = re.search(r"gateway serving on 127\.0\.0\.1:(\d+)", line)
            port = int(found.group(1)) if found else 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as ready:
            assert ready.status == 200
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        assert client.chat.completions.create(model="chat-model", messages=MESSAGES).choices[0].message.content
    finally:
        process.terminate()
        process.wait(10)
