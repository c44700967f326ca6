"""The gateway's access log (`--access-log`): one line per generation request, real gateway and stand-ins
on loopback, the official `openai` client; the lines as the log handler gets them."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from e2e.standin import BackgroundCluster, StandinConfig
from e2e.standin.provider import BackgroundProvider, ProviderConfig
from gateway import GatewaySettings
from gateway.logs import JsonFormatter
from tests.gateway_support import gateway_for, make_pool, provider, wait_until

pytestmark = pytest.mark.timeout(60)
MESSAGES: Any = [{"role": "user", "content": "a secret prompt"}]
ACCESS = "ebbtide.gateway.access"


@pytest.fixture(scope="module")
def slow_vllm() -> Iterator[BackgroundCluster]:
    with BackgroundCluster(StandinConfig(tokens_per_second=20, output_tokens=40)) as cluster:
        yield cluster


def _lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == ACCESS]


def test_each_request_gets_one_line_saying_where_it_went(
    slow_vllm: BackgroundCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS)
    settings = GatewaySettings(scrape_interval_seconds=0.2, check_priority=False, access_log=True)
    address = slow_vllm.url(slow_vllm.ports[0]).removeprefix("http://")
    with BackgroundProvider(ProviderConfig(output_tokens=4)) as paid:
        gpu_pool = make_pool(name="chat", providers=[provider("paid", paid.base_url)])
        # No replica and a cold start longer than the objective: straight to the provider.
        api_pool = make_pool(name="api", providers=[provider("paid", paid.base_url)], spec={"models": ["api-model"]})
        with gateway_for([(gpu_pool, [address]), (api_pool, [])], settings=settings) as gw:
            client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
            client.chat.completions.create(model="chat-model", messages=MESSAGES, max_tokens=2)
            list(client.chat.completions.create(model="api-model", messages=MESSAGES, stream=True))
            with pytest.raises(openai.NotFoundError):
                client.chat.completions.create(model="no-such-model", messages=MESSAGES)
            stream = client.chat.completions.create(model="chat-model", messages=MESSAGES, stream=True)
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    break
            stream.close()  # the client leaves mid-stream
            wait_until(lambda: len(_lines(caplog)) == 4, what="four access lines")
    fields = [r.fields for r in _lines(caplog)]  # type: ignore[attr-defined]
    gpu, api, unknown, left = fields
    assert gpu["pool"] == "default/chat" and gpu["model"] == "chat-model"
    assert (gpu["route"], gpu["status"], gpu["stream"]) == ("gpu", 200, False)
    assert gpu["seconds"] >= 2 / 20 * 0.5  # two tokens at 20/s, give or take the stand-in's pacing
    assert (api["route"], api["provider"], api["status"], api["stream"]) == ("fallback", "paid", 200, True)
    assert unknown["status"] == 404 and unknown["error"] == "model_not_found" and unknown["pool"] is None
    assert left["status"] == 499 and left["stream"] is True and left["pool"] == "default/chat"
    # Never the prompt; in JSON every field is a key of its own.
    formatted = [JsonFormatter().format(r) for r in _lines(caplog)]
    assert not any("secret" in line for line in formatted)
    assert json.loads(formatted[1])["provider"] == "paid" and json.loads(formatted[1])["logger"] == ACCESS


def test_off_by_default(slow_vllm: BackgroundCluster, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS)
    address = slow_vllm.url(slow_vllm.ports[0]).removeprefix("http://")
    with gateway_for([(make_pool(), [address])]) as gw:
        client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
        client.chat.completions.create(model="chat-model", messages=MESSAGES, max_tokens=1)
    assert GatewaySettings().access_log is False and _lines(caplog) == []
