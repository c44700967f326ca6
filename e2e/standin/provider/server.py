"""The stand-in provider as a listening server: on the running loop
(:class:`StandinProvider`) or on its own loop in a thread (:class:`BackgroundProvider`)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

from aiohttp import web

from e2e.standin.provider.app import make_provider_app
from e2e.standin.provider.faults import Fault, ProviderConfig, ProviderState, RecordedRequest

__all__ = ["BackgroundProvider", "StandinProvider"]

_T = TypeVar("_T")
LOOPBACK = "127.0.0.1"
# Like a provider going down: requests in flight get a short grace, then are cut.
_SHUTDOWN_GRACE_SECONDS = 0.5


class StandinProvider:
    """The stand-in provider on the running asyncio loop (an async context manager).

    The fault, record and wait methods may be called from any thread.
    """

    def __init__(self, config: ProviderConfig | None = None, *, host: str = LOOPBACK, port: int = 0) -> None:
        self._state = ProviderState(config or ProviderConfig())
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Self:
        await self.start_listening()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop_listening()

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, ending in ``/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def config(self) -> ProviderConfig:
        """How it answers when no fault applies."""
        return self._state.config

    @config.setter
    def config(self, config: ProviderConfig) -> None:
        self._state.config = config

    async def start_listening(self) -> int:
        """Listen (again) on the port (a free one the first time when 0); return it."""
        if self._runner is not None:
            return self.port
        runner = web.AppRunner(
            make_provider_app(self._state), access_log=None, handler_cancellation=True,
            shutdown_timeout=_SHUTDOWN_GRACE_SECONDS,
        )  # fmt: skip
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self.port = runner, int(runner.addresses[0][1])
        return self.port

    async def stop_listening(self) -> None:
        """Stop listening, so connects are refused; requests in flight are cut after a grace."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def fail_next(self, fault: Fault, count: int = 1) -> None:
        """Apply ``fault`` to the next ``count`` generating requests (after faults queued before)."""
        if count < 1:
            raise ValueError("count must be >= 1")
        self._state.queue(fault, count)

    def fail_always(self, fault: Fault) -> None:
        """Apply ``fault`` to every generating request (once queued faults before it ran out)
        until :meth:`clear_faults`."""
        self._state.queue(fault, None)

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        with self._state.changed:
            self._state.faults.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        """Copies of the recorded generating requests, oldest first."""
        with self._state.changed:
            return [dataclasses.replace(r) for r in self._state.records]

    def clear_requests(self) -> None:
        """Forget the recorded requests."""
        with self._state.changed:
            self._state.records.clear()

    def wait_for(
        self, predicate: Callable[[list[RecordedRequest]], bool], timeout: float = 10.0
    ) -> list[RecordedRequest]:
        """Block until ``predicate(requests)`` holds and return the requests, else raise
        TimeoutError. Call it from a thread other than the provider's loop."""
        deadline = time.monotonic() + timeout
        with self._state.changed:
            while not predicate(records := [dataclasses.replace(r) for r in self._state.records]):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"stand-in provider: condition not met in {timeout} s ({len(records)} requests)")
                self._state.changed.wait(left)
            return records


class BackgroundProvider:
    """A :class:`StandinProvider` on its own loop in a daemon thread, driven by blocking calls.

    ``with BackgroundProvider(ProviderConfig(api_key="k")) as provider: ...``
    """

    def __init__(self, config: ProviderConfig | None = None, *, port: int = 0) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="standin-provider", daemon=True)
        self.provider = StandinProvider(config, port=port)

    def _call(self, coro: Coroutine[Any, Any, _T], timeout: float = 30.0) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def __enter__(self) -> Self:
        self._thread.start()
        try:
            self.start_listening()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, ending in ``/v1``."""
        return self.provider.base_url

    @property
    def port(self) -> int:
        """The port it listens (or listened) on."""
        return self.provider.port

    @property
    def requests(self) -> list[RecordedRequest]:
        """Copies of the recorded generating requests, oldest first."""
        return self.provider.requests

    def set_config(self, config: ProviderConfig) -> None:
        """Change how it answers, from the next request on."""
        self.provider.config = config

    def fail_next(self, fault: Fault, count: int = 1) -> None:
        """Apply ``fault`` to the next ``count`` generating requests."""
        self.provider.fail_next(fault, count)

    def fail_always(self, fault: Fault) -> None:
        """Apply ``fault`` to every generating request until :meth:`clear_faults`."""
        self.provider.fail_always(fault)

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        self.provider.clear_faults()

    def clear_requests(self) -> None:
        """Forget the recorded requests."""
        self.provider.clear_requests()

    def wait_for(
        self, predicate: Callable[[list[RecordedRequest]], bool], timeout: float = 10.0
    ) -> list[RecordedRequest]:
        """Block until ``predicate(requests)`` holds; see :meth:`StandinProvider.wait_for`."""
        return self.provider.wait_for(predicate, timeout)

    def start_listening(self) -> int:
        """Listen (again) on the same port; return it."""
        return self._call(self.provider.start_listening())

    def stop_listening(self) -> None:
        """Stop listening: connects are refused until :meth:`start_listening`."""
        self._call(self.provider.stop_listening())

    def close(self) -> None:
        """Stop listening, then the loop and its thread."""
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._call(self.provider.stop_listening())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()
