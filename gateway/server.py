"""Running the gateway: on the current event loop (`serve`), or on its own loop in a thread
(`BackgroundGateway`, for tests, benchmarks and embedding)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

from aiohttp import web

from gateway.app import Gateway, build_app
from gateway.scraper import scrape_round

__all__ = ["BackgroundGateway", "start_site"]

_T = TypeVar("_T")


async def start_site(gateway: Gateway, host: str, port: int, *, scrape: bool = True) -> tuple[web.AppRunner, int]:
    """Start serving `gateway` on host:port (0: a free port); return the runner and the bound port.

    Handler cancellation is on: a client that disconnects cancels its request, upstream included.
    """
    runner = web.AppRunner(
        build_app(gateway, scrape=scrape),
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=gateway.settings.shutdown_grace_seconds,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    if gateway.session is not None:
        await scrape_round(gateway.session, gateway.directory, gateway.settings)
    return runner, int(bound)


class BackgroundGateway:
    """A gateway on its own event loop in a daemon thread: `with BackgroundGateway(gw) as g: g.base_url`."""

    def __init__(self, gateway: Gateway, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.gateway = gateway
        self.host = host
        self.port = port
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="ebbtide-gateway", daemon=True)
        self._runner: web.AppRunner | None = None

    def call(self, coro: Coroutine[Any, Any, _T], timeout: float = 30.0) -> _T:
        """Run a coroutine on the gateway's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run(self, action: Callable[[], _T], timeout: float = 30.0) -> _T:
        """Run a plain callable on the gateway's loop (the directory is not thread-safe)."""

        async def wrapper() -> _T:
            return action()

        return self.call(wrapper(), timeout)

    @property
    def base_url(self) -> str:
        """The OpenAI base URL of the gateway (ending in /v1)."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def url(self) -> str:
        """The gateway's root URL."""
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> Self:
        self._thread.start()
        try:
            self._runner, self.port = self.call(start_site(self.gateway, self.host, self.port))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving, then the loop and its thread."""
        if self._thread.is_alive():
            if self._runner is not None:
                self.call(self._runner.cleanup())
                self._runner = None
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
        if not self.loop.is_closed():
            self.loop.close()
