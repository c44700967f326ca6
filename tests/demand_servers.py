"""Loopback servers for the demand tests: a hung one, a broken one, stand-in queues, a gateway exposition."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from controller.demand import series as S

__all__ = [
    "GatewayMetrics",
    "broken_server",
    "free_port",
    "gateway_registry",
    "hung_server",
    "queue_requests",
    "routed_server",
]


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def hung_server(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[int]:
    """Accepts connections and reads requests but never answers (a wedged pod); yields its port."""
    held: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read(65536)
        await asyncio.sleep(3600)

    server = await asyncio.start_server(handle, host, port)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for writer in held:
            writer.close()


@asynccontextmanager
async def _serving(handle: Callable[[web.Request], Awaitable[web.Response]], host: str) -> AsyncIterator[int]:
    """An aiohttp server on `host` answering every GET with `handle`; yields its port."""
    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


@asynccontextmanager
async def broken_server(status: int, body: str, host: str = "127.0.0.1") -> AsyncIterator[int]:
    """Answers every GET with `status` and `body`; yields its port."""

    async def handle(request: web.Request) -> web.Response:
        return web.Response(status=status, text=body)

    async with _serving(handle, host) as port:
        yield port


@asynccontextmanager
async def routed_server(answers: Mapping[str, str], host: str = "127.0.0.1") -> AsyncIterator[int]:
    """A Prometheus-like server answering each GET with `answers[its query parameter]`; yields its port."""

    async def handle(request: web.Request) -> web.Response:
        query = request.query.get("query", "")
        if query not in answers:
            return web.Response(status=400, text=json.dumps({"status": "error", "error": f"no answer for {query}"}))
        return web.Response(status=200, text=answers[query])

    async with _serving(handle, host) as port:
        yield port


async def queue_requests(http: httpx.AsyncClient, base: str, model: str, count: int) -> list[asyncio.Task[object]]:
    """Start `count` completions on a (paused) stand-in so they sit in its queue; returns their tasks."""

    async def one() -> object:
        body = {"model": model, "prompt": "hello", "max_tokens": 4}
        try:
            return (await http.post(base + "/v1/completions", json=body, timeout=60)).status_code
        except httpx.HTTPError as err:
            return err

    return [asyncio.create_task(one()) for _ in range(count)]


@dataclass(frozen=True)
class GatewayMetrics:
    """The gateway's series (controller/demand/series.py) declared as the gateway declares them."""

    registry: CollectorRegistry
    requests: Counter
    tokens: Counter
    fallback_usd: Counter
    saturation_tokens: Counter
    beyond_objective_tokens: Counter
    in_flight: Gauge
    held: Gauge


def gateway_registry() -> GatewayMetrics:
    """A fresh registry holding the gateway's series."""
    registry = CollectorRegistry()
    pool = list(S.POOL_LABELS)

    def counter(name: str, labels: list[str]) -> Counter:
        return Counter(name.removesuffix("_total"), name, labels, registry=registry)

    return GatewayMetrics(
        registry=registry,
        requests=counter(S.REQUESTS, [*pool, "route"]),
        tokens=counter(S.TOKENS, [*pool, "route", "kind", "source"]),
        fallback_usd=counter(S.FALLBACK_USD, [*pool, "provider"]),
        saturation_tokens=counter(S.SATURATION_TOKENS, [*pool, "kind"]),
        beyond_objective_tokens=counter(S.BEYOND_OBJECTIVE_TOKENS, [*pool, "kind"]),
        in_flight=Gauge(S.IN_FLIGHT, "in flight", [*pool, "route"], registry=registry),
        held=Gauge(S.HELD, "held", pool, registry=registry),
    )
