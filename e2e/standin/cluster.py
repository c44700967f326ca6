"""Several stand-in replicas in one process: add and remove them while it runs.

:class:`StandinCluster` lives on an asyncio loop (an async context manager);
:class:`BackgroundCluster` runs one on its own loop in a daemon thread and offers the
same operations as plain blocking calls, so tests need no async plugin. The optional
control app (``GET/POST /replicas``, ``DELETE /replicas/{port}``, ``POST /pause``,
``POST /resume``) lets another process, such as an e2e test, follow a Deployment's pods.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

from aiohttp import web

from e2e.standin.api import make_replica_app
from e2e.standin.config import StandinConfig
from e2e.standin.engine import Engine
from e2e.standin.metrics import EngineMetrics

__all__ = ["LOOPBACK", "BackgroundCluster", "Replica", "StandinCluster"]

LOOPBACK = "127.0.0.1"
# A removed replica behaves like a killed pod: in-flight requests get a short grace, then drop.
_SHUTDOWN_GRACE_SECONDS = 0.5

_T = TypeVar("_T")


@dataclass
class Replica:
    """One listening replica: its engine and its aiohttp runner."""

    port: int
    engine: Engine
    runner: web.AppRunner


async def _listen(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=_SHUTDOWN_GRACE_SECONDS)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    return runner, int(bound)


class StandinCluster:
    """A set of stand-in vLLM replicas sharing one config, each on its own port."""

    def __init__(self, config: StandinConfig | None = None, *, host: str = LOOPBACK) -> None:
        self.config = config or StandinConfig()
        self.host = host
        self.replicas: dict[int, Replica] = {}
        self._control: web.AppRunner | None = None
        self.control_port: int | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def ports(self) -> list[int]:
        """Ports of the live replicas, in the order they were added."""
        return list(self.replicas)

    def url(self, port: int) -> str:
        """Base URL of one replica (no trailing slash)."""
        return f"http://{self.host}:{port}"

    async def add_replica(self, port: int = 0) -> int:
        """Start a replica (on ``port``, or a free one when 0) and return its port."""
        engine = Engine(self.config, EngineMetrics(self.config.model_name))
        runner, bound = await _listen(make_replica_app(engine), self.host, port)
        self.replicas[bound] = Replica(bound, engine, runner)
        return bound

    async def remove_replica(self, port: int) -> None:
        """Stop a replica like a terminated pod: it stops listening at once, requests in flight
        get a short grace period to finish, and those still running then are dropped."""
        replica = self.replicas.pop(port)
        await replica.runner.cleanup()

    def pause(self) -> None:
        """Pause decoding on every replica (requests keep queueing and scheduling)."""
        for replica in self.replicas.values():
            replica.engine.pause()

    def resume(self) -> None:
        """Resume decoding on every replica."""
        for replica in self.replicas.values():
            replica.engine.resume()

    async def start_control(self, port: int = 0) -> int:
        """Serve the control API on ``port`` (0 for a free one) and return the port."""
        app = web.Application()
        app.router.add_get("/replicas", self._list)
        app.router.add_post("/replicas", self._add)
        app.router.add_delete("/replicas/{port}", self._remove)
        app.router.add_post("/pause", self._pause)
        app.router.add_post("/resume", self._resume)
        self._control, self.control_port = await _listen(app, self.host, port)
        return self.control_port

    async def close(self) -> None:
        """Stop every replica and the control API."""
        for port in list(self.replicas):
            await self.remove_replica(port)
        if self._control is not None:
            await self._control.cleanup()
            self._control = None

    async def _list(self, request: web.Request) -> web.Response:
        return web.json_response({"ports": self.ports, "paused": any(r.engine.paused for r in self.replicas.values())})

    async def _add(self, request: web.Request) -> web.Response:
        port = 0
        if request.can_read_body:
            body = await request.json()
            port = int(body.get("port", 0)) if isinstance(body, dict) else 0
        try:
            bound = await self.add_replica(port)
        except OSError as err:
            return web.json_response({"error": str(err)}, status=409)
        return web.json_response({"port": bound}, status=201)

    async def _remove(self, request: web.Request) -> web.Response:
        port = int(request.match_info["port"])
        if port not in self.replicas:
            return web.json_response({"error": f"no replica on port {port}"}, status=404)
        await self.remove_replica(port)
        return web.json_response({"ports": self.ports})

    async def _pause(self, request: web.Request) -> web.Response:
        self.pause()
        return web.json_response({"paused": True})

    async def _resume(self, request: web.Request) -> web.Response:
        self.resume()
        return web.json_response({"paused": False})


class BackgroundCluster:
    """A :class:`StandinCluster` on its own event loop in a daemon thread, driven by blocking calls.

    Use as ``with BackgroundCluster(config, replicas=2) as cluster: ...``.
    """

    def __init__(self, config: StandinConfig | None = None, *, replicas: int = 1, control: bool = False) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="standin-vllm", daemon=True)
        self._initial = replicas
        self._with_control = control
        self.cluster = StandinCluster(config)

    def _call(self, coro: Coroutine[Any, Any, _T], timeout: float = 30.0) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def __enter__(self) -> Self:
        self._thread.start()
        try:
            for _ in range(self._initial):
                self.add_replica()
            if self._with_control:
                self._call(self.cluster.start_control())
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def config(self) -> StandinConfig:
        """The replicas' shared config."""
        return self.cluster.config

    @property
    def ports(self) -> list[int]:
        """Ports of the live replicas."""
        return self._call(_run(lambda: self.cluster.ports))

    @property
    def control_port(self) -> int | None:
        """Port of the control API, when started."""
        return self.cluster.control_port

    def url(self, port: int) -> str:
        """Base URL of one replica."""
        return self.cluster.url(port)

    def add_replica(self, port: int = 0) -> int:
        """Start a replica and return its port."""
        return self._call(self.cluster.add_replica(port))

    def remove_replica(self, port: int) -> None:
        """Stop a replica."""
        self._call(self.cluster.remove_replica(port))

    def pause(self) -> None:
        """Pause decoding on every replica."""
        self._call(_run(self.cluster.pause))

    def resume(self) -> None:
        """Resume decoding on every replica."""
        self._call(_run(self.cluster.resume))

    def engine(self, port: int) -> Engine:
        """The engine behind one replica; read it only while no request is in flight."""
        return self.cluster.replicas[port].engine

    def close(self) -> None:
        """Stop every replica, then the loop and its thread."""
        if self._thread.is_alive():
            self._call(self.cluster.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()


async def _run(action: Callable[[], _T]) -> _T:
    """Run a plain callable on the cluster's loop (asyncio objects are not thread-safe)."""
    return action()
