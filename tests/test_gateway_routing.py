"""Routing through route_request on real queues: overflow starts when the stand-in vLLM's queue passes
the pool's limit and stops when it drains; vLLM's 503 goes to the fallback; the late lane's `priority`
reaches vLLM, is checked at start, and never reaches a paid provider."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from aiohttp import web

from e2e.standin import BackgroundCluster, StandinConfig
from e2e.standin.provider import VLLM_ONLY_FIELDS, BackgroundProvider, ProviderConfig
from gateway import GatewaySettings
from tests.gateway_support import (
    AppThread,
    gateway_for,
    make_pool,
    metric,
    provider,
    recording_replica,
    scrape_text,
    wait_until,
)

pytestmark = pytest.mark.timeout(90)
MESSAGES: Any = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def paid() -> Iterator[BackgroundProvider]:
    with BackgroundProvider(ProviderConfig(rejected_fields=VLLM_ONLY_FIELDS)) as p:
        yield p


def _route(gw: Any, timeout: float = 60.0, messages: Any = MESSAGES, **kwargs: Any) -> str:
    client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0, timeout=timeout)
    raw = client.chat.completions.with_raw_response.create(
        model="chat-model", messages=messages, max_tokens=4, **kwargs
    )
    raw.parse()
    return str(raw.headers["x-ebbtide-route"])


def _direct(url: str, count: int) -> list[threading.Thread]:
    """Requests sent straight to the replica (another gateway, another client): they fill its queue."""

    def one() -> None:
        # A replica stopped at the end of a test cuts these off: that is not what the test checks.
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(f"{url}/v1/completions", json={"model": "standin-model", "prompt": "x"}, timeout=60)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(count)]
    for t in threads:
        t.start()
    return threads


def _engine_queue(url: str) -> tuple[float, float]:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return metric(text, "vllm:num_requests_waiting"), metric(text, "vllm:num_requests_running")


def test_overflow_starts_when_the_queue_passes_the_limit_and_stops_when_it_drains(paid: BackgroundProvider) -> None:
    # 1000 tokens/s and a 2 s wait limit: about four requests (at the first estimate of ~500 tokens each)
    # ahead of a new one is the limit; the objective is loose so only the wait limit binds.
    spec = {"demand": {"replicaTokensPerSecond": 1000}, "fallback": {"maxQueueWaitSeconds": 2},
            "objective": {"ttftSeconds": 60}}  # fmt: skip
    with BackgroundCluster(StandinConfig(max_num_seqs=4, output_tokens=4)) as vllm:
        url = vllm.url(vllm.ports[0])
        pool = make_pool(providers=[provider("paid", paid.base_url)], spec=spec)
        with gateway_for([(pool, [url.removeprefix("http://")])]) as gw:
            assert _route(gw) == "gpu"
            vllm.pause()
            early = _direct(url, 2)
            wait_until(lambda: _engine_queue(url) == (0, 2), what="two requests running on the engine")
            time.sleep(0.5)  # a few scrape rounds
            below: dict[str, str] = {}
            held_back = threading.Thread(target=lambda: below.update(route=_route(gw)), daemon=True)
            held_back.start()  # two ahead: still within the limit, it queues on the (paused) replica
            wait_until(lambda: _engine_queue(url) == (0, 3), what="the gateway's request on the engine")
            late = _direct(url, 8)
            wait_until(lambda: _engine_queue(url) == (7, 4), what="the engine's queue past the limit")
            time.sleep(0.5)
            assert _route(gw) == "fallback"
            assert _route(gw, stream=False) == "fallback"
            text = scrape_text(gw)
            assert metric(text, "ebbtide_gateway_saturation_requests_total", pool="chat") == 2
            assert metric(text, "ebbtide_gateway_saturation_tokens_total", kind="completion") > 0
            vllm.resume()
            for t in [*early, *late, held_back]:
                t.join(30)
            assert below == {"route": "gpu"}
            wait_until(lambda: _engine_queue(url) == (0, 0), what="the queue drained")
            time.sleep(0.5)
            assert _route(gw) == "gpu", "the queue drained: back on the GPUs"


def test_vllm_503_at_its_queue_limit_goes_to_the_fallback_without_the_late_lanes_priority(
    paid: BackgroundProvider,
) -> None:
    seen: list[dict[str, Any]] = []
    # One slot and no waiting room; a slow request holds the slot while the test runs.
    config = StandinConfig(max_num_seqs=1, max_num_queued_reqs=1, tokens_per_second=2, output_tokens=20)
    with AppThread(recording_replica(seen, config)) as replica:
        url = f"http://{replica.address}"
        _direct(url, 1)
        wait_until(lambda: _engine_queue(url) == (0, 1), what="the engine full")
        # The engine's one running request (~500 tokens at 100 tokens/s) makes a new one late for a 1 s
        # objective but within the 30 s wait: it is sent in the late lane, with vLLM's priority.
        spec = {"demand": {"replicaTokensPerSecond": 100},
                "fallback": {"maxQueueWaitSeconds": 30, "takeLateRequests": False},
                "objective": {"ttftSeconds": 1.0}}  # fmt: skip
        pool = make_pool(providers=[provider("paid", paid.base_url)], spec=spec)
        with gateway_for([(pool, [replica.address])]) as gw:
            paid.clear_requests()
            time.sleep(0.5)
            assert _route(gw, extra_body={"top_k": 2}) == "fallback"
            assert metric(scrape_text(gw), "ebbtide_gateway_saturation_requests_total") == 1
        sent = seen[-1]["body"]
        assert sent["priority"] == 1 and sent["top_k"] == 2, "vLLM got the late lane's priority (and its own field)"
        # The provider answers 400 to any vLLM-only field: it got none.
        assert not set(paid.requests[-1].body) & VLLM_ONLY_FIELDS


def test_a_request_late_on_the_gpus_goes_to_the_open_fallback_and_is_not_saturation(
    paid: BackgroundProvider,
) -> None:
    seen: list[dict[str, Any]] = []
    config = StandinConfig(max_num_seqs=1, tokens_per_second=2, output_tokens=20)
    with AppThread(recording_replica(seen, config)) as replica:
        url = f"http://{replica.address}"
        _direct(url, 1)
        wait_until(lambda: _engine_queue(url) == (0, 1), what="the engine busy")
        # As above, the running request makes a new one late for the 1 s objective, well within the 30 s
        # wait; with the fallback open (`takeLateRequests`, the default) it is served there on time.
        spec = {"demand": {"replicaTokensPerSecond": 100}, "fallback": {"maxQueueWaitSeconds": 30},
                "objective": {"ttftSeconds": 1.0}}  # fmt: skip
        pool = make_pool(providers=[provider("paid", paid.base_url)], spec=spec)
        with gateway_for([(pool, [replica.address])]) as gw:
            paid.clear_requests()
            time.sleep(0.5)
            before = len(seen)
            assert _route(gw) == "fallback"
            text = scrape_text(gw)
            assert metric(text, "ebbtide_gateway_saturation_requests_total") == 0, "more replicas would not help"
            assert len(paid.requests) == 1 and len(seen) == before, "sent once, to the provider only"


@pytest.mark.parametrize("take_late", [True, False])
def test_a_prompt_longer_than_the_objective_is_counted_apart_only_when_the_fallback_takes_it(
    paid: BackgroundProvider, take_late: bool
) -> None:
    # At 100 tokens/s a prompt of ~1,000 tokens takes ~10 s to prefill: late for a 1 s objective on any
    # number of replicas. "hi" (~25 tokens of body) is on time on the idle replica.
    long_prompt = [{"role": "user", "content": "tide " * 800}]
    spec = {"demand": {"replicaTokensPerSecond": 100},
            "fallback": {"maxQueueWaitSeconds": 30, "takeLateRequests": take_late},
            "objective": {"ttftSeconds": 1.0}}  # fmt: skip
    with AppThread(recording_replica([], StandinConfig(output_tokens=2))) as replica:
        pool = make_pool(providers=[provider("paid", paid.base_url)], spec=spec)
        with gateway_for([(pool, [replica.address])]) as gw:
            time.sleep(0.5)  # a scrape round: the replica is routable
            assert _route(gw) == "gpu"
            assert _route(gw, messages=long_prompt) == ("fallback" if take_late else "gpu-late")
            text = scrape_text(gw)
    beyond = metric(text, "ebbtide_gateway_beyond_objective_tokens_total", kind="prompt")
    if take_late:
        # Every prompt token the fallback served is of that request, and none of the GPU's request.
        assert beyond > 0
        assert beyond == metric(text, "ebbtide_gateway_tokens_total", route="fallback", kind="prompt")
        assert metric(text, "ebbtide_gateway_beyond_objective_tokens_total", kind="completion") == metric(
            text, "ebbtide_gateway_tokens_total", route="fallback", kind="completion"
        )
        assert metric(text, "ebbtide_gateway_saturation_requests_total") == 0
    else:
        assert beyond == 0, "served on the GPUs (late lane): it is demand for them"


def test_late_lane_priority_reaches_vllm_and_the_start_check_sees_it_accepted() -> None:
    seen: list[dict[str, Any]] = []
    # 30 tokens/s and a 1 s objective: a request of ~25 prompt tokens has ~0.2 s of wait to spare, so
    # one request ahead of it (~29 tokens of work, ~1 s) makes it late; the wait limit (30 s) is not hit.
    spec = {"demand": {"replicaTokensPerSecond": 30}, "fallback": {"maxQueueWaitSeconds": 30},
            "objective": {"ttftSeconds": 1.0}}  # fmt: skip
    config = StandinConfig(tokens_per_second=4, output_tokens=4)
    settings = GatewaySettings(scrape_interval_seconds=0.2, check_priority=True)
    with (
        AppThread(recording_replica(seen, config)) as replica,
        gateway_for([(make_pool(spec=spec), [replica.address])], settings=settings) as gw,
    ):
        wait_until(lambda: any(s["body"].get("prompt") == "ping" for s in seen), what="the priority check")
        [probe] = [s for s in seen if s["body"].get("prompt") == "ping"]
        assert probe["body"]["priority"] == 1 and probe["body"]["max_tokens"] == 1
        seen.clear()
        first: dict[str, str] = {}
        runner = threading.Thread(target=lambda: first.update(route=_route(gw)), daemon=True)
        runner.start()
        wait_until(lambda: len(seen) == 1, what="the first request at the replica")
        assert _route(gw, extra_body={"priority": -50}) == "gpu-late"
        runner.join(30)
    assert first == {"route": "gpu"}
    on_time, late = seen
    assert "priority" not in on_time["body"], "the normal lane sends vLLM's default priority (0)"
    assert late["body"]["priority"] == 1, "the late lane's larger number; the client's own -50 is not kept"
    assert "authorization" not in {k.lower() for k in late["headers"]}


def _refusing_priority() -> web.Application:
    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        if "priority" in body:
            error = {"message": "Priority scheduling is not enabled.", "type": "BadRequestError", "param": None}
            return web.json_response({"error": {**error, "code": 400}}, status=400)
        choice = {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        answer = {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [choice]}
        return web.json_response({**answer, "usage": usage})

    async def metrics(request: web.Request) -> web.Response:
        # Others' requests on the engine: they make every new request late (but within the wait limit).
        return web.Response(text="vllm:num_requests_waiting 3\nvllm:num_requests_running 1\n")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", chat)
    app.router.add_get("/metrics", metrics)
    return app


def test_an_engine_refusing_priority_still_serves_the_late_lane_in_fifo_order() -> None:
    spec = {"demand": {"replicaTokensPerSecond": 1000}, "fallback": {"maxQueueWaitSeconds": 30},
            "objective": {"ttftSeconds": 1.0}}  # fmt: skip
    settings = GatewaySettings(scrape_interval_seconds=0.2, check_priority=True)
    with AppThread(_refusing_priority) as replica, gateway_for([(make_pool(spec=spec), [replica.address])],
                                                                 settings=settings) as gw:  # fmt: skip
        endpoint = gw.run(lambda: next(iter(gw.gateway.directory.pools[("default", "chat")].endpoints.values())))
        wait_until(lambda: endpoint.priority_ok is False, what="the start check to see priority refused")
        assert _route(gw) == "gpu-late"


@pytest.mark.parametrize("on_cap", ["queue", "reject"])
def test_the_gateway_obeys_a_fallback_closed_by_the_daily_cap(paid: BackgroundProvider, on_cap: str) -> None:
    # The replica reports four requests of others: at 100 tokens/s that is far past the 1 s wait limit.
    spec = {
        "demand": {"replicaTokensPerSecond": 100},
        "fallback": {"maxQueueWaitSeconds": 1},
        "objective": {"ttftSeconds": 1.0},
        "budget": {"maxFallbackUsdPerDay": 5, "onFallbackCap": on_cap},
    }
    pool = make_pool(providers=[provider("paid", paid.base_url)], spec=spec)
    with AppThread(_refusing_priority) as replica, gateway_for([(pool, [replica.address])]) as gw:
        time.sleep(0.5)
        assert _route(gw) == "fallback"
        directory = gw.gateway.directory
        gw.run(lambda: directory.set_pool(pool, [("r-0", replica.address)], fallback_open=False, probe_readiness=True))
        time.sleep(0.5)
        if on_cap == "queue":
            # Queued on the GPUs in the late lane; this engine refuses priority, so it is resent without.
            assert _route(gw) == "gpu-late"
        else:
            with pytest.raises(openai.RateLimitError) as err:
                _route(gw)
            assert err.value.body["code"] == "fallback_closed"  # type: ignore[index]


def test_a_refused_connection_moves_to_another_ready_replica_before_the_fallback(paid: BackgroundProvider) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    with BackgroundCluster(StandinConfig(output_tokens=2)) as vllm:
        live = vllm.ports[0]
        pool = make_pool(providers=[provider("paid", paid.base_url)])
        # Cluster mode's view: both pods Ready (the kubelet has not noticed the dead one yet).
        with gateway_for([(pool, [f"127.0.0.1:{dead}", f"127.0.0.1:{live}"])], static=False) as gw:
            paid.clear_requests()
            assert _route(gw) == "gpu"
            assert _route(gw) == "gpu"
            assert paid.requests == [], "a live replica beats the fallback"
            endpoints = gw.gateway.directory.pools[("default", "chat")].endpoints
            assert gw.run(lambda: endpoints[f"127.0.0.1:{dead}"].failed_until) > time.monotonic(), "tried, refused"


def test_streams_waiting_for_their_first_token_keep_the_backlog_up_after_its_time_has_run_out(
    paid: BackgroundProvider,
) -> None:
    # 1000 tokens/s and a 0.6 s wait limit, the objective loose: each request is estimated at its few
    # prompt tokens plus the starting mean of 256 outputs, about 0.26 s, so three streams fit (waits 0,
    # 0.26, 0.52 s) and a fourth (0.78 s) overflows. The replica is paused: none of the three gets a
    # first token. A second later the drain at the replica's throughput alone would call the backlog
    # empty; the three still waiting keep it at 3 x ~0.26 s less the oldest one's prefill, past the
    # limit, so a new request still overflows (and /metrics shows that wait). Once they have their first
    # tokens (4 outputs at 2 tokens/s: they go on decoding for 1.5 s) the backlog drains from there at the
    # replica's throughput, and half a second later a new request is back on the GPUs.
    spec = {"demand": {"replicaTokensPerSecond": 1000}, "fallback": {"maxQueueWaitSeconds": 0.6},
            "objective": {"ttftSeconds": 60}}  # fmt: skip
    with BackgroundCluster(StandinConfig(max_num_seqs=8, output_tokens=4, tokens_per_second=2)) as vllm:
        url = vllm.url(vllm.ports[0])
        pool = make_pool(providers=[provider("paid", paid.base_url)], spec=spec)
        with gateway_for([(pool, [url.removeprefix("http://")])]) as gw:
            state = gw.gateway.directory.pools[("default", "chat")]
            # A request sent to the paused replica would hang: a short timeout makes that a failure.
            vllm.pause()
            routes: list[str] = []

            def stream() -> None:
                client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
                with client.chat.completions.with_streaming_response.create(
                    model="chat-model",
                    messages=MESSAGES,
                    stream=True,  # no max_tokens: the mean is its estimate
                ) as raw:
                    routes.append(str(raw.headers["x-ebbtide-route"]))
                    for _ in raw.iter_lines():
                        pass

            streams = [threading.Thread(target=stream, daemon=True) for _ in range(3)]
            for k, thread in enumerate(streams, 1):
                thread.start()
                wait_until(lambda k=k: gw.run(lambda: len(state.waiting[0])) == k, what=f"stream {k} waiting")
            assert _route(gw, timeout=5) == "fallback", "a fourth is past the wait limit"
            time.sleep(1.0)
            assert gw.run(lambda: state.work_normal) > 0.6 * 1000 * 1.2
            assert _route(gw, timeout=5) == "fallback", "the three still wait for a first token: their work is ahead"
            assert metric(scrape_text(gw), "ebbtide_gateway_work_ahead_seconds", pool="chat", lane="normal") > 0.6
            vllm.resume()
            wait_until(lambda: gw.run(lambda: len(state.waiting[0])) == 0, what="three first tokens")
            time.sleep(0.5)
            assert gw.run(lambda: state.work_normal) > 0, "still decoding"
            assert _route(gw, timeout=30) == "gpu", "all three had their first tokens: back on the GPUs"
            for thread in streams:
                thread.join(30)
            assert routes == ["gpu", "gpu", "gpu"]
            assert gw.run(lambda: (len(state.waiting[0]), state.waiting[0].work, state.work_normal)) == (0, 0.0, 0.0)
