"""vLLM's OpenAI-compatible HTTP surface for one stand-in replica (aiohttp handlers).

Response bodies follow vLLM's shapes (ids ``cmpl-…``/``chatcmpl-…``, ``usage``, server-sent
events ending in ``data: [DONE]``, error bodies ``{"error": {message, type, param, code}}``)
closely enough for the official ``openai`` client and for the gateway.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from e2e.standin.engine import Engine, QueueFull, Sequence, count_tokens

__all__ = ["ENGINE_KEY", "make_replica_app"]

ENGINE_KEY = web.AppKey("engine", Engine)

# vLLM's QueueOverflowError message (vllm/exceptions.py).
_BUSY = (
    "The engine is currently busy and cannot accept new requests. Please try again later or on a different instance."
)
# Chat prompts carry template tokens around each message's content.
_CHAT_TOKENS_PER_MESSAGE = 4


class _ApiError(Exception):
    def __init__(self, status: HTTPStatus, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


def _error(status: HTTPStatus, message: str, param: str | None = None, err_type: str | None = None) -> web.Response:
    kind = err_type or {
        HTTPStatus.BAD_REQUEST: "BadRequestError",
        HTTPStatus.NOT_FOUND: "NotFoundError",
    }.get(status, status.phrase)
    body = {"error": {"message": message, "type": kind, "param": param, "code": int(status)}}
    return web.json_response(body, status=int(status))


async def _body(request: web.Request, engine: Engine) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _ApiError(HTTPStatus.BAD_REQUEST, f"invalid JSON body: {err}") from err
    if not isinstance(body, dict):
        raise _ApiError(HTTPStatus.BAD_REQUEST, "request body must be a JSON object")
    model = body.get("model")
    if model != engine.config.model_name:
        raise _ApiError(HTTPStatus.NOT_FOUND, f"The model `{model}` does not exist.", "model")
    if body.get("n", 1) != 1:
        raise _ApiError(HTTPStatus.BAD_REQUEST, "the stand-in serves n=1 only", "n")
    return body


def _max_tokens(body: Mapping[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _ApiError(HTTPStatus.BAD_REQUEST, f"{key} must be a non-negative integer", key)
        return value
    return None


def _include_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options") or {}
    return bool(isinstance(options, dict) and options.get("include_usage"))


def _usage(seq: Sequence) -> dict[str, Any]:
    return {
        "prompt_tokens": seq.prompt_tokens,
        "total_tokens": seq.prompt_tokens + seq.generated,
        "completion_tokens": seq.generated,
        "prompt_tokens_details": None,
    }


async def _sse(response: web.StreamResponse, payload: Mapping[str, Any] | str) -> None:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    await response.write(f"data: {data}\n\n".encode())


async def _serve(request: web.Request, *, chat: bool) -> web.StreamResponse:
    engine = request.app[ENGINE_KEY]
    try:
        body = await _body(request, engine)
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise _ApiError(HTTPStatus.BAD_REQUEST, "messages must be a non-empty list", "messages")
            prompt_tokens = sum(
                count_tokens(str(m.get("content", "")) if isinstance(m, dict) else str(m)) + _CHAT_TOKENS_PER_MESSAGE
                for m in messages
            )
            max_tokens = _max_tokens(body, "max_completion_tokens", "max_tokens")
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1:
                prompt = prompt[0]
            if not isinstance(prompt, str):
                raise _ApiError(HTTPStatus.BAD_REQUEST, "prompt must be a string", "prompt")
            prompt_tokens = count_tokens(prompt)
            max_tokens = _max_tokens(body, "max_tokens")
    except _ApiError as err:
        return _error(err.status, str(err), err.param)

    stream = bool(body.get("stream", False))
    model = engine.config.model_name
    created = int(time.time())
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    try:
        async with engine.request(prompt_tokens, max_tokens) as seq:
            if stream:
                return await _stream(request, engine, seq, rid, created, model, chat, _include_usage(body))
            text = "".join([token async for token in engine.decode(seq)])
    except QueueFull:
        return _error(HTTPStatus.SERVICE_UNAVAILABLE, _BUSY)

    if chat:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text, "tool_calls": []},
            "logprobs": None,
            "finish_reason": seq.finish_reason,
            "stop_reason": None,
        }
        obj = "chat.completion"
    else:
        choice = {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": seq.finish_reason,
            "stop_reason": None,
        }
        obj = "text_completion"
    return web.json_response(
        {
            "id": rid,
            "object": obj,
            "created": created,
            "model": model,
            "choices": [choice],
            "usage": _usage(seq),
        }
    )


async def _stream(
    request: web.Request,
    engine: Engine,
    seq: Sequence,
    rid: str,
    created: int,
    model: str,
    chat: bool,
    include_usage: bool,
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await response.prepare(request)
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(choice: dict[str, Any]) -> dict[str, Any]:
        return {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]}

    if chat:
        first = {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        await _sse(response, chunk(first))
    async for token in engine.decode(seq):
        if chat:
            piece: dict[str, Any] = {
                "index": 0,
                "delta": {"content": token},
                "logprobs": None,
                "finish_reason": None,
            }
        else:
            piece = {"index": 0, "text": token, "logprobs": None, "finish_reason": None, "stop_reason": None}
        await _sse(response, chunk(piece))
    if chat:
        last: dict[str, Any] = {
            "index": 0, "delta": {"content": ""}, "logprobs": None,
            "finish_reason": seq.finish_reason, "stop_reason": None,
        }  # fmt: skip
    else:
        last = {
            "index": 0,
            "text": "",
            "logprobs": None,
            "finish_reason": seq.finish_reason,
            "stop_reason": None,
        }
    await _sse(response, chunk(last))
    if include_usage:
        await _sse(response, {**chunk({}), "choices": [], "usage": _usage(seq)})
    await _sse(response, "[DONE]")
    await response.write_eof()
    return response


async def _completions(request: web.Request) -> web.StreamResponse:
    return await _serve(request, chat=False)


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    return await _serve(request, chat=True)


async def _models(request: web.Request) -> web.Response:
    config = request.app[ENGINE_KEY].config
    model = {
        "id": config.model_name,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "vllm",
        "root": config.model_name,
        "parent": None,
        "max_model_len": config.max_model_len,
    }
    return web.json_response({"object": "list", "data": [model]})


async def _health(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def _metrics(request: web.Request) -> web.Response:
    engine = request.app[ENGINE_KEY]
    engine.refresh_gauges()
    return web.Response(
        body=engine.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
    )


def make_replica_app(engine: Engine, middlewares: Iterable[Middleware] = ()) -> web.Application:
    """The aiohttp application of one replica, serving vLLM's routes from ``engine``.

    ``middlewares`` wrap every route (e2e/standin/instrument.py records requests and
    injects faults on ``/metrics`` this way).
    """
    app = web.Application(middlewares=list(middlewares))
    app[ENGINE_KEY] = engine
    app.router.add_get("/v1/models", _models)
    app.router.add_post("/v1/completions", _completions)
    app.router.add_post("/v1/chat/completions", _chat_completions)
    app.router.add_get("/health", _health)
    app.router.add_get("/metrics", _metrics)
    return app
