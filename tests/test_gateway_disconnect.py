"""A client that disconnects cancels its upstream request: the stand-in vLLM counts an abort, the
stand-in provider records one, and the gateway's in-flight gauges return to zero."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from e2e.standin import BackgroundCluster, StandinConfig
from e2e.standin.provider import BackgroundProvider, ProviderConfig
from tests.gateway_support import gateway_for, make_pool, metric, provider, scrape_text, wait_until

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
