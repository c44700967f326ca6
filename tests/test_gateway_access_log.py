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
from tests.gateway_support import AppThread, gateway_for, make_pool, provider, recording_replica, wait_until

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


def test_the_request_id_is_returned_sent_to_the_replica_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS)
    settings = GatewaySettings(scrape_interval_seconds=0.2, check_priority=False, access_log=True)
    seen: list[dict[str, Any]] = []
    with (
        AppThread(recording_replica(seen, StandinConfig(output_tokens=2))) as replica,
        gateway_for([(make_pool(), [replica.address])], settings=settings) as gw,
    ):
        client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
        # The client's own id is kept; a hostile one is replaced; without one the gateway makes one.
        mine = client.chat.completions.with_raw_response.create(
            model="chat-model", messages=MESSAGES, extra_headers={"X-Request-Id": "req-42:a.b_c"}
        )
        hostile = client.chat.completions.with_raw_response.create(
            model="chat-model", messages=MESSAGES, extra_headers={"X-Request-Id": "bad id\twith spaces"}
        )
        made = client.chat.completions.with_raw_response.create(model="chat-model", messages=MESSAGES)
        with pytest.raises(openai.NotFoundError) as missing:
            client.chat.completions.create(model="no-such-model", messages=MESSAGES)
        wait_until(lambda: len(_lines(caplog)) == 4, what="four access lines")
    ids = [mine.headers["x-request-id"], hostile.headers["x-request-id"], made.headers["x-request-id"]]
    assert ids[0] == "req-42:a.b_c"
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids[1:]) and ids[1] != ids[2]
    sent = [{k.lower(): v for k, v in r["headers"].items()} for r in seen if r["path"] == "/v1/chat/completions"]
    assert [headers.get("x-request-id") for headers in sent] == ids
    error_id = missing.value.response.headers["x-request-id"]
    assert [r.fields["request_id"] for r in _lines(caplog)] == [*ids, error_id]  # type: ignore[attr-defined]
