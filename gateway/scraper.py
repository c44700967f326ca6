"""The background reader of every endpoint's /metrics (about once a second) and the priority check.

Each round scrapes all endpoints concurrently with a short budget, so one slow replica never delays
another's reading, nor the requests sharing the loop. In static mode a scrape that answers is also what
makes an address Ready. Once per new endpoint (when the pool defers late requests) a one-token request
with `priority` checks that vLLM runs with `--scheduling-policy priority`; one that refuses it keeps
serving, with the late lane in FIFO order, and a warning says how to fix it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import aiohttp
import orjson

from gateway.config import GatewaySettings
from gateway.directory import PoolDirectory, PoolState
from gateway.upstream import Endpoint, scrape_endpoint

__all__ = ["check_priority", "scrape_forever", "scrape_round"]

_LOG = logging.getLogger("ebbtide.gateway")
_PROBE_TIMEOUT = aiohttp.ClientTimeout(total=30.0, sock_connect=2.0)


async def check_priority(session: aiohttp.ClientSession, endpoint: Endpoint, model: str, priority: int) -> None:
    """Send a one-token completion with `priority` and record whether the engine accepts the field."""
    body = orjson.dumps({"model": model, "prompt": "ping", "max_tokens": 1, "priority": priority})
    try:
        async with session.post(
            endpoint.completions_url, data=body, headers={"Content-Type": "application/json"}, timeout=_PROBE_TIMEOUT
        ) as response:
            text = await response.read()
            if response.status == 400 and b"priority" in text.lower():
                endpoint.priority_ok = False
                _LOG.warning(
                    "endpoint %s (%s) refuses request priority: start vLLM with --scheduling-policy priority;"
                    " until then the late lane queues in FIFO order", endpoint.name, endpoint.address,
                )  # fmt: skip
            elif response.status == 200:
                endpoint.priority_ok = True
    except (aiohttp.ClientError, TimeoutError, OSError):
        return  # checked again after the next good scrape


async def _scrape_pool(session: aiohttp.ClientSession, pool: PoolState, settings: GatewaySettings) -> None:
    endpoints = list(pool.endpoints.values())
    if not endpoints:
        return
    timeout = min(pool.spec.metrics.scrape_timeout_seconds, max(settings.scrape_interval_seconds, 0.2))
    before = [e.in_flight for e in endpoints]
    samples = await asyncio.gather(
        *(scrape_endpoint(session, e, timeout=timeout, model_name=pool.served_model) for e in endpoints)
    )
    now = time.monotonic()
    for endpoint, sample, in_flight in zip(endpoints, samples, before, strict=True):
        endpoint.record_scrape(sample, now, in_flight)
        if pool.probe_readiness:
            endpoint.ready = sample is not None
    pool.refresh_ready(now)


async def scrape_round(session: aiohttp.ClientSession, directory: PoolDirectory, settings: GatewaySettings) -> None:
    """Scrape every endpoint of every pool once."""
    await asyncio.gather(*(_scrape_pool(session, pool, settings) for pool in list(directory.pools.values())))


async def scrape_forever(session: aiohttp.ClientSession, directory: PoolDirectory, settings: GatewaySettings) -> None:
    """Scrape rounds every `scrape_interval_seconds` (and the priority checks) until cancelled."""
    probing: set[asyncio.Task[None]] = set()
    try:
        while True:
            started = time.monotonic()
            try:
                await scrape_round(session, directory, settings)
            except Exception:  # a bug in one round must not stop the readings for good
                _LOG.exception("scrape round failed")
            if settings.check_priority:
                for pool in list(directory.pools.values()):
                    if not pool.spec.objective.defer_late_requests or pool.served_model is None:
                        continue
                    for endpoint in pool.endpoints.values():
                        if endpoint.priority_ok is None and endpoint.scrape_ok and len(probing) < 16:
                            endpoint.priority_ok = True  # optimistic while the check runs, so it runs once
                            task = asyncio.create_task(
                                check_priority(session, endpoint, pool.served_model, settings.late_priority)
                            )
                            probing.add(task)
                            task.add_done_callback(probing.discard)
            await asyncio.sleep(max(settings.scrape_interval_seconds - (time.monotonic() - started), 0.05))
    finally:
        for task in probing:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*probing, return_exceptions=True)
