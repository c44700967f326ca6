"""The gateway's pure parts: the SSE scanner, Retry-After and cooldown, auth, parsing and upstream bodies,
the flag parsers and the routing plan (on real PoolState objects, no fakes needed)."""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import replace

import orjson
import pytest

from controller.scrape.sample import EngineSample
from gateway.auth import ClientAuth
from gateway.config import ConfigError, parse_endpoints, parse_listen, provider_keys
from gateway.directory import PoolDirectory
from gateway.errors import ApiError
from gateway.inbound import VLLM_ONLY_FIELDS, gpu_body, parse_request, provider_body
from gateway.providers import ProviderState, is_failover_status, retry_after_seconds
from gateway.routing import Action, plan_request
from gateway.sse import SseScanner
from gateway.upstream import queue_lines
from policies.overflow import Lane
from tests.gateway_support import make_pool, metric, provider

ROLE = b'data: {"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
TOKEN = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
USAGE = b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}\n\n'
DONE = b"data: [DONE]\n\n"


def _feed_split(scanner: SseScanner, data: bytes, size: int) -> bytes:
    out = b"".join(scanner.feed(data[i : i + size]) for i in range(0, len(data), size))
    return out + scanner.flush()


@pytest.mark.parametrize("size", [1, 3, 7, 64, 10_000])
def test_scanner_passes_bytes_unchanged_and_reads_usage_whatever_the_chunking(size: int) -> None:
    stream = ROLE + TOKEN + USAGE + DONE
    scanner = SseScanner(strip_usage=False)
    assert _feed_split(scanner, stream, size) == stream
    assert scanner.usage == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert scanner.done and scanner.committed


@pytest.mark.parametrize("size", [1, 5, 10_000])
def test_scanner_strips_only_the_usage_chunk(size: int) -> None:
    scanner = SseScanner(strip_usage=True)
    assert _feed_split(scanner, ROLE + TOKEN + USAGE + DONE, size) == ROLE + TOKEN + DONE
    assert scanner.usage is not None and scanner.usage["completion_tokens"] == 3


def test_scanner_role_chunk_does_not_commit_but_a_token_does() -> None:
    scanner = SseScanner(strip_usage=False)
    scanner.feed(ROLE + b": keep-alive\n\n")
    assert not scanner.committed
    scanner.feed(TOKEN)
    assert scanner.committed


def test_scanner_error_event_before_content_is_seen_and_after_content_is_not_an_abort() -> None:
    error = b'data: {"error":{"message":"overloaded","type":"server_error"}}\n\n'
    before = SseScanner(strip_usage=False)
    before.feed(ROLE + error)
    assert before.error == {"message": "overloaded", "type": "server_error"} and not before.committed
    after = SseScanner(strip_usage=False)
    after.feed(TOKEN + error)
    assert after.committed and after.error is None and after.late_error


def test_scanner_handles_crlf_and_multiline_data_and_a_huge_event() -> None:
    scanner = SseScanner(strip_usage=True)
    crlf = (
        b'data: {"choices":[{"delta":{"content":"x"}}]}\r\n\r\n'
        b'data: {"choices":[],\r\ndata: "usage":{"prompt_tokens":1,"completion_tokens":2}}\r\n\r\n'
    )
    assert scanner.feed(crlf) == b'data: {"choices":[{"delta":{"content":"x"}}]}\r\n\r\n'
    assert scanner.usage == {"prompt_tokens": 1, "completion_tokens": 2}
    big = b'data: {"choices":[{"delta":{"content":"' + b"a" * 300_000 + b'"}}]}\n\n'
    passthrough = SseScanner(strip_usage=False)
    assert _feed_split(passthrough, big + DONE, 65_536) == big + DONE
    assert passthrough.content_events == 1


def test_retry_after_seconds_and_http_date() -> None:
    now = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
    assert retry_after_seconds("7", now) == 7.0
    assert retry_after_seconds("Tue, 01 Dec 2026 12:00:30 GMT", now) == pytest.approx(30.0)
    assert retry_after_seconds("100000", now) == 600.0
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None
    assert retry_after_seconds("-5", now) == 0.0


def test_cooldown_doubles_from_5_to_60_then_resets_and_honours_retry_after() -> None:
    pool = make_pool(providers=[provider("p", "http://127.0.0.1:1/v1")])
    state = ProviderState(pool.spec.fallback.providers[0], "key")
    now = 1000.0
    assert [state.failed(now) for _ in range(6)] == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]
    assert not state.available(now + 59) and state.available(now + 60)
    state.acquire(now + 60)  # the probe after the cooldown
    assert not state.available(now + 60), "only one probe at a time"
    state.succeeded()
    assert state.available(now + 60) and state.failed(now) == 5.0
    assert state.failed(now, retry_after=2.5) == 2.5 and state.available(now + 2.5)
    assert state.headers["Authorization"] == "Bearer key"
    assert [s for s in (400, 401, 403, 404, 422) if is_failover_status(s)] == []
    assert all(is_failover_status(s) for s in (408, 429, 500, 502, 503, 504, 529))


def test_client_auth_constant_time_check() -> None:
    auth = ClientAuth(["k1", "k2"])
    assert auth.check("Bearer k2") and auth.check("bearer k1")
    assert not auth.check("Bearer k3") and not auth.check("k1") and not auth.check(None) and not auth.check("Bearer ")
    with pytest.raises(ValueError):
        ClientAuth([""])


def test_parse_request_errors_name_the_field() -> None:
    def status_param(raw: bytes, chat: bool = True) -> tuple[int, str | None]:
        with pytest.raises(ApiError) as err:
            parse_request(raw, chat=chat, arrival=0.0, timeout_header=None)
        return err.value.status, err.value.param

    assert status_param(b"") == (400, None)
    assert status_param(b"{nope") == (400, None)
    assert status_param(b"[1]") == (400, None)
    assert status_param(b'{"messages":[{"role":"user","content":"x"}]}') == (400, "model")
    assert status_param(b'{"model":5,"messages":[1]}') == (400, "model")
    assert status_param(b'{"model":"m","messages":[]}') == (400, "messages")
    assert status_param(b'{"model":"m","messages":[1],"stream":"yes"}') == (400, "stream")
    assert status_param(b'{"model":"m","messages":[1],"max_tokens":-1}') == (400, "max_tokens")
    assert status_param(b'{"model":"m","messages":[1],"stream_options":3}') == (400, "stream_options")
    assert status_param(b'{"model":"m"}', chat=False) == (400, "prompt")


def test_client_deadlines_from_both_openai_clients_headers() -> None:
    raw = b'{"model":"m","prompt":"hi"}'
    # The Python client's read timeout bounds the wait for a first byte, not the whole answer.
    python = parse_request(raw, chat=False, arrival=10.0, timeout_header=None, read_timeout_header="600.0")
    assert (python.deadline, python.first_byte_deadline) == (None, 610.0)
    # The Node client's total timeout bounds both; the sooner of the two is the first byte's.
    both = parse_request(raw, chat=False, arrival=10.0, timeout_header="30", read_timeout_header="5")
    assert (both.deadline, both.first_byte_deadline) == (40.0, 15.0)
    node = parse_request(raw, chat=False, arrival=10.0, timeout_header="30", read_timeout_header="60")
    assert (node.deadline, node.first_byte_deadline) == (40.0, 40.0)
    for junk in ("-1", "0", "nan", "inf", "abc", "1e309"):
        odd = parse_request(raw, chat=False, arrival=0.0, timeout_header=junk, read_timeout_header=junk)
        assert (odd.deadline, odd.first_byte_deadline) == (None, None), junk


def test_upstream_bodies() -> None:
    raw = json.dumps({"model": "chat-model", "messages": [{"role": "user", "content": "x"}], "priority": -9,
                      "top_k": 3, "stream": True}).encode()  # fmt: skip
    req = parse_request(raw, chat=True, arrival=10.0, timeout_header="30")
    assert req.deadline == 40.0 and req.stream and not req.wants_usage
    gpu = orjson.loads(gpu_body(req, "served", None))
    assert gpu["model"] == "served" and "priority" not in gpu and gpu["stream_options"] == {"include_usage": True}
    assert orjson.loads(gpu_body(req, "served", 1))["priority"] == 1
    paid = orjson.loads(provider_body(req, "paid-model"))
    assert paid["model"] == "paid-model" and not (set(paid) & VLLM_ONLY_FIELDS)
    assert paid["stream_options"] == {"include_usage": True}
    plain = b'{"model":"served","prompt":"hi"}'
    unchanged = parse_request(plain, chat=False, arrival=0.0, timeout_header=None)
    assert gpu_body(unchanged, "served", None) is plain, "nothing to change: the client's bytes as they came"


def test_flag_parsers() -> None:
    assert parse_listen("0.0.0.0:8080") == ("0.0.0.0", 8080)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    for bad in ("8080", "host:port", "h:70000"):
        with pytest.raises(ConfigError):
            parse_listen(bad)
    assert parse_endpoints(["chat=127.0.0.1:8000, 127.0.0.2:8000", "ns/b=[::1]:1"]) == {
        "chat": ["127.0.0.1:8000", "127.0.0.2:8000"], "ns/b": ["[::1]:1"],
    }  # fmt: skip
    for bad in ("chat", "=1.2.3.4:5", "chat=1.2.3.4", "chat=h:0"):
        with pytest.raises(ConfigError):
            parse_endpoints([bad])


def test_provider_keys_from_env_and_file_and_clear_errors(tmp_path: object) -> None:
    from pathlib import Path

    key_file = Path(str(tmp_path)) / "key"
    key_file.write_text("file-key\n")
    pool = make_pool(providers=[provider("a", "http://127.0.0.1:1/v1", apiKeyEnv="A_KEY"),
                                provider("b", "http://127.0.0.1:2/v1", apiKeyFile=str(key_file)),
                                provider("c", "http://127.0.0.1:3/v1")])  # fmt: skip
    assert provider_keys(pool, environ={"A_KEY": "env-key"}) == {"a": "env-key", "b": "file-key", "c": None}
    with pytest.raises(ConfigError, match="A_KEY is not set"):
        provider_keys(pool, environ={})
    secret = make_pool(providers=[provider("s", "http://127.0.0.1:1/v1", apiKeySecretRef={"name": "k"})])
    with pytest.raises(ConfigError, match="apiKeySecretRef needs cluster mode"):
        provider_keys(secret, environ={})
    assert provider_keys(secret, read_secret=lambda ns, name, key: f"{ns}/{name}/{key}") == {"s": "default/k/api-key"}


def test_queue_lines_keeps_only_the_queue_gauges() -> None:
    text = (
        "# HELP vllm:num_requests_waiting w\n# TYPE vllm:num_requests_waiting gauge\n"
        'vllm:num_requests_waiting{engine="0"} 3.0\nvllm:num_requests_running{engine="0"} 2.0\n'
        'vllm:generation_tokens_total{engine="0"} 99.0\n'
    )
    kept = queue_lines(text)
    assert "generation" not in kept and "num_requests_waiting{" in kept and "num_requests_running{" in kept


def _pool_state(spec: dict[str, object], providers: int = 1, endpoints: int = 1):  # type: ignore[no-untyped-def]
    pool = make_pool(providers=[provider(f"p{i}", f"http://127.0.0.1:{i + 1}/v1") for i in range(providers)], spec=spec)
    directory = PoolDirectory()
    directory.set_pool(pool, [(f"e{i}", f"127.0.0.1:{1000 + i}") for i in range(endpoints)])
    return directory.pools[("default", "chat")]


@pytest.mark.parametrize("take_late", [False, True])
def test_plan_gpu_then_late_then_fallback_as_work_grows(take_late: bool) -> None:
    # 1000 tokens/s, a 2 s wait limit and a 1 s objective: the lanes at 0, 1.5 s and 2.5 s of work ahead.
    state = _pool_state({"demand": {"replicaTokensPerSecond": 1000},
                         "fallback": {"maxQueueWaitSeconds": 2, "takeLateRequests": take_late},
                         "objective": {"ttftSeconds": 1.0}})  # fmt: skip
    now = time.monotonic()
    kwargs = {"prompt_tokens": 100, "now": now, "arrival": now, "controller_tick": 5.0, "max_hold_seconds": 60.0}
    state.drain(now, 1)
    plan = plan_request(state, **kwargs)  # type: ignore[arg-type]
    assert plan.action is Action.GPU and plan.lane is Lane.ON_TIME and plan.endpoint is not None
    state.work_normal = state.backlog_normal = 1500.0
    plan = plan_request(state, **kwargs)  # type: ignore[arg-type]
    if take_late:  # late on the GPUs, on time at the open fallback
        assert plan.action is Action.FALLBACK and plan.ready == 1 and plan.decision.reason == "late"
    else:
        assert plan.action is Action.GPU and plan.lane is Lane.LATE and plan.decision.reason == "late-within-wait"
    state.work_late = state.backlog_late = 1000.0
    plan = plan_request(state, **kwargs)  # type: ignore[arg-type]
    # 2.5 s behind both lanes; sent to the fallback anyway, its own wait (1.5 s) is within the limit.
    assert plan.action is Action.FALLBACK and plan.ready == 1
    assert plan.decision.reason == ("late" if take_late else "saturated")
    state.work_normal = state.backlog_normal = 2500.0
    plan = plan_request(state, **kwargs)  # type: ignore[arg-type]
    assert plan.action is Action.FALLBACK and plan.ready == 1 and plan.decision.reason == "saturated"


@pytest.mark.parametrize("replay", [True, False])
def test_a_late_request_sent_away_counts_as_saturation_only_where_replicas_would_help_without_the_replay(
    replay: bool,
) -> None:
    # 1000 tokens/s and a 1 s objective, 0.5 s of work ahead: a 100-token prompt (0.1 s) is late behind
    # the queue, a 1,200-token one (1.2 s) on any number of replicas.
    state = _pool_state({"demand": {"replicaTokensPerSecond": 1000, "replay": replay},
                         "fallback": {"maxQueueWaitSeconds": 2}, "objective": {"ttftSeconds": 1.0}})  # fmt: skip
    now = time.monotonic()
    state.drain(now, 1)
    state.work_normal = state.backlog_normal = 950.0
    kwargs = {"now": now, "arrival": now, "controller_tick": 5.0, "max_hold_seconds": 60.0}
    queued = plan_request(state, prompt_tokens=100, **kwargs)  # type: ignore[arg-type]
    long = plan_request(state, prompt_tokens=1200, **kwargs)  # type: ignore[arg-type]
    assert queued.action is long.action is Action.FALLBACK
    assert queued.decision.reason == long.decision.reason == "late"
    assert queued.saturation is (not replay)
    assert long.saturation is False


def test_outputs_that_vary_add_a_margin_to_the_work_ahead_that_can_make_a_request_late() -> None:
    # 1000 tokens/s, no speeds (work in tokens), a 1 s objective: a 100-token prompt leaves 0.9 s of wait.
    state = _pool_state({"demand": {"replicaTokensPerSecond": 1000},
                         "fallback": {"maxQueueWaitSeconds": 2, "takeLateRequests": False},
                         "objective": {"ttftSeconds": 1.0}})  # fmt: skip
    now = time.monotonic()
    kwargs = {"prompt_tokens": 100, "now": now, "arrival": now, "controller_tick": 5.0, "max_hold_seconds": 60.0}
    state.drain(now, 1)
    for _ in range(4):
        state.add_work(200.0, False, now)  # 800 tokens ahead: 0.8 s, on time
    assert state.normal_ahead() == 800.0
    assert plan_request(state, **kwargs).lane is Lane.ON_TIME  # type: ignore[arg-type]
    # Answers of 0 and 512 tokens (about the starting mean of 256): the spread the mean cannot know, learned
    # with the mean's weight (0.05 each) from none: a variance of about 12,800, a deviation of about 113.
    for completion in (0, 512, 0, 512):
        state.learn(100, completion)
    assert 12_000 < state.var_completion < 13_500
    margin = (4 * state.var_completion) ** 0.5  # one standard deviation of the four outputs' sum
    assert abs(state.normal_ahead() - (800.0 + margin)) < 1e-9
    plan = plan_request(state, **kwargs)  # type: ignore[arg-type]
    assert plan.lane is Lane.LATE and plan.decision.reason == "late-within-wait", "0.8 s plus ~0.23 s is late"
    # With nothing in flight nothing is ahead, margin included.
    for _ in range(4):
        state.remove_work(200.0, False)
    assert state.requests_normal == 0 and state.normal_ahead() == 0.0


def test_with_the_replicas_speeds_a_prompt_heavy_request_is_estimated_at_its_own_work() -> None:
    # A replica that prefills 4,000 prompt tokens/s and generates 500/s over its batch.
    speeds = {
        "replicaTokensPerSecond": 1000,
        "replicaPrefillTokensPerSecond": 4000,
        "replicaDecodeTokensPerSecond": 500,
    }
    lanes = {"maxQueueWaitSeconds": 2, "takeLateRequests": False}
    split = _pool_state({"demand": speeds, "fallback": lanes, "objective": {"ttftSeconds": 1.0}})
    blend = _pool_state({"demand": {"replicaTokensPerSecond": 1000}, "fallback": lanes,
                         "objective": {"ttftSeconds": 1.0}})  # fmt: skip
    demand = split.spec.demand
    # 800 prompt tokens take 0.2 s and 50 generated 0.1 s: 0.3 replica-seconds, 300 tokens at 1,000/s.
    assert demand.work_tokens(800, 50) == pytest.approx(300.0)
    assert demand.prefill_seconds(800) == pytest.approx(0.2)
    assert blend.spec.demand.work_tokens(800, 50) == 850.0
    assert blend.spec.demand.prefill_seconds(800) == pytest.approx(0.8)
    # 0.3 s of work ahead and an 800-token prompt against a 1 s objective: on time when its prefill takes
    # 0.2 s, late when the blend counts 0.8 s for it.
    now = time.monotonic()
    kwargs = {"prompt_tokens": 800, "now": now, "arrival": now, "controller_tick": 5.0, "max_hold_seconds": 60.0}
    for state in (split, blend):
        state.drain(now, 1)
        state.work_normal = state.backlog_normal = 300.0
    assert plan_request(split, **kwargs).lane is Lane.ON_TIME  # type: ignore[arg-type]
    assert plan_request(blend, **kwargs).lane is Lane.LATE  # type: ignore[arg-type]
    # Other clients' requests count at the learned work per request, in the same units.
    split.learn(800, 50)
    blend.learn(800, 50)
    start_split, start_blend = demand.work_tokens(256, 256), 512.0
    assert split.mean_request == pytest.approx(start_split + 0.05 * (300.0 - start_split))
    assert blend.mean_request == pytest.approx(start_blend + 0.05 * (850.0 - start_blend))


def test_our_requests_that_ended_during_a_scrape_are_not_taken_for_other_clients() -> None:
    # The system test's burst: four of ours on the engine when its gauges were read, two of them ended
    # before the scrape's answer came back. Counted against the end alone, two look like others' load,
    # at the pool's starting mean of 512 tokens a request seconds of queue, and the burst all spills.
    state = _pool_state({"demand": {"replicaTokensPerSecond": 100}, "fallback": {"maxQueueWaitSeconds": 1}})
    endpoint = next(iter(state.endpoints.values()))
    sample = EngineSample(waiting=2, running=2, kv_cache_usage=None, prompt_tokens_total=None,
                          generation_tokens_total=None, request_success_total=None,
                          admission_rejections_total=None, engines=1)  # fmt: skip
    endpoint.in_flight = 2  # at the answer; it was 4 when the scrape was sent
    endpoint.record_scrape(sample, time.monotonic(), in_flight_before=4)
    assert endpoint.others == 0
    now = time.monotonic()
    kwargs = {"prompt_tokens": 10, "now": now, "arrival": now, "controller_tick": 5.0, "max_hold_seconds": 60.0}
    assert plan_request(state, **kwargs).action is Action.GPU  # type: ignore[arg-type]
    # Another client's requests still count: six on the engine, four of them ours at most.
    endpoint.record_scrape(replace(sample, waiting=4), time.monotonic(), in_flight_before=4)
    assert endpoint.others == 2
    assert plan_request(state, **kwargs).action is Action.FALLBACK  # type: ignore[arg-type]


def test_plan_at_zero_replicas_holds_only_when_a_replica_is_due_in_time() -> None:
    state = _pool_state({"coldStartSeconds": 30, "objective": {"ttftSeconds": 10.0}}, endpoints=0)
    now = time.monotonic()
    kwargs = {"prompt_tokens": 10, "now": now, "arrival": now, "controller_tick": 5.0, "max_hold_seconds": 60.0}
    assert plan_request(state, **kwargs).action is Action.FALLBACK  # type: ignore[arg-type]
    state.starting_etas = (now + 4.0,)  # a pod started 26 s ago: Ready in about 4 s
    plan = plan_request(state, **kwargs)  # type: ignore[arg-type]
    assert plan.action is Action.HOLD and plan.hold_until == pytest.approx(now + 10.0 - 10 / 100000)
    state.fallback_open = False  # the budget cap closed it (onFallbackCap: queue): wait for the GPUs
    state.starting_etas = ()
    plan = plan_request(state, **kwargs)  # type: ignore[arg-type]
    assert plan.action is Action.HOLD and plan.hold_until == pytest.approx(now + 60.0)


def test_scanner_fast_path_once_committed_still_sees_the_end_and_the_usage() -> None:
    scanner = SseScanner(strip_usage=True)
    assert scanner.feed(ROLE + TOKEN) == ROLE + TOKEN
    assert scanner.feed(TOKEN + TOKEN) == TOKEN + TOKEN and scanner.content_events == 3
    assert scanner.feed(USAGE + DONE) == DONE and scanner.usage is not None and scanner.done


def test_a_pool_update_keeps_provider_health_and_endpoint_counts() -> None:
    pool = make_pool(providers=[provider("p", "http://127.0.0.1:1/v1")])
    directory = PoolDirectory()
    directory.set_pool(pool, [("e0", "127.0.0.1:1000")], provider_keys={"p": "old"})
    state = directory.pools[("default", "chat")]
    before, endpoint = state.providers[0], state.endpoints["127.0.0.1:1000"]
    before.failed(time.monotonic())
    endpoint.in_flight = 3
    directory.set_pool(pool, [("e0", "127.0.0.1:1000"), ("e1", "127.0.0.1:1001")], provider_keys={"p": "new"})
    assert state.providers[0] is before and not before.available(time.monotonic()), "still cooling down"
    assert before.headers["Authorization"] == "Bearer new"
    assert state.endpoints["127.0.0.1:1000"] is endpoint and endpoint.in_flight == 3
    moved = make_pool(providers=[provider("p", "http://127.0.0.1:2/v1")])
    directory.set_pool(moved, [])
    assert state.providers[0] is not before and state.providers[0].available(time.monotonic())
    assert state.endpoints == {} and not state.ready_event.is_set()


def test_a_body_nested_deeper_than_orjson_writes_is_a_400_not_a_crash() -> None:
    deep = b'{"model":"chat-model","prompt":"x","extra":' + b"[" * 300 + b"]" * 300 + b"}"
    req = parse_request(deep, chat=False, arrival=0.0, timeout_header=None)
    with pytest.raises(ApiError) as err:
        provider_body(req, "paid-model")
    assert err.value.status == 400 and "nests too deeply" in err.value.message


def test_endpoint_urls_bracket_ipv6_pod_ips() -> None:
    from gateway.upstream import Endpoint

    assert Endpoint("p", "fd00::5:8000").chat_url == "http://[fd00::5]:8000/v1/chat/completions"
    assert Endpoint("p", "10.0.0.5:8000").metrics_url == "http://10.0.0.5:8000/metrics"
    assert Endpoint("p", "[::1]:8000").base_url == "http://[::1]:8000"


def test_the_backlog_drains_at_the_replicas_throughput_normal_lane_first() -> None:
    state = _pool_state({"demand": {"replicaTokensPerSecond": 1000}}, endpoints=2)
    now = time.monotonic()
    state.drain(now, 2)
    state.add_work(3000.0, False, now)
    state.add_work(1000.0, True, now)
    state.drain(now + 1.0, 2)  # 2 replicas x 1000 tokens/s x 1 s
    assert (state.backlog_normal, state.backlog_late) == (1000.0, 1000.0)
    state.drain(now + 1.75, 2)
    assert (state.backlog_normal, state.backlog_late) == (0.0, 500.0)
    state.add_work(400.0, False, now + 1.75)
    state.remove_work(3000.0, False)  # the big one ended early: the backlog is capped by what is in flight
    assert state.work_normal == 400.0 and state.backlog_normal == 400.0


def test_streams_waiting_for_a_first_token_hold_the_backlog_up_until_their_first_token() -> None:
    state = _pool_state({"demand": {"replicaTokensPerSecond": 1000}}, endpoints=1)
    now = time.monotonic()
    state.drain(now, 1)
    # Two streams of 800 tokens of work (100 of them prefill) and one whole answer of 800, all at once.
    first = state.add_work(800.0, False, now, prefill=100.0)
    second = state.add_work(800.0, False, now, prefill=100.0)
    state.add_work(800.0, False, now)  # not streamed: its start cannot be seen, so it never counts as waiting
    assert len(state.waiting[0]) == 2
    # 3 s at 1000 tokens/s would leave nothing, but neither stream has a first token: 1600 less the
    # oldest's prefill (it may be prefilling) is still ahead.
    state.drain(now + 3.0, 1)
    assert state.backlog_normal == 1500.0
    state.first_token(False, first)
    state.drain(now + 5.0, 1)
    assert state.backlog_normal == 700.0, "the second alone: 800 less its own prefill"
    state.remove_work(800.0, False, second)  # ended without a first token (failed): it waits no more
    state.drain(now + 6.0, 1)
    assert state.backlog_normal == 0.0 and len(state.waiting[0]) == 0 and state.waiting[0].work == 0.0
    state.first_token(False, first)  # a repeat is harmless
    # The late lane keeps its own.
    late = state.add_work(500.0, True, now + 6.0, prefill=50.0)
    state.drain(now + 10.0, 1)
    assert (state.backlog_normal, state.backlog_late) == (0.0, 450.0)
    state.remove_work(500.0, True, late)
    assert state.backlog_late == 0.0


def test_the_waiting_floor_is_the_live_requests_work_less_the_oldest_live_ones_prefill() -> None:
    import random

    from gateway.directory import WaitingWork

    rng = random.Random(7)
    for _ in range(50):
        waiting, live = WaitingWork(), {}  # token -> (work, prefill), in insertion order
        for _ in range(60):
            if live and rng.random() < 0.45:
                token = rng.choice(list(live))  # first tokens come in any order
                waiting.done(token)
                del live[token]
            else:
                work = float(rng.randint(1, 50))
                prefill = float(rng.randint(0, int(work)))
                live[waiting.add(work, prefill)] = (work, prefill)
            expected = 0.0
            if live:
                oldest = min(live)
                expected = max(sum(w for w, _ in live.values()) - live[oldest][1], 0.0)
            assert len(waiting) == len(live)
            assert abs(waiting.floor() - expected) < 1e-9


def test_the_work_ahead_series_reads_the_books_at_each_scrape_and_goes_with_its_pool() -> None:
    pool = make_pool(
        providers=[provider("p", "http://127.0.0.1:1/v1")], spec={"demand": {"replicaTokensPerSecond": 1000}}
    )
    directory = PoolDirectory()
    directory.set_pool(pool, [("e0", "127.0.0.1:1000"), ("e1", "127.0.0.1:1001")])
    state = directory.pools[("default", "chat")]
    now = time.monotonic()
    state.drain(now, 2)
    state.add_work(3000.0, False, now)
    state.add_work(1000.0, True, now)
    # Two replicas at 1000 tokens/s: 3000 tokens ahead in the normal lane is 1.5 s, 4000 behind both 2 s;
    # a second later 1000 tokens are left in each lane.
    assert (state.work_ahead_seconds(False, now), state.work_ahead_seconds(True, now)) == (1.5, 2.0)
    assert (state.work_ahead_seconds(False, now + 1.0), state.work_ahead_seconds(True, now + 1.0)) == (0.5, 1.0)

    def scraped() -> dict[str, float]:
        text = directory.metrics.render().decode()
        return {
            lane: metric(text, "ebbtide_gateway_work_ahead_seconds", pool="chat", lane=lane)
            for lane in ("normal", "late")
        }

    # A scrape reads the books as they are then: drained further, never more than a moment ago.
    first = scraped()
    assert 0.0 <= first["normal"] <= 0.5 and first["normal"] <= first["late"] <= 1.0
    directory.set_pool(pool, [])  # no Ready replica: no wait is finite
    assert scraped() == {"normal": float("inf"), "late": float("inf")}
    directory.remove_pool("default", "chat")
    assert "ebbtide_gateway_work_ahead_seconds{" not in directory.metrics.render().decode()


def test_the_series_the_controller_reads_carry_the_documented_names_and_labels() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from controller.demand import series
    from controller.demand.series import RouteLabel
    from gateway.accounting import GatewayMetrics

    metrics = GatewayMetrics()
    pool = metrics.pool("ns", "chat")
    pool.finished(RouteLabel.FALLBACK, 10, 5, estimated=False, saturated=True, provider="p", dollars=0.01)
    pool.held.inc()
    pool.in_flight["gpu"].inc()
    pool.added_latency.observe(0.001)
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    expected = {
        series.REQUESTS: {"namespace", "pool", "route"},
        series.TOKENS: {"namespace", "pool", "route", "kind", "source"},
        series.FALLBACK_USD: {"namespace", "pool", "provider"},
        series.SATURATION_REQUESTS: {"namespace", "pool"},
        series.SATURATION_TOKENS: {"namespace", "pool", "kind"},
        series.IN_FLIGHT: {"namespace", "pool", "route"},
        series.HELD: {"namespace", "pool"},
        series.ADDED_LATENCY + "_bucket": {"namespace", "pool", "le"},
    }
    for name, wanted in expected.items():
        assert labels.get(name) == wanted, name
