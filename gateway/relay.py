"""One attempt at one upstream: send the body, relay the answer to the client, read its usage.

Non-streaming answers are passed on whole (status, content type, bytes). Streams are relayed chunk by
chunk as they arrive (`readany`, no line reads), but the client's response starts only with the first
content event: until then a failure (a failover status, a connect error, a timeout before the first
event, an error event, the stream ending early) raises `AttemptFailed` and the caller may try the next
upstream. After it, a failure ends the client's stream with an OpenAI-style error event: two upstreams
never share one stream. Leaving early (the client went away, or the handler was cancelled) closes the
upstream connection, which is what makes vLLM abort the request.

A stream whose end marker (`data: [DONE]`) has passed is finished even if the relay never returns: the
openai clients close the connection as soon as they read that marker, often before the upstream's body
has ended, and the handler is cancelled while it still waits for that end. The caller's `Progress`
keeps what such a stream delivered (its usage above all), so the request is still accounted as finished;
for a request left before its end it tells what had been relayed (`Progress.left`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from gateway.errors import ApiError, error_event
from gateway.providers import is_failover_status, retry_after_seconds
from gateway.sse import SseScanner

__all__ = ["SSE_HEADERS", "AttemptFailed", "Progress", "Refused", "Relayed", "passed_on", "relay"]

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
_MAX_ERROR_BODY = 64 * 1024
_BYTES_PER_TOKEN = 4


class AttemptFailed(Exception):
    """The upstream failed before anything reached the client: another upstream may be tried."""

    def __init__(self, reason: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


class Refused(Exception):
    """The upstream answered with a status that is the request's fault (no failover): 400, 404, 422..."""

    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body
        self.content_type = content_type


@dataclass(slots=True)
class Relayed:
    """What an attempt delivered."""

    response: web.StreamResponse
    prompt_tokens: int
    completion_tokens: int
    estimated: bool
    """No usage came back: the token counts are estimates."""
    broken: bool = False
    """A stream that failed after its first content event (ended with an error event)."""


class Progress:
    """How far one attempt's stream got, held by the caller of `relay` so that it can be read when `relay`
    did not return: the client left (its handler was cancelled, or a write to it failed)."""

    __slots__ = ("_prompt_estimate", "_response", "_scanner")

    def __init__(self) -> None:
        self._scanner: SseScanner | None = None
        self._response: web.StreamResponse | None = None
        self._prompt_estimate = 0

    def _track(self, scanner: SseScanner, response: web.StreamResponse, prompt_estimate: int) -> None:
        self._scanner, self._response, self._prompt_estimate = scanner, response, prompt_estimate

    def finished(self) -> Relayed | None:
        """What the stream delivered, when the upstream had ended it (its `data: [DONE]` was read) before
        the relay was interrupted; None when it had not (the request was left unfinished) or was no stream."""
        scanner, response = self._scanner, self._response
        if scanner is None or response is None or not scanner.done:
            return None
        return _delivered(response, scanner, self._prompt_estimate, broken=scanner.late_error)

    def left(self, prompt_estimate: int) -> tuple[int, int, bool]:
        """What a request its client left before its end had cost: (prompt tokens, completion tokens,
        estimated). The upstream's usage when it had reported it; else the prompt's estimate and, for a
        stream under way, one completion token per content event relayed (vLLM and the APIs send a
        token an event; the upstream stops when the gateway drops it); before that, none."""
        scanner = self._scanner
        if scanner is None:
            return prompt_estimate, 0, True
        counts = _usage_counts(scanner.usage)
        if counts is not None:
            return counts[0], counts[1], False
        return prompt_estimate, scanner.content_events, True


def _delivered(response: web.StreamResponse, scanner: SseScanner, prompt_estimate: int, *, broken: bool) -> Relayed:
    """A relayed stream with its usage as the upstream reported it, or estimated when it reported none."""
    counts = _usage_counts(scanner.usage)
    if counts is None:
        return Relayed(response, prompt_estimate, scanner.content_events, estimated=True, broken=broken)
    return Relayed(response, counts[0], counts[1], estimated=False, broken=broken)


def _usage_counts(usage: Mapping[str, Any] | None) -> tuple[int, int] | None:
    if not usage:
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if isinstance(prompt, int) and isinstance(completion, int) and prompt >= 0 and completion >= 0:
        return prompt, completion
    return None


def _output_estimate(answer: Mapping[str, Any]) -> int:
    """Generated tokens of an answer without usage, from its text's length."""
    chars = 0
    for choice in answer.get("choices") or ():
        if isinstance(choice, dict):
            message = choice.get("message")
            text = message.get("content") if isinstance(message, dict) else choice.get("text")
            chars += len(text) if isinstance(text, str) else 0
    return max(1, chars // _BYTES_PER_TOKEN)


async def _open(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    timeout: aiohttp.ClientTimeout,
    first_byte: float | None,
) -> aiohttp.ClientResponse:
    try:
        async with asyncio.timeout(first_byte):
            upstream = await session.post(url, data=body, headers=headers, timeout=timeout)
    except TimeoutError:
        raise AttemptFailed("timeout") from None
    except aiohttp.ClientConnectorError:
        raise AttemptFailed("connect") from None
    except (aiohttp.ClientError, OSError):
        raise AttemptFailed("connection") from None
    if upstream.status == 200:
        return upstream
    try:
        if is_failover_status(upstream.status):
            raise AttemptFailed(
                f"http-{upstream.status}",
                status=upstream.status,
                retry_after=retry_after_seconds(upstream.headers.get("Retry-After")),
            )
        try:
            data = await upstream.content.read(_MAX_ERROR_BODY)
        except (aiohttp.ClientError, TimeoutError, OSError):
            data = b""
        raise Refused(upstream.status, data, upstream.headers.get("Content-Type", "application/json"))
    finally:
        upstream.close()


async def relay(
    request: web.Request,
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    *,
    headers: Mapping[str, str],
    timeout: aiohttp.ClientTimeout,
    first_byte: float | None,
    stream: bool,
    strip_usage: bool,
    prompt_estimate: int,
    response_headers: Mapping[str, str],
    started: web.StreamResponse | None = None,
    on_first_token: Callable[[], None] | None = None,
    progress: Progress | None = None,
) -> Relayed:
    """Send one request upstream and relay the answer; see the module docstring for what raises.

    `started` is a stream response already sent to the client (keep-alive comments during a hold): the
    upstream's events continue it. `on_first_token` is called once a stream's first content event (its
    first token) has arrived, before it is sent on; a whole answer never calls it. `progress`, when
    given, follows a stream once its response to the client has started (see `Progress`).
    """
    upstream = await _open(session, url, body, headers, timeout, first_byte)
    try:
        if not stream:
            return await _whole(upstream, prompt_estimate, response_headers)
        return await _stream(
            request,
            upstream,
            first_byte,
            strip_usage,
            prompt_estimate,
            response_headers,
            started,
            on_first_token,
            progress or Progress(),
        )
    finally:
        # Not read to the end (the client left, a timeout): closing, not releasing, drops the connection
        # and with it the upstream request.
        upstream.close()


async def _whole(upstream: aiohttp.ClientResponse, prompt_estimate: int, extra: Mapping[str, str]) -> Relayed:
    try:
        data = await upstream.read()
    except TimeoutError:
        raise AttemptFailed("timeout") from None
    except (aiohttp.ClientError, OSError):
        raise AttemptFailed("connection") from None
    counts = None
    estimate = len(data) // _BYTES_PER_TOKEN
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        counts = _usage_counts(parsed.get("usage"))
        if counts is None:
            estimate = _output_estimate(parsed)
    headers = {"Content-Type": upstream.headers.get("Content-Type", "application/json"), **extra}
    response = web.Response(body=data, headers=headers)
    if counts is None:
        return Relayed(response, prompt_estimate, estimate, estimated=True)
    return Relayed(response, counts[0], counts[1], estimated=False)


async def _stream(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    first_byte: float | None,
    strip_usage: bool,
    prompt_estimate: int,
    extra: Mapping[str, str],
    started: web.StreamResponse | None,
    on_first_token: Callable[[], None] | None,
    progress: Progress,
) -> Relayed:
    scanner = SseScanner(strip_usage=strip_usage)
    content = upstream.content
    before: list[bytes] = []
    try:
        async with asyncio.timeout(first_byte):
            while not scanner.committed:
                chunk = await content.readany()
                if not chunk:
                    break
                piece = scanner.feed(chunk)
                if scanner.error is not None:
                    raise AttemptFailed("stream-error")
                if piece:
                    before.append(piece)
    except TimeoutError:
        raise AttemptFailed("timeout") from None
    except (aiohttp.ClientError, OSError):
        raise AttemptFailed("stream") from None
    if not scanner.committed:
        raise AttemptFailed("stream-ended")
    if on_first_token is not None:
        on_first_token()
    if started is None:
        response = web.StreamResponse(headers={**SSE_HEADERS, **extra})
        await response.prepare(request)
    else:
        response = started
        if not response.prepared:
            await response.prepare(request)
    progress._track(scanner, response, prompt_estimate)
    if before:
        # Held back until the first content event (the role chunk, comments): sent in one write.
        await response.write(b"".join(before) if len(before) > 1 else before[0])
    broken = False
    try:
        while True:
            chunk = await content.readany()
            if not chunk:
                break
            piece = scanner.feed(chunk)
            if piece:
                await response.write(piece)
        tail = scanner.flush()
        if tail:
            await response.write(tail)
        if not scanner.done:
            broken = True
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, TimeoutError):
        broken = True
    broken = broken or scanner.late_error
    if broken and not scanner.late_error:
        with contextlib.suppress(ConnectionError):
            await response.write(
                error_event(502, "the upstream stream failed before it finished", code="upstream_error")
            )
    # No write_eof here: the handler returns the response and aiohttp ends it after the caller has
    # accounted the request, so a client that saw the stream's end also sees it in /metrics.
    return _delivered(response, scanner, prompt_estimate, broken=broken)


def passed_on(refused: Refused, started: web.StreamResponse | None) -> web.StreamResponse:
    """An upstream's refusal of the request (400, 404, 422...) as the client's answer."""
    if started is None:
        return web.Response(status=refused.status, body=refused.body, headers={"Content-Type": refused.content_type})
    # The stream has begun (keep-alives during a hold): the refusal becomes its error event.
    message = f"the upstream refused the request (HTTP {refused.status})"
    try:
        error = orjson.loads(refused.body).get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            message = error["message"]
    except (orjson.JSONDecodeError, AttributeError):
        pass
    raise ApiError(refused.status, message, code="upstream_refused")
