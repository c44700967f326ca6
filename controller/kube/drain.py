"""Two waits shared by the background writers (Events, status): sleep until woken or stopped, and wait
until a queue has drained."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

__all__ = ["until_drained", "wake_or_stop"]


async def wake_or_stop(wake: asyncio.Event, stop: asyncio.Event, timeout: float) -> None:
    """Return when `wake` or `stop` is set, or after `timeout` (a safety net, not a schedule)."""
    waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stop.wait())]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waiters:
        waiter.cancel()


async def until_drained(pending: Callable[[], int], timeout: float) -> bool:
    """Wait until `pending()` is 0; False when `timeout` passed first."""
    deadline = time.monotonic() + timeout
    while pending():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True
