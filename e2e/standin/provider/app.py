"""The stand-in provider's HTTP surface (aiohttp handlers): OpenAI's shapes for chat and
text completions, plain and streaming, with the queued faults applied."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from e2e.standin.provider.faults import CUTS, Fault, ProviderState, RecordedRequest

__all__ = ["STATE_KEY", "make_provider_app"]

STATE_KEY = web.AppKey("provider_state", ProviderState)
_REASONS = {529: "Overloaded"}  # not in http.HTTPStatus; Anthropic's "overloaded"
# Chat prompts carry template tokens around each message's content.
_CHAT_TOKENS_PER_MESSAGE = 4


class _Cut(Exception):
    """The fault says: cut the connection here."""


def _error(
    status: int, message: str, err_type: str = "invalid_request_error", *, code: str | None = None,
    param: str | None = None, headers: Mapping[str, str] | None = None,
) -> web.Response:  # fmt: skip
    body = json.dumps({"error": {"message": message, "type": err_type, "param": param, "code": code}})
    return web.Response(
        status=status, reason=_REASONS.get(status), text=body, content_type="application/json", headers=headers
    )


def _fault_response(fault: Fault) -> web.Response:
    headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
    if fault.status == 429:
        return _error(429, "Rate limit reached (stand-in).", "requests", code="rate_limit_exceeded", headers=headers)
    err_type = "server_error" if fault.status >= 500 else "invalid_request_error"
    return _error(fault.status, f"Injected failure {fault.status} (stand-in).", err_type, headers=headers)


def _invalid(body: Any, state: ProviderState, chat: bool) -> web.Response | None:
    config = state.config
    if not isinstance(body, dict):
        return _error(400, "We could not parse the JSON body of your request.")
    model = body.get("model")
    if config.models and model not in config.models:
        message = f"The model `{model}` does not exist or you do not have access to it."
        return _error(404, message, code="model_not_found", param="model")
    rejected = sorted(config.rejected_fields & body.keys())
    if rejected:
        return _error(400, f"Unrecognized request argument supplied: {rejected[0]}", param=rejected[0])
    if chat and not (isinstance(body.get("messages"), list) and body["messages"]):
        return _error(400, "'messages' must be a non-empty array.", param="messages")
    if not chat and not isinstance(body.get("prompt"), str | list):
        return _error(400, "'prompt' is required.", param="prompt")
    return None


def _prompt_tokens(body: Mapping[str, Any], chat: bool) -> int:
    """One token per whitespace-separated word, like the vLLM stand-in's tokenizer."""
    if chat:
        messages = body["messages"]
        words = sum(len(str(m.get("content", "") if isinstance(m, dict) else m).split()) for m in messages)
        return words + _CHAT_TOKENS_PER_MESSAGE * len(messages)
    prompt = body["prompt"]
    return max(1, len(" ".join(map(str, prompt) if isinstance(prompt, list) else [prompt]).split()))


def _budget(body: Mapping[str, Any], output_tokens: int) -> int:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return min(value, output_tokens)
    return output_tokens


def _sse(payload: Mapping[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


@dataclass(frozen=True)
class _Reply:
    """One answer being produced: its ids and its tokens."""

    chat: bool
    model: str
    tokens: list[str]
    prompt_tokens: int
    finish: str
    rid: str = ""
    created: int = 0

    def usage(self) -> dict[str, int]:
        done = len(self.tokens)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": done,
            "total_tokens": self.prompt_tokens + done,
        }

    def chunk(self, choice: dict[str, Any] | None) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        choices = [] if choice is None else [{"index": 0, **choice, "logprobs": None}]
        return {"id": self.rid, "object": obj, "created": self.created, "model": self.model, "choices": choices}

    def whole(self, with_usage: bool) -> dict[str, Any]:
        text = "".join(self.tokens)
        if self.chat:
            choice: dict[str, Any] = {"message": {"role": "assistant", "content": text}}
        else:
            choice = {"text": text}
        out = {**self.chunk({**choice, "finish_reason": self.finish}),
               "object": "chat.completion" if self.chat else "text_completion"}  # fmt: skip
        if with_usage:
            out["usage"] = self.usage()
        return out


async def _serve(request: web.Request, *, chat: bool) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    raw = await request.read()
    try:
        body: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        body = None
    record = RecordedRequest(request.path, CIMultiDictProxy(CIMultiDict(request.headers)), body, time.monotonic())
    state.record(record)
    try:
        return await _answer(request, state, record, chat)
    except _Cut:
        if request.transport is not None:
            request.transport.abort()
        # The handler has nothing left to send; aiohttp drops a cancelled handler quietly.
        raise asyncio.CancelledError from None
    except (asyncio.CancelledError, ConnectionResetError):
        if not record.completed:
            state.update(record, aborted=True)
        raise


async def _answer(
    request: web.Request, state: ProviderState, record: RecordedRequest, chat: bool
) -> web.StreamResponse:
    config = state.config
    if config.api_key is not None and request.headers.get("Authorization") != f"Bearer {config.api_key}":
        state.update(record, status=401, completed=True)
        return _error(401, "Incorrect API key provided.", code="invalid_api_key")
    invalid = _invalid(record.body, state, chat)
    if invalid is not None:
        state.update(record, status=invalid.status, completed=True)
        return invalid
    body: dict[str, Any] = record.body
    fault = state.take_fault()
    state.update(record, fault=fault)
    kind = fault.kind if fault is not None else None
    delay = config.first_byte_delay + (fault.seconds if fault is not None and kind == "delay" else 0.0)
    if delay > 0:
        await asyncio.sleep(delay)
    stream = bool(body.get("stream", False))
    if fault is not None and kind == "status":
        response = _fault_response(fault)
        state.update(record, status=response.status, completed=True)
        return response
    if kind == "drop" or (kind in CUTS and not stream):
        raise _Cut
    budget = _budget(body, config.output_tokens)
    reply = _Reply(
        chat, str(body.get("model")), [f" tok{i}" for i in range(budget)], _prompt_tokens(body, chat),
        "length" if budget < config.output_tokens else "stop", f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
        int(time.time()),
    )  # fmt: skip
    interval = fault.seconds if fault is not None and kind == "slow" else config.token_interval
    with_usage = kind != "no_usage"
    if stream:
        options = body.get("stream_options")
        include_usage = with_usage and isinstance(options, dict) and bool(options.get("include_usage"))
        return await _stream(request, state, record, reply, interval, include_usage, fault)
    if interval > 0:
        await asyncio.sleep(interval * len(reply.tokens))
    state.update(record, status=200, completed=True)
    return web.json_response(reply.whole(with_usage))


async def _stream(
    request: web.Request, state: ProviderState, record: RecordedRequest, reply: _Reply, interval: float,
    include_usage: bool, fault: Fault | None,
) -> web.StreamResponse:  # fmt: skip
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await response.prepare(request)
    state.update(record, status=200)
    fail_at = None
    if fault is not None and fault.kind in ("fail_before_content", "fail_after_content"):
        fail_at = 0 if fault.kind == "fail_before_content" else fault.after_events
    if reply.chat:
        await response.write(_sse(reply.chunk({"delta": {"role": "assistant", "content": ""}, "finish_reason": None})))
    for sent, token in enumerate([*reply.tokens, None]):
        if sent == fail_at and fault is not None:
            if not fault.in_band:
                raise _Cut
            error = {"message": "Injected stream failure (stand-in).", "type": "server_error", "param": None}
            await response.write(_sse({"error": {**error, "code": None}}))
            await response.write_eof()
            return response
        if token is None:
            break
        if interval > 0:
            await asyncio.sleep(interval)
        piece: dict[str, Any] = {"delta": {"content": token}} if reply.chat else {"text": token}
        await response.write(_sse(reply.chunk({**piece, "finish_reason": None})))
    last: dict[str, Any] = {"delta": {}} if reply.chat else {"text": ""}
    await response.write(_sse(reply.chunk({**last, "finish_reason": reply.finish})))
    if include_usage:
        await response.write(_sse({**reply.chunk(None), "usage": reply.usage()}))
    await response.write(_sse("[DONE]"))
    await response.write_eof()
    state.update(record, completed=True)
    return response


async def _chat(request: web.Request) -> web.StreamResponse:
    return await _serve(request, chat=True)


async def _completions(request: web.Request) -> web.StreamResponse:
    return await _serve(request, chat=False)


async def _models(request: web.Request) -> web.Response:
    models = sorted(request.app[STATE_KEY].config.models)
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "standin-provider"} for m in models]
    return web.json_response({"object": "list", "data": data})


def make_provider_app(state: ProviderState) -> web.Application:
    """The provider's aiohttp application, answering from (and recording into) ``state``."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[STATE_KEY] = state
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_post("/v1/completions", _completions)
    app.router.add_get("/v1/models", _models)
    return app
