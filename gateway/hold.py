"""Holding a request while its pool has no Ready replica: bounded, and a client that leaves is dropped.

A held request shows in the `ebbtide_gateway_held` gauge at once, so the controller starts a scale-up
within one tick of the first request. It waits until an endpoint becomes routable or its deadline
passes; the handler's cancellation (aiohttp's `handler_cancellation`, a client that disconnected) ends
the wait and frees its place in the queue.
"""

from __future__ import annotations

import asyncio
import time
from enum import Enum

from gateway.directory import PoolState

__all__ = ["HoldResult", "hold"]


class HoldResult(Enum):
    """How a hold ended."""

    READY = "ready"
    """A replica became routable."""
    TIMEOUT = "timeout"
    """The deadline passed first."""
    FULL = "full"
    """The pool's hold queue was full; the request was not held."""


async def hold(pool: PoolState, until: float, max_held: int) -> HoldResult:
    """Wait (at most until the monotonic time `until`) for a routable endpoint of `pool`."""
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
            if left <= 0:
                return HoldResult.TIMEOUT
            try:
                async with asyncio.timeout(left):
                    await pool.ready_event.wait()
            except TimeoutError:
                return HoldResult.READY if pool.routable(time.monotonic()) else HoldResult.TIMEOUT
            if not pool.routable(time.monotonic()):
                # Woken by a change that left nothing routable (a pool removed, a replica gone): yield so
                # the event is cleared by the change's author before waiting again.
                await asyncio.sleep(0.05)
    finally:
        pool.held -= 1
        pool.metrics.held.dec()
