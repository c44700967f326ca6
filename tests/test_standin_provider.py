"""The stand-in paid provider through the official openai client: answers, usage, every
injected fault, connect refusal, and what it records (headers, bodies, aborts)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from e2e.standin.provider import VLLM_ONLY_FIELDS, BackgroundProvider, Fault, ProviderConfig

KEY = "sk-standin-test"
CONFIG = ProviderConfig(models=frozenset({"paid-model"}), api_key=KEY, output_tokens=5)
MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "how high is the tide"}]


@pytest.fixture(scope="module")
def background() -> Iterator[BackgroundProvider]:
    with BackgroundProvider(CONFIG) as provider:
        yield provider


@pytest.fixture
def provider(background: BackgroundProvider) -> Iterator[BackgroundProvider]:
    background.set_config(CONFIG)
    background.clear_faults()
    background.clear_requests()
    yield background


@pytest.fixture
def client(provider: BackgroundProvider) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=provider.base_url, api_key=KEY, max_retries=0, timeout=10) as c:
        yield c


def test_chat_and_completion_with_usage(client: openai.OpenAI, provider: BackgroundProvider) -> None:
    chat = client.chat.completions.create(model="paid-model", messages=MESSAGES, max_tokens=3)
    assert chat.choices[0].message.content == " tok0 tok1 tok2"
    assert chat.choices[0].finish_reason == "length"
    assert chat.usage is not None
    assert (chat.usage.prompt_tokens, chat.usage.completion_tokens) == (5 + 4, 3)
    text = client.completions.create(model="paid-model", prompt="one two three")
    assert text.choices[0].text == " tok0 tok1 tok2 tok3 tok4"
    assert text.usage is not None and text.usage.prompt_tokens == 3 and text.usage.completion_tokens == 5
    assert [m.id for m in client.models.list().data] == ["paid-model"]
    seen = provider.requests
    assert [r.path for r in seen] == ["/v1/chat/completions", "/v1/completions"]
    assert seen[0].headers["Authorization"] == f"Bearer {KEY}"
    assert seen[0].body == {"model": "paid-model", "messages": MESSAGES, "max_tokens": 3}
    assert all(r.status == 200 and r.completed and not r.aborted for r in seen)


def test_stream_sends_usage_only_when_asked(client: openai.OpenAI) -> None:
    plain = list(client.chat.completions.create(model="paid-model", messages=MESSAGES, stream=True))
    assert all(c.usage is None for c in plain)
    assert "".join(c.choices[0].delta.content or "" for c in plain if c.choices) == " tok0 tok1 tok2 tok3 tok4"
    counted = list(
        client.chat.completions.create(
            model="paid-model", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert counted[-1].choices == [] and counted[-1].usage is not None
    assert counted[-1].usage.completion_tokens == 5
    texts = list(client.completions.create(model="paid-model", prompt="a b", stream=True, max_tokens=2))
    assert "".join(c.choices[0].text for c in texts if c.choices) == " tok0 tok1"


def test_async_client_streams() -> None:
    async def run(base_url: str) -> str:
        async with openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=10) as aclient:
            stream = await aclient.chat.completions.create(model="paid-model", messages=MESSAGES, stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    with BackgroundProvider(CONFIG) as provider:
        assert asyncio.run(run(provider.base_url)) == " tok0 tok1 tok2 tok3 tok4"


def test_wrong_key_unknown_model_and_rejected_fields(client: openai.OpenAI, provider: BackgroundProvider) -> None:
    with (
        openai.OpenAI(base_url=provider.base_url, api_key="wrong", max_retries=0) as bad,
        pytest.raises(openai.AuthenticationError),
    ):
        bad.chat.completions.create(model="paid-model", messages=MESSAGES)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpu-model", messages=MESSAGES)
    assert missing.value.code == "model_not_found"
    provider.set_config(ProviderConfig(api_key=KEY, rejected_fields=VLLM_ONLY_FIELDS))
    with pytest.raises(openai.BadRequestError, match="priority"):
        client.chat.completions.create(model="paid-model", messages=MESSAGES, extra_body={"priority": 5})
    assert [r.status for r in provider.requests] == [401, 404, 400]


@pytest.mark.parametrize("status", [400, 408, 500, 503, 529])
def test_injected_status_for_the_next_request_only(
    client: openai.OpenAI, provider: BackgroundProvider, status: int
) -> None:
    provider.fail_next(Fault.http(status))
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="paid-model", messages=MESSAGES)
    assert failed.value.status_code == status
    assert failed.value.body is not None and "message" in failed.value.body  # type: ignore[operator]
    assert client.chat.completions.create(model="paid-model", messages=MESSAGES).choices
    assert [r.status for r in provider.requests] == [status, 200]


def test_429_with_retry_after_then_always_then_cleared(client: openai.OpenAI, provider: BackgroundProvider) -> None:
    provider.fail_next(Fault.http(429, retry_after=7), count=2)
    provider.fail_always(Fault.http(503))
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as limited:
            client.chat.completions.create(model="paid-model", messages=MESSAGES)
        assert limited.value.response.headers["Retry-After"] == "7"
    for _ in range(3):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="paid-model", messages=MESSAGES)
    provider.clear_faults()
    assert client.chat.completions.create(model="paid-model", messages=MESSAGES).choices


def test_drop_and_connect_refusal(client: openai.OpenAI, provider: BackgroundProvider) -> None:
    provider.fail_next(Fault.drop())
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="paid-model", messages=MESSAGES)
    assert provider.requests[0].status is None and not provider.requests[0].aborted
    provider.stop_listening()
    try:
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", provider.port), timeout=2):
            pass
    finally:
        assert provider.start_listening() == provider.port
    assert client.chat.completions.create(model="paid-model", messages=MESSAGES).choices


def test_delay_before_first_byte(client: openai.OpenAI, provider: BackgroundProvider) -> None:
    provider.fail_next(Fault.delay(0.4))
    started = time.monotonic()
    client.chat.completions.create(model="paid-model", messages=MESSAGES)
    assert time.monotonic() - started >= 0.4
    provider.fail_next(Fault.delay(5))
    with (
        openai.OpenAI(base_url=provider.base_url, api_key=KEY, max_retries=0, timeout=0.3) as impatient,
        pytest.raises(openai.APITimeoutError),
    ):
        impatient.chat.completions.create(model="paid-model", messages=MESSAGES)
    provider.wait_for(lambda rs: len(rs) == 2 and rs[1].aborted)


def _events(provider: BackgroundProvider, body: dict[str, object]) -> tuple[list[str], bool]:
    """Raw SSE data lines of a stream, and whether the connection was cut."""
    lines: list[str] = []
    cut = False
    headers = {"Authorization": f"Bearer {KEY}"}
    with (
        httpx.Client(timeout=5) as http,
        http.stream("POST", provider.base_url + "/chat/completions", json=body, headers=headers) as response,
    ):
        assert response.status_code == 200
        try:
            lines.extend(line for line in response.iter_lines() if line)
        except httpx.HTTPError:
            cut = True
    return lines, cut


def test_stream_failing_before_and_after_the_first_content_event(provider: BackgroundProvider) -> None:
    body: dict[str, object] = {"model": "paid-model", "messages": MESSAGES, "stream": True}
    provider.fail_next(Fault.fail_before_content())
    lines, cut = _events(provider, body)
    assert cut and len(lines) == 1 and '"role":"assistant"' in lines[0] and "tok" not in lines[0]
    provider.fail_next(Fault.fail_after_content(2))
    lines, cut = _events(provider, body)
    assert cut and len(lines) == 3 and "tok1" in lines[2]
    provider.fail_next(Fault.fail_after_content(1, in_band=True))
    lines, cut = _events(provider, body)
    assert not cut and lines[-1].startswith('data: {"error"') and "tok0" in lines[1] and "[DONE]" not in lines[-1]
    assert [r.completed or r.aborted for r in provider.requests] == [False, False, False]


def test_stream_fault_on_a_plain_request_drops_it(client: openai.OpenAI, provider: BackgroundProvider) -> None:
    provider.fail_next(Fault.fail_after_content())
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="paid-model", messages=MESSAGES)


def test_missing_usage(client: openai.OpenAI, provider: BackgroundProvider) -> None:
    provider.fail_next(Fault.no_usage(), count=2)
    assert client.chat.completions.create(model="paid-model", messages=MESSAGES).usage is None
    chunks = list(
        client.chat.completions.create(
            model="paid-model", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(c.usage is None for c in chunks) and chunks[-1].choices


def test_client_leaving_a_slow_stream_is_recorded_as_aborted(
    client: openai.OpenAI, provider: BackgroundProvider
) -> None:
    provider.fail_next(Fault.slow(0.5))
    stream = client.chat.completions.create(model="paid-model", messages=MESSAGES, stream=True)
    next(iter(stream))
    stream.close()
    aborted = provider.wait_for(lambda rs: bool(rs) and rs[0].aborted, timeout=5)
    assert not aborted[0].completed and aborted[0].fault == Fault.slow(0.5)
    assert client.chat.completions.create(model="paid-model", messages=MESSAGES).choices


def test_bad_json_is_a_400_and_recorded(provider: BackgroundProvider) -> None:
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    answer = httpx.post(provider.base_url + "/chat/completions", content=b"{not json", headers=headers)
    assert answer.status_code == 400 and answer.json()["error"]["type"] == "invalid_request_error"
    assert provider.requests[0].body is None and provider.requests[0].status == 400


def test_fail_next_needs_a_positive_count(provider: BackgroundProvider) -> None:
    with pytest.raises(ValueError, match="count"):
        provider.fail_next(Fault.drop(), count=0)
