"""10,000 malformed or hostile requests against a real gateway on loopback: none is answered 500,
every error the gateway writes is OpenAI-shaped, nothing is logged as an error, and it keeps serving.

The cases are drawn from a seeded generator (the same 10,000 on every run): random bytes, broken
and deeply nested JSON, wrong types in every field the gateway reads, unicode (emoji, lone
surrogates, NUL, right-to-left marks), bodies over the size limit, bad or missing auth, odd
content types and encodings, wrong methods and paths, and raw protocol garbage on bare sockets.
Behind the gateway: the stand-in vLLM (pool ``gpu-model``) and the stand-in paid provider (pool
``paid-model``, which has no replica, so its requests go to the fallback at once).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import openai
import pytest

from e2e.standin import BackgroundCluster, StandinConfig
from e2e.standin.provider import BackgroundProvider, ProviderConfig
from gateway import GatewaySettings
from gateway.logs import quiet_malformed_requests
from tests.gateway_support import gateway_for, make_pool, provider

pytestmark = pytest.mark.timeout(300)

SEED = 20261201
CASES = 10_000
KEY = "client-key"
MAX_BODY = 64 * 1024
CONCURRENCY = 32
_STATUS_LINE = re.compile(rb"^HTTP/1\.[01] (\d{3})")
_WEIRD_TEXT = [
    "", " ", "🌊" * 50, "\u0000", "a\u0000b", "\u202eetirw", "\ud800", "\udfff\ud800", "e\u0301" * 30, "𝓗𝓮𝓵𝓵𝓸",
    "潮汐", "\ufeff", "\r\n\r\n", "<script>", "' OR 1=1 --", "%00", "../../etc/passwd", "x" * 5000, "\\", '"',
]  # fmt: skip
_PATHS = ["/v1/chat/completions", "/v1/completions"]


@dataclass
class Case:
    """One request: sent through aiohttp (``raw`` None) or written as these bytes on a bare socket."""

    method: str = "POST"
    path: str = "/v1/chat/completions"
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    raw: bytes | None = None


def _weird(rng: random.Random, depth: int = 0) -> Any:
    """A JSON value of a random type, often an unpleasant one."""
    roll = rng.randrange(12 if depth < 3 else 8)
    if roll == 0:
        return None
    if roll == 1:
        return rng.choice([True, False])
    if roll == 2:
        return rng.choice([0, -1, 1, 2**31, 2**63, -(2**63), 10**30, 7])
    if roll == 3:
        return rng.choice([0.5, -0.0, 1e308, -1e-308, 3.14])
    if roll in (4, 5, 6, 7):
        return rng.choice(_WEIRD_TEXT) + rng.choice(["", "model", "user", "🌊"])
    if roll in (8, 9):
        return [_weird(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = [*_WEIRD_TEXT, "role", "content", "type"]
    return {rng.choice(keys): _weird(rng, depth + 1) for _ in range(rng.randrange(4))}


def _valid_body(rng: random.Random, chat: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": rng.choice(["gpu-model", "paid-model"]), "max_tokens": rng.randrange(1, 4)}
    text = rng.choice(_WEIRD_TEXT[:14]) or "hi"
    if chat:
        body["messages"] = [{"role": "user", "content": text}]
    else:
        body["prompt"] = text
    if rng.random() < 0.3:
        body["stream"] = True
    return body


def _dumps(value: Any) -> bytes:
    # ensure_ascii writes lone surrogates as \\ud800 escapes: valid JSON text that is not valid Unicode.
    return json.dumps(value, ensure_ascii=True).encode()


def _headers(rng: random.Random) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    roll = rng.random()
    if roll < 0.88:
        headers["Authorization"] = f"Bearer {KEY}"
    elif roll < 0.92:
        headers["Authorization"] = rng.choice(["Bearer", "Bearer ", "Basic a2V5", f"bearer {KEY}", f"Bearer {KEY}x"])
    elif roll < 0.95:
        headers["Authorization"] = "Bearer " + "k" * rng.choice([1, 300, 7000])
    if rng.random() < 0.05:
        headers["Content-Type"] = rng.choice(["text/plain", "multipart/form-data; boundary=x", "application/xml", ""])
    if rng.random() < 0.02:
        headers["Content-Encoding"] = rng.choice(["gzip", "deflate", "br"])  # with a body that is none of them
    if rng.random() < 0.03:
        headers["X-Stainless-Timeout"] = rng.choice(["-1", "nan", "inf", "1e309", "abc", "0", "999999999999"])
    return headers


def _case(rng: random.Random) -> Case:
    """One hostile request; the kinds are weighted so that most reach the gateway's body parsing."""
    kind = rng.randrange(100)
    chat = rng.random() < 0.6
    path = _PATHS[0] if chat else _PATHS[1]
    headers = _headers(rng)
    if kind < 10:  # random bytes
        return Case(path=path, headers=headers, body=rng.randbytes(rng.randrange(0, 2000)))
    if kind < 18:  # broken JSON
        text = _dumps(_valid_body(rng, chat))
        cut = [text[: rng.randrange(len(text))], text + b"}", text.replace(b":", b"=", 1), b"{'model': 1}", b"NaN",
               b'{"model": "gpu-model", "messages": [}', b"\xff\xfe{", b"", b"null", b"[]", b'"text"']  # fmt: skip
        return Case(path=path, headers=headers, body=rng.choice(cut))
    if kind < 21:  # nesting far past any parser's depth
        depth = rng.choice([600, 5000, 50_000])
        nested = b"[" * depth + b"]" * depth
        return Case(path=path, headers=headers, body=b'{"model": "gpu-model", "messages": ' + nested + b"}")
    if kind < 24:  # over the size limit (413), or just under it
        size = rng.choice([MAX_BODY + 1, MAX_BODY * 2, MAX_BODY * 8, MAX_BODY - 200])
        body = _valid_body(rng, chat)
        body["pad"] = "p" * size
        return Case(path=path, headers=headers, body=_dumps(body))
    if kind < 30:  # wrong methods and paths
        method = rng.choice(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "POST"])
        odd = rng.choice(["/v1/chat/completions/", "/v1//completions", "/v1/models/x", "/v2/chat/completions",
                          "/v1/%2e%2e/metrics", "/" + "a" * 3000, "/v1/chat/completions?x=" + "%ff" * 50, "/v1/🌊",
                          "/v1/embeddings", "/metrics", "/readyz", "/"])  # fmt: skip
        return Case(method=method, path=odd, headers=headers, body=_dumps(_valid_body(rng, chat)))
    if kind < 38:  # raw bytes on a bare socket: broken request lines and headers
        return Case(raw=_raw(rng))
    body = _valid_body(rng, chat)
    if kind < 80:  # wrong types and values in the fields
        for _ in range(rng.randrange(1, 4)):
            name = rng.choice(["model", "messages", "prompt", "stream", "stream_options", "max_tokens",
                               "max_completion_tokens", "n", "temperature", "priority", "stop", "user", "tools",
                               "logprobs", "response_format", rng.choice(_WEIRD_TEXT)])  # fmt: skip
            if rng.random() < 0.15:
                body.pop(name, None)
            else:
                body[name] = _weird(rng)
        if chat and rng.random() < 0.3:
            body["messages"] = [_weird(rng) for _ in range(rng.randrange(1, 4))]
    elif kind < 90:  # unicode everywhere, in keys and values
        body[rng.choice(_WEIRD_TEXT)] = rng.choice(_WEIRD_TEXT)
        body["model"] = rng.choice(["gpu-model", "paid-model"]) + rng.choice(["", "\u0000", "🌊", " "])
    # else: a valid request, with unicode content: it must succeed
    return Case(path=path, headers=headers, body=_dumps(body))


def _raw(rng: random.Random) -> bytes:
    body = _dumps(_valid_body(rng, True))
    good = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n".encode()
    options = [
        rng.randbytes(rng.randrange(1, 500)),
        b"GARBAGE\r\n\r\n",
        b"POST /v1/chat/completions HTTP/9.9\r\n\r\n",
        good + b"Content-Length: -5\r\n\r\n" + body,
        good + b"Content-Length: 99999999999999999999\r\n\r\n" + body,
        good + b"Content-Length: 10\r\nContent-Length: 20\r\n\r\n" + body,
        good + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n" + body + b"\r\n0\r\n\r\n",
        good + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        good + b"X-Bad: \xff\xfe\x00\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
        good + b"X-Long: " + b"v" * 20_000 + b"\r\n\r\n",
        good + b"No-Colon-Header\r\n\r\n",
        good + b"Content-Length: %d\r\n\r\n" % (len(body) + 50) + body,  # shorter than announced, then EOF
        b"POST /v1/chat/completions\r\n\r\n",
        b"\r\n\r\n\r\n",
    ]
    return rng.choice(options)


def _cases() -> Iterator[Case]:
    rng = random.Random(SEED)
    for _ in range(CASES):
        yield _case(rng)


@dataclass
class Tally:
    """What came back."""

    statuses: Counter[int] = field(default_factory=Counter)
    no_response: int = 0
    """Connections closed without an answer (allowed; never a 500)."""
    dropped_http: list[str] = field(default_factory=list)
    """Requests sent through aiohttp that got no answer, by what was sent."""
    bad_error_bodies: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)
    """What was sent when the answer was a 500 (for the failure message)."""


async def _send_http(session: aiohttp.ClientSession, base: str, case: Case, tally: Tally) -> None:
    try:
        async with session.request(
            case.method, base + case.path, data=case.body, headers=case.headers, skip_auto_headers=["Content-Type"]
        ) as response:
            data = await response.read()
            tally.statuses[response.status] += 1
            if response.status == 500 and len(tally.server_errors) < 10:
                tally.server_errors.append(f"{case.method} {case.path[:60]} {case.headers} {case.body[:150]!r}")
            if response.status >= 400 and case.method != "HEAD" and response.content_type == "application/json":
                _check_error_body(data, case, tally)
    except (aiohttp.ClientError, TimeoutError) as err:
        tally.no_response += 1  # the server closed the connection: allowed, never a 500
        tally.dropped_http.append(f"{type(err).__name__} {case.method} {case.path[:40]} {len(case.body)} bytes")


def _check_error_body(data: bytes, case: Case, tally: Tally) -> None:
    try:
        error = json.loads(data)["error"]
        assert isinstance(error["message"], str) and error["message"]
        assert {"type", "param", "code"} <= error.keys()
    except (ValueError, KeyError, TypeError, AssertionError):
        tally.bad_error_bodies.append(f"{case.method} {case.path[:80]}: {data[:200]!r}")


async def _send_raw(port: int, case: Case, tally: Tally) -> None:
    assert case.raw is not None
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        tally.no_response += 1
        return
    try:
        writer.write(case.raw)
        await writer.drain()
        # No half-close: the server would take the EOF for a client gone and answer nothing. A request
        # still waiting for the body it announced gets no answer within the timeout, which is allowed.
        head = await asyncio.wait_for(reader.read(64 * 1024), timeout=3)
        match = _STATUS_LINE.match(head)
        if match:
            tally.statuses[int(match.group(1))] += 1
            if match.group(1) == b"500" and len(tally.server_errors) < 10:
                tally.server_errors.append(f"raw {case.raw[:150]!r}")
        else:
            tally.no_response += 1
    except (OSError, TimeoutError):
        tally.no_response += 1
    finally:
        writer.close()


async def _barrage(base: str, port: int) -> Tally:
    tally = Tally()
    limit = asyncio.Semaphore(CONCURRENCY)
    timeout = aiohttp.ClientTimeout(total=20)
    # A fresh connection per request: a connection the server closed after one bad request must not
    # make the next request on it look dropped.
    connector = aiohttp.TCPConnector(force_close=True, limit=CONCURRENCY)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False, connector=connector) as session:

        async def one(case: Case) -> None:
            async with limit:
                if case.raw is None:
                    await _send_http(session, base, case, tally)
                else:
                    await _send_raw(port, case, tally)

        await asyncio.gather(*(one(c) for c in _cases()))
    return tally


@pytest.fixture
def stack() -> Iterator[Any]:
    fast = StandinConfig(model_name="standin-model", tokens_per_second=100_000, output_tokens=3, max_num_seqs=64)
    with BackgroundCluster(fast, replicas=1) as vllm, BackgroundProvider(ProviderConfig(api_key="sk-paid")) as paid:
        gpu = make_pool(name="gpu", spec={"models": ["gpu-model"]})
        spilled = make_pool(
            name="paid",
            providers=[provider("paid", paid.base_url)],
            spec={"models": ["paid-model"], "coldStartSeconds": 600, "objective": {"ttftSeconds": 2}},
        )
        settings = GatewaySettings(max_body_bytes=MAX_BODY, scrape_interval_seconds=0.2, check_priority=False)
        pools = [(gpu, [f"127.0.0.1:{vllm.ports[0]}"]), (spilled, [])]
        with gateway_for(pools, settings=settings, keys=[KEY], provider_keys={"paid": "sk-paid"}) as gw:
            yield gw, paid


def test_ten_thousand_hostile_requests_get_no_500_and_the_gateway_keeps_serving(
    stack: Any, caplog: pytest.LogCaptureFixture
) -> None:
    gw, paid = stack
    caplog.set_level(logging.WARNING)
    quiet_malformed_requests()  # as `ebbtide gateway` runs (configure_logging)
    port = int(gw.url.rsplit(":", 1)[1])
    tally = asyncio.run(_barrage(gw.url, port))

    answered = sum(tally.statuses.values())
    assert answered + tally.no_response == CASES
    assert len(tally.dropped_http) < CASES // 100, tally.dropped_http[:10]
    assert tally.statuses[500] == 0, "\n".join([str(dict(tally.statuses)), *tally.server_errors])
    assert not tally.bad_error_bodies, tally.bad_error_bodies[:5]
    # The mix reached every layer: successes, the body checks, the size limit, auth and the HTTP parser.
    assert tally.statuses[200] > 500 and tally.statuses[400] > 1000 and tally.statuses[413] > 50
    assert tally.statuses[401] > 100 and tally.no_response < CASES // 10, (dict(tally.statuses), tally.no_response)
    assert paid.requests, "requests for paid-model reached the fallback provider"
    # No error logged, by the gateway's loggers or by aiohttp's server (whose parser refusals, answered
    # 400, are the clients' fault: a DEBUG line, not an ERROR with a traceback per request).
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [f"{r.name}: {r.getMessage()[:200]}" for r in errors[:5]]

    with openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0, timeout=10) as client:
        answer = client.chat.completions.create(model="gpu-model", messages=[{"role": "user", "content": "still up?"}])
        assert answer.choices[0].message.content
        streamed = list(client.completions.create(model="paid-model", prompt="and the fallback?", stream=True))
        assert "".join(c.choices[0].text for c in streamed if c.choices)
