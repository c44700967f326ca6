"""The benchmark's servers: a fast OpenAI-compatible upstream and the bare passthroughs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import httpx
from aiohttp import web

__all__ = ["BODY", "LOOPBACK", "MODEL", "POOL_YAML", "event_loop_factory", "passthrough_app", "serve", "upstream_app"]

LOOPBACK = "127.0.0.1"
MODEL = "bench-model"
_TOKENS = 8
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "how high is the tide today"}], "max_tokens": _TOKENS}
_METRICS = (
    "# TYPE vllm:num_requests_waiting gauge\n"
    f'vllm:num_requests_waiting{{model_name="{MODEL}"}} 0.0\n'
    "# TYPE vllm:num_requests_running gauge\n"
    f'vllm:num_requests_running{{model_name="{MODEL}"}} 0.0\n'
).encode()
POOL_YAML = f"""apiVersion: ebbtide.dev/v1alpha1
kind: GPUPool
metadata: {{name: bench, namespace: default}}
spec:
  models: [{MODEL}]
  target: {{deployment: bench, port: 8000, minReplicas: 1, maxReplicas: 1}}
  demand: {{replicaTokensPerSecond: 1000000}}
  objective: {{ttftSeconds: 30}}
"""

# ---- the fast upstream -------------------------------------------------------------------


def _chat_chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": MODEL,
        "choices": [choice],
    }


def _sse(payload: object) -> bytes:
    return b"data: " + (payload if isinstance(payload, bytes) else json.dumps(payload).encode()) + b"\n\n"


_USAGE = {"prompt_tokens": 10, "completion_tokens": _TOKENS, "total_tokens": 10 + _TOKENS}
_EVENTS = [
    _sse(_chat_chunk({"role": "assistant", "content": ""}, None)),
    *(_sse(_chat_chunk({"content": f" tok{i}"}, None)) for i in range(_TOKENS)),
    _sse(_chat_chunk({}, "stop")),
]
_USAGE_EVENT = _sse({**_chat_chunk({}, None), "choices": [], "usage": _USAGE})
_DONE = _sse(b"[DONE]")
_MESSAGE = {"role": "assistant", "content": "".join(f" tok{i}" for i in range(_TOKENS))}
_WHOLE = json.dumps(
    {
        "id": "chatcmpl-b",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "usage": _USAGE,
        "choices": [{"index": 0, "message": _MESSAGE, "logprobs": None, "finish_reason": "stop"}],
    }
).encode()


async def _upstream_chat(request: web.Request) -> web.StreamResponse:
    body = json.loads(await request.read())
    if not body.get("stream"):
        return web.Response(body=_WHOLE, content_type="application/json")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for event in _EVENTS:  # one write per event, as an engine emits them
        await response.write(event)
    if (body.get("stream_options") or {}).get("include_usage"):
        await response.write(_USAGE_EVENT)
    await response.write(_DONE)
    await response.write_eof()
    return response


def upstream_app() -> web.Application:
    """The fast upstream: chat completions with fixed answers, ``/metrics`` with an empty queue."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _upstream_chat)
    app.router.add_get("/metrics", lambda _: _static(_METRICS, "text/plain; version=0.0.4"))
    models = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]}).encode()
    app.router.add_get("/v1/models", lambda _: _static(models, "application/json"))
    app.router.add_get("/health", lambda _: _static(b"", "text/plain"))
    return app


async def _static(body: bytes, content_type: str) -> web.Response:
    return web.Response(body=body, headers={"Content-Type": content_type})


# ---- the bare passthroughs (the floor) ---------------------------------------------------


def passthrough_app(upstream: str, client: str) -> web.Application:
    """A proxy that does nothing but relay: aiohttp server, aiohttp or httpx client."""
    app = web.Application()
    state: dict[str, Any] = {}

    async def open_client(app: web.Application) -> None:
        if client == "aiohttp":
            state["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        else:
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=1000)
            state["client"] = httpx.AsyncClient(limits=limits, timeout=None)

    async def close_client(app: web.Application) -> None:
        for value in state.values():
            await (value.close() if isinstance(value, aiohttp.ClientSession) else value.aclose())

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {"Content-Type": "application/json"}
        if client == "aiohttp":
            async with state["session"].post(upstream + request.path, data=body, headers=headers) as up:
                if not up.content_type.startswith("text/event-stream"):
                    return web.Response(body=await up.read(), status=up.status, content_type=up.content_type)
                out = web.StreamResponse(status=up.status, headers={"Content-Type": up.headers["Content-Type"]})
                await out.prepare(request)
                async for chunk in up.content.iter_any():
                    await out.write(chunk)
                await out.write_eof()
                return out
        upstream_request = state["client"].build_request("POST", upstream + request.path, content=body, headers=headers)
        hup = await state["client"].send(upstream_request, stream=True)
        try:
            if not hup.headers.get("content-type", "").startswith("text/event-stream"):
                data = await hup.aread()
                return web.Response(
                    body=data, status=hup.status_code, headers={"Content-Type": hup.headers["content-type"]}
                )
            out = web.StreamResponse(status=hup.status_code, headers={"Content-Type": hup.headers["content-type"]})
            await out.prepare(request)
            async for chunk in hup.aiter_raw():
                await out.write(chunk)
            await out.write_eof()
            return out
        finally:
            await hup.aclose()

    app.on_startup.append(open_client)
    app.on_cleanup.append(close_client)
    app.router.add_post("/v1/chat/completions", relay)
    return app


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop factory when installed (the gateway runs on it), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def serve(app: web.Application, port: int) -> int:
    loop = event_loop_factory()()
    web.run_app(app, host=LOOPBACK, port=port, access_log=None, print=None, handle_signals=True, loop=loop)
    return 0
