"""The open-loop load generator (run in its own process) and the statistics of its runs."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from gateway.bench.servers import BODY

__all__ = ["RunResult", "generate", "median_result", "percentile", "summarize"]

# A request still unanswered after this long counts as failed (its latency as infinite).
_REQUEST_TIMEOUT_SECONDS = 10.0

# ---- the open-loop load generator --------------------------------------------------------


async def _one(session: aiohttp.ClientSession, url: str, body: bytes, due: float) -> tuple[float, float] | None:
    """Send one request; (latency from its due time, completion time), or None when it failed.

    Times are ``time.perf_counter()``: uvloop's ``loop.time()`` has millisecond steps."""
    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
            if response.status != 200:
                await response.read()
                return None
            first = await response.content.readany()
            latency = time.perf_counter() - due
            if not first:
                return None
            while await response.content.readany():
                pass
            return latency, time.perf_counter()
    except (aiohttp.ClientError, TimeoutError):
        return None


async def generate(url: str, rate: float, duration: float, warmup: float, stream: bool) -> dict[str, Any]:
    """Send chat completions to ``url`` at ``rate`` per second for ``warmup + duration`` s;
    return the measured (post-warmup) requests' latencies (None: failed) and timing."""
    body = json.dumps({**BODY, "stream": stream}).encode()
    timeout = aiohttp.ClientTimeout(total=_REQUEST_TIMEOUT_SECONDS)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    skip, total = int(warmup * rate), int((warmup + duration) * rate)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter() + 0.05
        tasks = []
        for i in range(total):
            due = start + i / rate
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.create_task(_one(session, url, body, due)))
        results = await asyncio.gather(*tasks)
    measured = results[skip:]
    first_due = start + skip / rate
    done = [r[1] for r in measured if r is not None]
    return {
        "latencies": [None if r is None else r[0] for r in measured],
        "elapsed": (max(done) - first_due) if done else None,
    }


# ---- statistics --------------------------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    """One run of one target at one rate: what the load generator measured."""

    offered: float
    sustained: float
    """Requests answered per second, from the first measured send to the last answer."""
    p50_ms: float
    p99_ms: float
    """Latency percentiles in ms; a failed request counts as infinitely slow."""
    failed: int


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``values`` by the nearest-rank method (inf stays inf)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 1))
    return ordered[int(rank) - 1]


def summarize(offered: float, raw: dict[str, Any]) -> RunResult:
    """Turn the load generator's output into a :class:`RunResult`."""
    latencies = [float("inf") if v is None else v * 1000 for v in raw["latencies"]]
    ok = sum(1 for v in raw["latencies"] if v is not None)
    sustained = ok / raw["elapsed"] if raw["elapsed"] else 0.0
    failed = len(latencies) - ok
    return RunResult(offered, sustained, percentile(latencies, 0.5), percentile(latencies, 0.99), failed)


def median_result(results: list[RunResult]) -> RunResult:
    """The median of each field over several runs of one target, mode and rate."""

    def mid(values: Iterator[float]) -> float:
        return float(statistics.median(values))

    return RunResult(
        results[0].offered,
        mid(r.sustained for r in results),
        mid(r.p50_ms for r in results),
        mid(r.p99_ms for r in results),
        int(mid(r.failed for r in results)),
    )
