"""Holding a request while its pool has no Ready replica: bounded, and a client that leaves is dropped.

A held request shows in the `ebbtide_gateway_held` gauge at once, so the controller starts a scale-up
within one tick of the first request. It waits until an endpoint becomes routable or its deadline
passes; the handler's cancellation (aiohttp's `handler_cancellation`, a client that disconnected) ends
the wait and frees its place in the queue. A streaming request held for long gets its stream started
and SSE comments (`: keep-alive`), which clients ignore and idle timeouts of proxies do not fire on; its
answer then continues that stream, and an error becomes an error event in it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from enum import Enum

from aiohttp import web

from gateway.directory import PoolState
from gateway.relay import SSE_HEADERS

__all__ = ["HoldResult", "hold", "keep_alive"]

_RECHECK_SECONDS = 1.0
"""A held request re-reads when its replica is due at least this often."""


class HoldResult(Enum):
    """How a hold ended."""

    READY = "ready"
    """A replica became routable."""
    TIMEOUT = "timeout"
    """The deadline passed first."""
    FULL = "full"
    """The pool's hold queue was full; the request was not held."""


async def hold(
    pool: PoolState, until: float, max_held: int, *, due_by: Callable[[float], float] | None = None
) -> HoldResult:
    """Wait (at most until the monotonic time `until`) for a routable endpoint of `pool`.

    With `due_by` (now -> when a replica is expected Ready), the hold also ends, as a timeout, as soon
    as that moves past `until` (the starting pod went away): the fallback need not wait for nothing.
    """
    if pool.held >= max_held:
        return HoldResult.FULL
    pool.held += 1
    pool.metrics.held.inc()
    try:
        while True:
            now = time.monotonic()
            if pool.routable(now):
                return HoldResult.READY
            left = until - now
            if left <= 0 or (due_by is not None and due_by(now) > until):
                return HoldResult.TIMEOUT
            try:
                async with asyncio.timeout(min(left, _RECHECK_SECONDS)):
                    await pool.ready_event.wait()
            except TimeoutError:
                continue
            if not pool.routable(time.monotonic()):
                # Woken by a change that left nothing routable (a pool removed, a replica gone): yield so
                # the event is cleared by the change's author before waiting again.
                await asyncio.sleep(0.05)
    finally:
        pool.held -= 1
        pool.metrics.held.dec()


async def keep_alive(request: web.Request, holder: list[web.StreamResponse], every: float) -> None:
    """While a streaming request is held: after `every` seconds start its stream and send SSE comments,
    so that clients and proxies with idle timeouts keep waiting."""
    await asyncio.sleep(every)
    response = web.StreamResponse(headers={**SSE_HEADERS, "X-Ebbtide-Route": "held"})
    holder.append(response)
    await response.prepare(request)
    while True:
        await response.write(b": keep-alive\n\n")
        await asyncio.sleep(every)
