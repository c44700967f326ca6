"""Shared pieces of the gateway tests: pools built from dicts, a gateway on loopback, metric readings.

Everything is real: the stand-in vLLM replicas (e2e/standin), the stand-in provider
(e2e/standin/provider) and the gateway all listen on 127.0.0.1; clients are the official `openai` ones.
"""

from __future__ import annotations

import copy
import json
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gateway import BackgroundGateway, Gateway, GatewaySettings, PoolDirectory
from gateway.auth import ClientAuth
from policies.spec import GPUPool

__all__ = ["gateway_for", "make_pool", "metric", "provider", "scrape_text", "wait_until"]

_BASE: dict[str, Any] = {
    "apiVersion": "ebbtide.dev/v1alpha1",
    "kind": "GPUPool",
    "metadata": {"name": "chat", "namespace": "default"},
    "spec": {
        "models": ["chat-model"],
        "target": {"deployment": "vllm", "servedModel": "standin-model", "maxReplicas": 4},
        "coldStartSeconds": 180,
        "demand": {"replicaTokensPerSecond": 100000},
        "fallback": {"providers": [], "maxQueueWaitSeconds": 2},
        "objective": {"ttftSeconds": 5, "deferLateRequests": True},
    },
}


def provider(name: str, base_url: str, **extra: Any) -> dict[str, Any]:
    """A provider entry of fallback.providers (camelCase keys, as in YAML)."""
    return {"name": name, "baseUrl": base_url, "model": "paid-model", **extra}


def make_pool(
    *, name: str = "chat", providers: Sequence[Mapping[str, Any]] = (), spec: Mapping[str, Any] | None = None
) -> GPUPool:
    """A validated GPUPool: the base above, these providers, and `spec` merged in one level deep."""
    doc = copy.deepcopy(_BASE)
    doc["metadata"]["name"] = name
    doc["spec"]["fallback"]["providers"] = [dict(p) for p in providers]
    for key, value in (spec or {}).items():
        if isinstance(value, Mapping) and isinstance(doc["spec"].get(key), dict):
            doc["spec"][key].update(value)
        else:
            doc["spec"][key] = value
    return GPUPool.model_validate(doc)


@contextmanager
def gateway_for(
    pools: Sequence[tuple[GPUPool, Sequence[str]]],
    *,
    settings: GatewaySettings | None = None,
    keys: Sequence[str] = (),
    provider_keys: Mapping[str, str] | None = None,
    static: bool = True,
) -> Iterator[BackgroundGateway]:
    """A gateway on a free loopback port serving `pools` (each with its replica addresses)."""
    directory = PoolDirectory()
    for pool, addresses in pools:
        endpoints = [(f"{pool.metadata.name}-{i}", a) for i, a in enumerate(addresses)]
        directory.set_pool(pool, endpoints, provider_keys=provider_keys, probe_readiness=static)
    directory.mark_synced()
    settings = settings or GatewaySettings(scrape_interval_seconds=0.2, check_priority=False)
    auth = ClientAuth(keys) if keys else None
    with BackgroundGateway(Gateway(directory, settings, auth)) as gw:
        yield gw


def scrape_text(gw: BackgroundGateway) -> str:
    """The gateway's /metrics text."""
    with urllib.request.urlopen(f"{gw.url}/metrics", timeout=10) as response:
        return str(response.read().decode())


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 when none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `predicate` until it holds; fail the test with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def chat_upstream(chat: Callable[[Any], Awaitable[Any]]) -> Callable[[], Any]:
    """An upstream (replica or provider) answering chat completions with the aiohttp handler `chat`, and
    an idle `/metrics` as a replica's (nothing waiting, nothing running): an app factory for `AppThread`."""
    from aiohttp import web

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text="vllm:num_requests_waiting 0\nvllm:num_requests_running 0\n")

    def make() -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        app.router.add_get("/metrics", metrics)
        return app

    return make


class AppThread:
    """An aiohttp application on 127.0.0.1 on its own loop in a daemon thread (a real server)."""

    def __init__(self, make_app: Callable[[], Any]) -> None:
        import asyncio
        import threading

        self._asyncio = asyncio
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._make_app = make_app
        self._runner: Any = None
        self.port = 0

    def __enter__(self) -> AppThread:
        from aiohttp import web

        async def start() -> tuple[Any, int]:
            runner = web.AppRunner(self._make_app(), access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            return runner, int(runner.addresses[0][1])

        self._thread.start()
        self._runner, self.port = self._asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    @property
    def address(self) -> str:
        """host:port."""
        return f"127.0.0.1:{self.port}"


def recording_replica(seen: list[dict[str, Any]], config: Any = None) -> Callable[[], Any]:
    """A factory for a stand-in vLLM replica app (e2e/standin) that also records each request's JSON
    body and headers into `seen`, to check what the gateway sent."""
    from aiohttp import web

    from e2e.standin.api import make_replica_app
    from e2e.standin.config import StandinConfig
    from e2e.standin.engine import Engine
    from e2e.standin.metrics import EngineMetrics

    def make() -> Any:
        cfg = config or StandinConfig()
        app = make_replica_app(Engine(cfg, EngineMetrics(cfg.model_name)))

        @web.middleware
        async def record(request: web.Request, handler: Any) -> Any:
            if request.method == "POST":
                raw = await request.read()
                seen.append({"path": request.path, "headers": dict(request.headers), "body": json.loads(raw)})
            return await handler(request)

        app.middlewares.append(record)
        return app

    return make
