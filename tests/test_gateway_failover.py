"""Fallback providers through the gateway: order, which failures move on, cooldown and Retry-After,
streams that fail before and after their first content event, spend and usage accounting.

Two stand-in providers (e2e/standin/provider) on loopback; the pool has no replica and a long cold
start, so every request goes straight to the fallback.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from e2e.standin.provider import VLLM_ONLY_FIELDS, BackgroundProvider, Fault, ProviderConfig
from tests.gateway_support import gateway_for, make_pool, metric, provider, scrape_text

pytestmark = pytest.mark.timeout(60)
MESSAGES: Any = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def providers() -> Iterator[tuple[BackgroundProvider, BackgroundProvider]]:
    with (
        BackgroundProvider(ProviderConfig(api_key="key-a")) as a,
        BackgroundProvider(ProviderConfig(api_key="key-b")) as b,
    ):
        yield a, b


@pytest.fixture
def pair(
    providers: tuple[BackgroundProvider, BackgroundProvider],
) -> Iterator[tuple[BackgroundProvider, BackgroundProvider]]:
    for p in providers:
        p.clear_faults()
        p.clear_requests()
        p.set_config(ProviderConfig(api_key=p.provider.config.api_key))
        p.start_listening()
    yield providers
    for p in providers:
        p.clear_faults()


def _gateway(pair: tuple[BackgroundProvider, BackgroundProvider], **first: Any) -> Any:
    a, b = pair
    pool = make_pool(
        providers=[
            provider("a", a.base_url, inputUsdPerMillion=2, outputUsdPerMillion=10, **first),
            provider("b", b.base_url, inputUsdPerMillion=1, outputUsdPerMillion=5),
        ]
    )
    return gateway_for([(pool, [])], provider_keys={"a": "key-a", "b": "key-b"})


def _chat(gw: Any, **kwargs: Any) -> Any:
    client = openai.OpenAI(base_url=gw.base_url, api_key="client-secret", max_retries=0)
    return client.chat.completions.with_raw_response.create(model="chat-model", messages=MESSAGES, **kwargs)


@pytest.mark.parametrize("fault", [Fault.http(500), Fault.http(502), Fault.http(503), Fault.http(529),
                                   Fault.http(408), Fault.drop()])  # fmt: skip
def test_failover_to_the_next_provider_and_cooldown_skips_the_failed_one(pair: Any, fault: Fault) -> None:
    a, b = pair
    a.fail_next(fault)
    with _gateway(pair) as gw:
        first = _chat(gw)
        assert first.headers["x-ebbtide-provider"] == "b" and first.headers["x-ebbtide-route"] == "fallback"
        assert first.parse().choices[0].message.content == " tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7"
        second = _chat(gw)
        assert second.headers["x-ebbtide-provider"] == "b", "a cools down (5 s) after its failure"
        assert len(a.requests) == 1 and len(b.requests) == 2
        text = scrape_text(gw)
        assert metric(text, "ebbtide_gateway_provider_failures_total", provider="a") == 1


def test_retry_after_sets_the_cooldown_and_the_provider_is_probed_again(pair: Any) -> None:
    a, b = pair
    a.fail_next(Fault.http(429, retry_after=1))
    with _gateway(pair) as gw:
        assert _chat(gw).headers["x-ebbtide-provider"] == "b"
        assert _chat(gw).headers["x-ebbtide-provider"] == "b"
        time.sleep(1.1)
        assert _chat(gw).headers["x-ebbtide-provider"] == "a", "after Retry-After the first provider is tried again"
        assert _chat(gw).headers["x-ebbtide-provider"] == "a"
        assert len(a.requests) == 3 and len(b.requests) == 2


@pytest.mark.parametrize("status", [400, 404, 422])
def test_no_failover_on_the_requests_own_errors(pair: Any, status: int) -> None:
    a, b = pair
    a.fail_next(Fault.http(status))
    with _gateway(pair) as gw, pytest.raises(openai.APIStatusError) as err:
        _chat(gw)
    assert err.value.status_code == status and len(b.requests) == 0
    assert isinstance(err.value.body, dict) and set(err.value.body) >= {"message", "type"}


@pytest.mark.parametrize("status", [401, 403])
def test_a_provider_refusing_the_gateways_key_is_a_502_not_the_clients_fault(pair: Any, status: int) -> None:
    a, b = pair
    a.fail_next(Fault.http(status))
    with _gateway(pair) as gw, pytest.raises(openai.APIStatusError) as err:
        _chat(gw)
    assert err.value.status_code == 502 and "refused the gateway's credentials" in err.value.message
    assert len(b.requests) == 0


def test_client_key_never_forwarded_and_vllm_fields_stripped(pair: Any) -> None:
    a, _ = pair
    a.set_config(ProviderConfig(api_key="key-a", rejected_fields=VLLM_ONLY_FIELDS))
    with _gateway(pair) as gw:
        answer = _chat(gw, extra_body={"top_k": 4, "priority": 5, "min_p": 0.1, "repetition_penalty": 1.1})
        assert answer.headers["x-ebbtide-provider"] == "a"
    [seen] = a.requests
    assert seen.headers["Authorization"] == "Bearer key-a"
    assert "client-secret" not in str(dict(seen.headers)) and not set(seen.body) & VLLM_ONLY_FIELDS
    assert seen.body["model"] == "paid-model"


@pytest.mark.parametrize("in_band", [False, True])
def test_stream_failing_before_its_first_content_moves_to_the_next_provider(pair: Any, in_band: bool) -> None:
    a, b = pair
    a.fail_next(Fault.fail_before_content(in_band=in_band))
    with _gateway(pair) as gw:
        client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
        chunks = list(client.chat.completions.create(model="chat-model", messages=MESSAGES, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7", "one provider's stream, whole, never spliced"
    assert [c.choices[0].delta.role for c in chunks if c.choices and c.choices[0].delta.role] == ["assistant"]
    assert len(a.requests) == 1 and len(b.requests) == 1


@pytest.mark.parametrize("in_band", [False, True])
def test_stream_failing_after_its_first_content_ends_with_an_error_event(pair: Any, in_band: bool) -> None:
    a, b = pair
    a.fail_next(Fault.fail_after_content(2, in_band=in_band))
    with _gateway(pair) as gw:
        client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
        got: list[str] = []
        with pytest.raises(openai.APIError):
            for chunk in client.chat.completions.create(model="chat-model", messages=MESSAGES, stream=True):
                if chunk.choices:
                    got.append(chunk.choices[0].delta.content or "")
        assert "".join(got) == " tok0 tok1"
        assert len(b.requests) == 0, "a stream under way never moves to another provider"
        assert _chat(gw).headers["x-ebbtide-provider"] == "b", "the broken provider cools down"
        assert metric(scrape_text(gw), "ebbtide_gateway_provider_failures_total", reason="stream-broken") == 1


def test_connect_refused_and_first_byte_timeout_move_on(pair: Any) -> None:
    a, _ = pair
    a.stop_listening()
    with _gateway(pair) as gw:
        assert _chat(gw).headers["x-ebbtide-provider"] == "b"
    a.start_listening()
    a.fail_next(Fault.delay(3))
    with _gateway(pair, firstByteTimeoutSeconds=0.3) as gw:
        started = time.monotonic()
        assert _chat(gw).headers["x-ebbtide-provider"] == "b"
        assert time.monotonic() - started < 2.5


def test_every_provider_failing_is_a_clear_error_with_the_right_status(pair: Any) -> None:
    a, b = pair
    a.fail_next(Fault.http(503))
    b.fail_next(Fault.http(503))
    with _gateway(pair) as gw:
        with pytest.raises(openai.APIStatusError) as err:
            _chat(gw)
        assert err.value.status_code == 503 and "every fallback provider failed" in err.value.message
        assert err.value.body["code"] == "fallback_failed"  # type: ignore[index]
        with pytest.raises(openai.APIStatusError) as cooling:
            _chat(gw)  # both cool down now: nothing to try, no replica to hold for
        assert cooling.value.status_code == 503
        assert metric(scrape_text(gw), "ebbtide_gateway_requests_total", route="rejected") == 2
    a.fail_next(Fault.http(429, retry_after=7))
    b.fail_next(Fault.http(429, retry_after=3))
    with _gateway(pair) as gw, pytest.raises(openai.RateLimitError) as limited:
        _chat(gw)
    assert limited.value.response.headers["retry-after"] == "3"


def test_spend_and_tokens_reported_and_estimated(pair: Any) -> None:
    a, _ = pair
    with _gateway(pair) as gw:
        usage = _chat(gw, max_tokens=4).parse().usage
        assert usage is not None
        streamed = list(openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0).chat.completions.create(
            model="chat-model", messages=MESSAGES, stream=True, max_tokens=3))  # fmt: skip
        assert all(c.usage is None for c in streamed)
        a.fail_next(Fault.no_usage())
        _chat(gw, max_tokens=2)
        text = scrape_text(gw)
    prompt = usage.prompt_tokens
    reported = {"route": "fallback", "source": "reported"}
    assert metric(text, "ebbtide_gateway_tokens_total", kind="prompt", **reported) == 2 * prompt
    assert metric(text, "ebbtide_gateway_tokens_total", kind="completion", **reported) == 4 + 3
    estimated = {"route": "fallback", "source": "estimated"}
    estimated_prompt = metric(text, "ebbtide_gateway_tokens_total", kind="prompt", **estimated)
    estimated_completion = metric(text, "ebbtide_gateway_tokens_total", kind="completion", **estimated)
    assert estimated_prompt > 0 and estimated_completion == 2, "8 characters of text: about 2 tokens"
    assert metric(text, "ebbtide_gateway_fallback_usd_total", provider="a") == pytest.approx(
        ((2 * prompt + estimated_prompt) * 2 + (7 + estimated_completion) * 10) / 1e6
    )
    assert metric(text, "ebbtide_gateway_saturation_requests_total") == 0, "no replica was Ready: not saturation"
