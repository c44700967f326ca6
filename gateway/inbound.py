"""A client's request parsed once: the body (orjson), what routing needs, and the bodies sent upstream.

Validation covers what the gateway itself reads (model, stream, stream_options, the prompt's presence,
max_tokens); everything else is the upstream's to judge. The bodies sent upstream are re-serialised only
when something must change: the served model name, the late lane's `priority`, the usage request; a
paid provider never sees vLLM-only fields.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import ApiError

__all__ = ["VLLM_ONLY_FIELDS", "ClientRequest", "gpu_body", "parse_request", "provider_body", "request_id"]

VLLM_ONLY_FIELDS = frozenset(
    {
        "priority", "top_k", "min_p", "repetition_penalty", "length_penalty", "use_beam_search", "min_tokens",
        "stop_token_ids", "include_stop_str_in_output", "ignore_eos", "skip_special_tokens",
        "spaces_between_special_tokens", "truncate_prompt_tokens", "prompt_logprobs", "allowed_token_ids",
        "bad_words", "guided_json", "guided_regex", "guided_choice", "guided_grammar", "guided_decoding_backend",
        "guided_whitespace_pattern", "structured_outputs", "add_generation_prompt", "continue_final_message",
        "add_special_tokens", "documents", "chat_template", "chat_template_kwargs", "mm_processor_kwargs",
        "request_id", "cache_salt", "kv_transfer_params", "vllm_xargs", "return_tokens_as_token_ids",
        "return_token_ids", "logits_processors",
    }
)  # fmt: skip
"""Request fields of vLLM's OpenAI server that OpenAI's API does not take (stripped before a provider)."""

_MAX_MODEL_NAME = 256
# A rough tokenizer for estimates only (routing, and accounting when a provider reports no usage).
_BYTES_PER_TOKEN = 4
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]+")


@dataclass(slots=True)
class ClientRequest:
    """One parsed request."""

    chat: bool
    raw: bytes
    body: dict[str, Any]
    model: str
    stream: bool
    wants_usage: bool
    """The client asked for `stream_options.include_usage` (the usage chunk is relayed, not stripped)."""
    prompt_tokens: int
    """Estimated prompt tokens (from the body's size)."""
    max_tokens: int | None
    arrival: float
    deadline: float | None
    """When the client gives up on the whole request (monotonic), from `X-Stainless-Timeout` (the
    openai Node client's total timeout), if it sent one."""
    first_byte_deadline: float | None = None
    """When the client gives up waiting for its answer's first byte (monotonic): the total deadline, or
    sooner from `X-Stainless-Read-Timeout` (the openai Python client's read timeout, which also runs
    between bytes, so it bounds only the wait before an answer starts)."""

    request_id: str = ""
    """The request's id: the client's `X-Request-Id` when it is a sane one, else a new one; returned to
    the client and sent to the replica (vLLM uses it as its own request id), so logs line up."""

    def expected_output(self, mean_completion: float) -> float:
        """The output this request will likely produce: the pool's mean, at most its max_tokens."""
        return mean_completion if self.max_tokens is None else min(float(self.max_tokens), mean_completion)


def _int_field(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ApiError(400, f"{key} must be a non-negative integer", param=key)
    return value


def request_id(header: str | None) -> str:
    """The client's `X-Request-Id` if it is 1-128 characters of letters, digits and `._:-`, else a new one."""
    if header and len(header) <= 128 and _REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


def _seconds(header: str | None) -> float | None:
    """A timeout header's seconds, None when absent or not a sensible number (ignored, never refused)."""
    if not header:
        return None
    try:
        seconds = float(header)
    except ValueError:
        return None
    return seconds if 0 < seconds < 86400 else None


def parse_request(
    raw: bytes, *, chat: bool, arrival: float, timeout_header: str | None, read_timeout_header: str | None = None
) -> ClientRequest:
    """Parse and check a request body; raise ApiError (4xx) naming what is wrong."""
    if not raw:
        raise ApiError(400, "the request body is empty; send a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise ApiError(400, f"the request body is not valid JSON: {err}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {type(body).__name__}")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model is required and must be a non-empty string", param="model")
    if len(model) > _MAX_MODEL_NAME:
        raise ApiError(400, f"model must be at most {_MAX_MODEL_NAME} characters", param="model")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be a boolean", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object", param="stream_options")
    wants_usage = bool(options and options.get("include_usage") is True)
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "messages must be a non-empty array", param="messages")
        max_tokens = _int_field(body, "max_completion_tokens")
        if max_tokens is None:
            max_tokens = _int_field(body, "max_tokens")
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str | list) or (isinstance(prompt, list) and not prompt):
            raise ApiError(400, "prompt must be a string or a non-empty array", param="prompt")
        max_tokens = _int_field(body, "max_tokens")
    total, read = _seconds(timeout_header), _seconds(read_timeout_header)
    deadline = None if total is None else arrival + total
    first_byte = deadline
    if read is not None and (first_byte is None or arrival + read < first_byte):
        first_byte = arrival + read
    return ClientRequest(
        chat=chat,
        raw=raw,
        body=body,
        model=model,
        stream=stream,
        wants_usage=stream and wants_usage,
        prompt_tokens=max(1, len(raw) // _BYTES_PER_TOKEN),
        max_tokens=max_tokens,
        arrival=arrival,
        deadline=deadline,
        first_byte_deadline=first_byte,
    )


def _dumps(body: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(body)
    except TypeError:
        # orjson writes at most 255 levels of nesting (it reads 1024): such a body is not a real request.
        raise ApiError(400, "the request body nests too deeply (more than 255 levels)") from None


def _with_usage(body: dict[str, Any]) -> None:
    options = body.get("stream_options")
    body["stream_options"] = (
        {**options, "include_usage": True} if isinstance(options, dict) else {"include_usage": True}
    )


def gpu_body(req: ClientRequest, served_model: str | None, priority: int | None) -> bytes:
    """The body for a vLLM replica: the client's bytes unless the model, lane or usage request must change.

    The gateway owns the lanes: a client's own `priority` is dropped (it could jump the queue otherwise).
    """
    body = req.body
    model = served_model or req.model
    inject_usage = req.stream and not req.wants_usage
    if model == req.model and priority is None and "priority" not in body and not inject_usage:
        return req.raw
    out = dict(body)
    out["model"] = model
    out.pop("priority", None)
    if priority is not None:
        out["priority"] = priority
    if inject_usage:
        _with_usage(out)
    return _dumps(out)


def provider_body(req: ClientRequest, model: str | None) -> bytes:
    """The body for a paid provider: its model name, no vLLM-only fields, usage asked for when streaming."""
    out = {k: v for k, v in req.body.items() if k not in VLLM_ONLY_FIELDS}
    out["model"] = model or req.model
    if req.stream:
        _with_usage(out)
    return _dumps(out)
