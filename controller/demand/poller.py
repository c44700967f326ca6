"""The daemon's demand cache: background reads per pool, and the MetricsSource port over the cache.

Each pool is read by its own task every `interval` seconds, each read bounded by the pool's
`scrapeTimeoutSeconds`, so a hung pod delays only its own pool's next sample and never the others'
nor the tick. The gateway is scraped once per round for every pool by one more task, which also pulls
the requests each gateway process finished (`controller.demand.requests`) into each pool's replay
(`policies.replay`). `sample()` is synchronous and only reads the cache; the tick calls it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import httpx

from controller.demand.aggregate import (
    RATE_WINDOW_SECONDS,
    EngineTotals,
    GatewayCounters,
    ReadingWindow,
    aggregate,
)
from controller.demand.gateway import GatewayScrape, GatewaySource, gateway_counters
from controller.demand.requests import FinishedRequest, RequestFeed
from controller.demand.sources import build_engine_source
from controller.kube.pods import PodInfo
from controller.ports import NoData, PoolRef
from controller.scrape.sample import EngineSample
from policies.replay import Replay, ReplayRequest, request_terms
from policies.spec import GPUPoolSpec
from policies.types import DemandSample

__all__ = ["DemandPoller"]

log = logging.getLogger(__name__)

_GATEWAY_TIMEOUT_SECONDS = 2.0
"""Budget of one gateway scrape (the spec's default scrape timeout)."""
_WINDOW_RESOLUTION_SECONDS = 5.0
"""Rate baselines kept per pool at most this often: about 13 readings per pool instead of 60."""


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(slots=True)
class _Pool:
    ref: PoolRef
    spec: GPUPoolSpec
    pods: tuple[PodInfo, ...]
    secrets: Mapping[str, str]
    window: ReadingWindow
    sample: DemandSample | NoData
    fallback_usd_total: float | None = None
    reads: int = 0
    replay: Replay | None = None
    replay_key: tuple[object, ...] = ()


def _replay_key(spec: GPUPoolSpec) -> tuple[object, ...]:
    """What the replay of a pool is computed from: a change starts it afresh."""
    d = spec.demand
    return (
        spec.metrics.gateway,
        spec.demand.replay,
        spec.target.max_replicas,
        spec.objective.ttft_seconds,
        d.replica_tokens_per_second,
        d.replica_prefill_tokens_per_second,
        d.replica_decode_tokens_per_second,
        spec.fallback.price,
    )


def _replay_requests(spec: GPUPoolSpec, rows: Sequence[FinishedRequest]) -> list[ReplayRequest]:
    out = []
    for r in rows:
        work, prefill, usd = request_terms(spec.demand, spec.fallback.price, r.prompt_tokens, r.completion_tokens)
        out.append(ReplayRequest(r.arrived_at, work, prefill, usd))
    return out


class DemandPoller:
    """Keeps each pool's latest DemandSample (or NoData) fresh in the background."""

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        interval: float = 1.0,
        gateway_endpoints: Callable[[], Sequence[str]] | None = None,
        gateway_timeout: float = _GATEWAY_TIMEOUT_SECONDS,
        clock: Callable[[], dt.datetime] = _utcnow,
        rate_window_seconds: float = RATE_WINDOW_SECONDS,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"the poll interval must be > 0 seconds, got {interval}")
        self.http = http
        self.interval = interval
        self.gateway_endpoints = gateway_endpoints
        self.gateway_timeout = gateway_timeout
        self.clock = clock
        self.rate_window_seconds = rate_window_seconds
        self._pools: dict[tuple[str, str], _Pool] = {}
        self._gateway: tuple[GatewayScrape | NoData, dt.datetime] | None = None
        self._changed: asyncio.Event | None = None
        self._gateway_read = asyncio.Event()
        self._feed = RequestFeed(timeout=gateway_timeout)
        self._feed_ok_at: float | None = None
        """When every gateway process's requests were last read (epoch s)."""

    @staticmethod
    def _key(pool: PoolRef) -> tuple[str, str]:
        return (pool.namespace, pool.name)

    def set_pool(
        self, pool: PoolRef, spec: GPUPoolSpec, pods: Sequence[PodInfo], secrets: Mapping[str, str] | None = None
    ) -> None:
        """Add a pool or update its spec and pods (call from the event loop's thread whenever they change).

        The rate window survives pod changes; a change of source kind starts it afresh (other counters).
        """
        key = self._key(pool)
        entry = self._pools.get(key)
        if entry is None or entry.spec.metrics.source is not spec.metrics.source or entry.ref != pool:
            window = ReadingWindow(
                self.rate_window_seconds, resolution=min(_WINDOW_RESOLUTION_SECONDS, self.rate_window_seconds / 2)
            )
            entry = _Pool(pool, spec, tuple(pods), dict(secrets or {}), window, NoData("not read yet"))
            self._pools[key] = entry
        else:
            entry.spec, entry.pods, entry.secrets = spec, tuple(pods), dict(secrets or {})
        replay_key = _replay_key(spec)
        if entry.replay_key != replay_key:
            entry.replay_key = replay_key
            wanted = self.gateway_endpoints is not None and spec.metrics.gateway and spec.demand.replay
            entry.replay = Replay(spec.target.max_replicas, spec.objective.ttft_seconds) if wanted else None
        if self._changed is not None:
            self._changed.set()

    def remove_pool(self, pool: PoolRef) -> None:
        """Forget a pool; its task stops at its next round."""
        self._pools.pop(self._key(pool), None)
        if self._changed is not None:
            self._changed.set()

    def sample(self, pool: PoolRef, now: dt.datetime) -> DemandSample | NoData:
        """The pool's latest demand from the cache (the MetricsSource port); never waits on the network."""
        entry = self._pools.get(self._key(pool))
        if entry is None:
            return NoData(f"pool {pool.namespace}/{pool.name} is not being read")
        return entry.sample

    def fallback_usd_total(self, pool: PoolRef) -> float | None:
        """FALLBACK_USD summed over the gateway processes at the last good read; None when unknown."""
        entry = self._pools.get(self._key(pool))
        return None if entry is None else entry.fallback_usd_total

    def _gateway_for(self, entry: _Pool) -> GatewayCounters | NoData | None:
        if self.gateway_endpoints is None or not entry.spec.metrics.gateway:
            return None
        if self._gateway is None:
            return NoData("gateway not read yet")
        scrape, at = self._gateway
        if isinstance(scrape, NoData):
            return scrape
        if not scrape.endpoints:
            return None  # no gateway runs: its counters are absent, not zero
        age = (self.clock() - at).total_seconds()
        if age > 3 * self.interval + self.gateway_timeout:
            return NoData(f"gateway counters {age:.0f}s old")
        counters = gateway_counters(scrape, entry.ref.namespace, entry.ref.name)
        return GatewayCounters(counters.instances, at=at)

    async def read_gateway(self) -> None:
        """One scrape of every gateway endpoint into the cache."""
        if self.gateway_endpoints is None:
            return
        try:
            endpoints = list(self.gateway_endpoints())
        except Exception as err:  # the daemon's lookup; its failure must not stop the poller
            self._gateway = (NoData(f"gateway endpoints unknown: {err}"), self.clock())
            return
        result = await GatewaySource(endpoints, timeout=self.gateway_timeout).read(self.http)
        self._gateway = (result, self.clock())
        self._gateway_read.set()
        await self._read_requests(endpoints)

    async def _read_requests(self, endpoints: Sequence[str]) -> None:
        """Pull what every gateway process finished since the last read into the pools' replays."""
        feed = await self._feed.read(self.http, endpoints)
        now = self.clock().timestamp()
        if feed.failure is not None:
            log.warning("replay: %s", feed.failure)
        else:
            self._feed_ok_at = now
        if feed.skipped:
            log.warning("replay: %d unreadable request rows from the gateway skipped", feed.skipped)
        for key, entry in self._pools.items():
            replay = entry.replay
            if replay is None:
                continue
            if replay.clock is None and feed.failure is None and endpoints:
                # From when every gateway's log is complete, but no more than the window back.
                replay.begin(max(feed.complete_since, now - replay.window_seconds - replay.lag_seconds))
            rows = feed.requests.get(key)
            if rows:
                replay.add(_replay_requests(entry.spec, rows))

    def _replay_usd(self, entry: _Pool, now: dt.datetime) -> tuple[float, ...] | None:
        """The pool's replay priced per count; None when it is not fed (no gateway, or one unread)."""
        replay = entry.replay
        if replay is None or self._feed_ok_at is None:
            return None
        at = now.timestamp()
        if at - self._feed_ok_at > replay.lag_seconds:
            return None  # requests the replay is due to take may be missing
        replay.advance(at)
        return replay.costs(entry.spec.replica_usd_per_hour)

    async def read_pool(self, pool: PoolRef) -> DemandSample | NoData:
        """Read one pool now and cache the outcome (what its task does every interval)."""
        entry = self._pools.get(self._key(pool))
        if entry is None:
            return NoData(f"pool {pool.namespace}/{pool.name} is not being read")
        if self.gateway_endpoints is not None and entry.spec.metrics.gateway and self._gateway is None:
            # The first round: wait for the gateway's first scrape rather than report it missing.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._gateway_read.wait(), self.gateway_timeout + 1.0)
        source = build_engine_source(entry.ref, entry.spec, entry.pods, entry.secrets)
        expected = [p.name for p in entry.pods if p.ready]
        raw: Mapping[str, EngineSample | NoData] | EngineTotals | NoData
        if isinstance(source, NoData):
            raw = source
        else:
            try:
                # Sources bound themselves; this outer bound keeps a source bug from stalling the pool.
                raw = await asyncio.wait_for(source.read(self.http), source.timeout + 1.0)
            except TimeoutError:
                raw = NoData(f"{source.kind} read exceeded {source.timeout:g}s")
            except Exception as err:  # a source must never raise; if one does, it is no data
                log.exception("demand source %s failed for %s/%s", source.kind, pool.namespace, pool.name)
                raw = NoData(f"{source.kind} read failed: {type(err).__name__}: {err}")
        gateway = self._gateway_for(entry)
        now = self.clock()
        sample, reading = aggregate(
            raw, expected, gateway, entry.window.baseline(now), now, replay_usd=self._replay_usd(entry, now)
        )
        if reading is not None:
            entry.window.add(reading)
        if isinstance(gateway, GatewayCounters):
            # The spend is the gateway's, whatever the engines' read gave.
            entry.fallback_usd_total = gateway.fallback_usd_total
        entry.sample = sample
        entry.reads += 1
        return sample

    async def _every(self, stop: asyncio.Event, work: Callable[[], Awaitable[None]]) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            started = loop.time()
            try:
                await work()
            except Exception:  # keep scraping the gateway whatever one round hit
                log.exception("gateway scrape failed")
            delay = self.interval - (loop.time() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(delay, 0.0))

    async def _pool_loop(self, key: tuple[str, str], stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            entry = self._pools.get(key)
            if entry is None:
                return
            started = loop.time()
            try:
                await self.read_pool(entry.ref)
            except Exception:  # never let one pool's bug end its reads
                log.exception("demand read for %s/%s failed", *key)
            delay = self.interval - (loop.time() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(delay, 0.0))

    async def run(self, stop: asyncio.Event) -> None:
        """Read every pool (each in its own task) and the gateway until `stop` is set."""
        self._changed = asyncio.Event()
        tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        gateway = asyncio.create_task(self._every(stop, self.read_gateway)) if self.gateway_endpoints else None
        try:
            while not stop.is_set():
                for key in [k for k in tasks if k not in self._pools or tasks[k].done()]:
                    tasks.pop(key).cancel()
                for key in self._pools:
                    if key not in tasks:
                        tasks[key] = asyncio.create_task(self._pool_loop(key, stop), name=f"demand {key[0]}/{key[1]}")
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), self.interval)
        finally:
            everything = [*tasks.values(), *([gateway] if gateway else [])]
            for task in everything:
                task.cancel()
            await asyncio.gather(*everything, return_exceptions=True)
