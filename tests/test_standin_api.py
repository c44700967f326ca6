"""The official openai client against the stand-in: vLLM's API shapes, plain and streaming."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from controller.scrape import EngineSample, scrape_vllm
from e2e.standin import BackgroundCluster, StandinConfig

# A high token rate keeps each request to a few milliseconds.
CONFIG = StandinConfig(model_name="tiny-llama", tokens_per_second=5_000, output_tokens=12)


@pytest.fixture(scope="module")
def standin() -> Iterator[BackgroundCluster]:
    with BackgroundCluster(CONFIG) as cluster:
        yield cluster


@pytest.fixture
def client(standin: BackgroundCluster) -> Iterator[openai.OpenAI]:
    url = standin.url(standin.ports[0]) + "/v1"
    with openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=10) as c:
        yield c


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny-llama"]
    assert models.data[0].owned_by == "vllm"


def test_completion(client: openai.OpenAI) -> None:
    out = client.completions.create(model="tiny-llama", prompt="the tide comes in", max_tokens=5)
    assert out.id.startswith("cmpl-")
    assert out.object == "text_completion"
    assert out.choices[0].finish_reason == "length"
    assert len(out.choices[0].text.split()) == 5
    assert out.usage is not None
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (4, 5, 9)


def test_completion_stops_on_its_own_without_max_tokens(client: openai.OpenAI) -> None:
    out = client.completions.create(model="tiny-llama", prompt="hello")
    assert out.choices[0].finish_reason == "stop"
    assert out.usage is not None and out.usage.completion_tokens == CONFIG.output_tokens


def test_chat_completion(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(
        model="tiny-llama",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        max_completion_tokens=3,
    )
    assert out.id.startswith("chatcmpl-")
    assert out.choices[0].message.role == "assistant"
    assert len((out.choices[0].message.content or "").split()) == 3
    assert out.choices[0].finish_reason == "length"
    assert out.usage is not None and out.usage.completion_tokens == 3


def test_streaming_completion_with_usage(client: openai.OpenAI) -> None:
    stream = client.completions.create(
        model="tiny-llama", prompt="a b c", max_tokens=4, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert len(text.split()) == 4
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and chunks[-1].usage is not None and not chunks[-1].choices
    assert (usage[0].prompt_tokens, usage[0].completion_tokens) == (3, 4)


def test_streaming_chat_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="tiny-llama",
        messages=[{"role": "user", "content": "tell me about tides"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(content.split()) == CONFIG.output_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == CONFIG.output_tokens


def test_streaming_without_include_usage_sends_no_usage(client: openai.OpenAI) -> None:
    chunks = list(client.completions.create(model="tiny-llama", prompt="x", max_tokens=2, stream=True))
    assert all(c.usage is None for c in chunks)


def test_unknown_model_is_404_like_vllm(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="gpt-nope", prompt="x")
    assert err.value.status_code == 404
    body = err.value.body
    assert isinstance(body, dict) and body.get("code") == 404


def test_bad_request_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny-llama", prompt="x", max_tokens=-1)


def test_health_and_metrics_count_what_was_served(standin: BackgroundCluster) -> None:
    url = standin.url(standin.ports[0])
    with httpx.Client() as http, openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as oc:
        assert http.get(url + "/health").status_code == 200
        before = scrape_vllm(url + "/metrics", client=http, model_name="tiny-llama")
        oc.completions.create(model="tiny-llama", prompt="one two three", max_tokens=7)
        after = scrape_vllm(url + "/metrics", client=http, model_name="tiny-llama")
    assert isinstance(before, EngineSample) and isinstance(after, EngineSample)
    assert before.prompt_tokens_total is not None and after.prompt_tokens_total is not None
    assert after.prompt_tokens_total - before.prompt_tokens_total == 3
    assert before.generation_tokens_total is not None and after.generation_tokens_total is not None
    assert after.generation_tokens_total - before.generation_tokens_total == 7
    assert before.request_success_total is not None and after.request_success_total is not None
    assert after.request_success_total - before.request_success_total == 1
    assert (after.waiting, after.running) == (0, 0)
