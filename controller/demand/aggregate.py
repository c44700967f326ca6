"""The one seam from raw readings to the policy's demand: engines' samples + gateway counters -> DemandSample.

`aggregate` is pure: the daemon's poller and the simulator both call it, so the real and the simulated
controller read demand the same way. Rates come from counter increases against an earlier `Reading`
(the rate window, see `ReadingWindow`); a counter that went down is a restarted process counting again
from zero, never negative demand. A partial read (one expected pod missing or unreadable, or the
gateway unreadable) is NoData: a smaller queue from fewer pods would look like falling demand.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from controller.ports import NoData
from controller.scrape.sample import EngineSample
from policies.types import DemandSample

__all__ = [
    "RATE_WINDOW_SECONDS",
    "EngineTotals",
    "GatewayCounters",
    "GatewaySeries",
    "Reading",
    "ReadingWindow",
    "aggregate",
    "counter_increase",
]

RATE_WINDOW_SECONDS = 60.0
"""Token rates are taken over about this long (the simulator's rate window, and `rate(...[1m])`)."""

_EMPTY: Mapping[str, tuple[float | None, float | None]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class GatewaySeries:
    """One gateway process's series for one pool (controller/demand/series.py), summed over labels.

    Counters are cumulative since that process started; a pool the process never served has zeros
    (prometheus_client shows a labelled series only after its first use: absent there means none yet).
    """

    prompt_tokens_total: float = 0.0
    """TOKENS{kind=prompt}, every route: the offered prompt tokens."""
    completion_tokens_total: float = 0.0
    """TOKENS{kind=completion}, every route."""
    saturation_tokens_total: float = 0.0
    """SATURATION_TOKENS, both kinds: tokens sent to the fallback while a replica was Ready."""
    beyond_prompt_tokens_total: float = 0.0
    """BEYOND_OBJECTIVE_TOKENS{kind=prompt}: prompt tokens of requests no replica serves on time, sent away."""
    beyond_completion_tokens_total: float = 0.0
    """BEYOND_OBJECTIVE_TOKENS{kind=completion}."""
    fallback_usd_total: float = 0.0
    """FALLBACK_USD over providers."""
    fallback_in_flight: float = 0.0
    """IN_FLIGHT{route=fallback}: requests being served by a provider now."""
    held: float = 0.0
    """HELD: requests waiting for a replica to become Ready."""


@dataclass(frozen=True, slots=True)
class GatewayCounters:
    """The gateway's view of one pool: one entry per gateway process (its endpoint), all read."""

    instances: Mapping[str, GatewaySeries]
    at: dt.datetime | None = None
    """When the gateway was scraped (its own round); None: at the time of the engines' read."""

    @property
    def fallback_usd_total(self) -> float:
        """FALLBACK_USD summed over the gateway processes (each since its own start)."""
        return sum(s.fallback_usd_total for s in self.instances.values())


@dataclass(frozen=True, slots=True)
class EngineTotals:
    """The engines already summed by someone else (a Prometheus server), with rates instead of counters."""

    waiting: float
    running: float
    kv_cache_usage: float | None
    prompt_tokens_per_second: float | None
    generation_tokens_per_second: float | None
    observed_at: dt.datetime
    """When the values were evaluated; the sample's age is judged by the policy from this."""
    pods: frozenset[str] | None = None
    """The pods the server had fresh series of (None: not asked); every Ready pod must be among them."""


@dataclass(frozen=True, slots=True)
class Reading:
    """What a later call needs to take rates: the counters of one complete read, and its time."""

    at: dt.datetime
    engines: Mapping[str, tuple[float | None, float | None]] = field(default_factory=lambda: _EMPTY)
    """Per pod: (prompt tokens total, generation tokens total); None where the engine exports none."""
    gateway: Mapping[str, GatewaySeries] | None = None
    """Per gateway process; None when the pool has no gateway counters."""
    gateway_at: dt.datetime | None = None
    """When those gateway counters were scraped."""


def counter_increase(current: float, before: float | None) -> float:
    """How much a counter grew: a drop is a restart that counted from zero since (as Prometheus' rate());
    a counter not seen before (a new process) counted from zero too."""
    if before is None or current < before:
        return current
    return current - before


def _sum_increase(current: Iterable[tuple[str, float | None]], before: Mapping[str, float | None]) -> float | None:
    """Summed increase of one counter over processes; None when any process does not export it."""
    total = 0.0
    for name, value in current:
        if value is None:
            return None
        total += counter_increase(value, before.get(name))
    return total


def _partial(engines: Mapping[str, EngineSample | NoData], expected: Collection[str]) -> NoData | None:
    """NoData naming the first unreadable expected pod, or None when every expected pod was read."""
    bad: list[tuple[str, str]] = []
    for name in sorted(expected):
        got = engines.get(name)
        if got is None:
            bad.append((name, "not read"))
        elif isinstance(got, NoData):
            bad.append((name, got.reason))
    if not bad:
        return None
    name, reason = bad[0]
    more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
    return NoData(f"{len(bad)} of {len(expected)} Ready pods unreadable (pod {name}: {reason}{more})")


def _unseen(seen: frozenset[str], expected: Collection[str]) -> NoData | None:
    """NoData naming the first Ready pod a Prometheus server has no fresh series of, or None."""
    missing = sorted(set(expected) - seen)
    if not missing:
        return None
    more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
    return NoData(
        f"{len(missing)} of {len(expected)} Ready pods have no fresh series in Prometheus (pod {missing[0]}{more})"
    )


def _engine_rates(
    samples: Mapping[str, EngineSample], previous: Reading, interval: float
) -> tuple[float | None, float | None]:
    before_prompt = {k: v[0] for k, v in previous.engines.items()}
    before_gen = {k: v[1] for k, v in previous.engines.items()}
    prompt = _sum_increase(((k, s.prompt_tokens_total) for k, s in samples.items()), before_prompt)
    gen = _sum_increase(((k, s.generation_tokens_total) for k, s in samples.items()), before_gen)
    return (
        None if prompt is None else prompt / interval,
        None if gen is None else gen / interval,
    )


def _gateway_rates(
    gateway: GatewayCounters, previous: Mapping[str, GatewaySeries], interval: float
) -> tuple[float, float, float]:
    """Offered prompt, offered completion and saturation token rates over the interval.

    The offered rates leave out the requests the gateway sent away because no replica could serve them
    on time (BEYOND_OBJECTIVE_TOKENS): they are no demand for the GPUs, and priced as if a replica could
    absorb them they started replicas that served nothing of them (measured: the Mooncake traces at the
    seed's volume, where 70% of the tokens are in such prompts).
    """
    prompt = completion = saturation = 0.0
    for name, now in gateway.instances.items():
        was = previous.get(name)
        prompt += max(
            counter_increase(now.prompt_tokens_total, was.prompt_tokens_total if was else None)
            - counter_increase(now.beyond_prompt_tokens_total, was.beyond_prompt_tokens_total if was else None),
            0.0,
        )
        completion += max(
            counter_increase(now.completion_tokens_total, was.completion_tokens_total if was else None)
            - counter_increase(now.beyond_completion_tokens_total, was.beyond_completion_tokens_total if was else None),
            0.0,
        )
        saturation += counter_increase(now.saturation_tokens_total, was.saturation_tokens_total if was else None)
    return prompt / interval, completion / interval, saturation / interval


def aggregate(
    engines: Mapping[str, EngineSample | NoData] | EngineTotals | NoData,
    expected: Collection[str],
    gateway: GatewayCounters | NoData | None,
    previous: Reading | None,
    now: dt.datetime,
    *,
    replay_usd: tuple[float, ...] | None = None,
) -> tuple[DemandSample | NoData, Reading | None]:
    """Turn one round of raw readings into the policy's DemandSample, or NoData saying why not.

    `engines` holds each scraped pod's sample (or the totals a Prometheus server computed); `expected`
    names the Ready pods that must all have been read; `gateway` is the pool's gateway counters, NoData
    when the gateway could not be read, None when the pool has none; `previous` is the reading the rates
    are taken against (None: no rates yet). Waiting counts the engines' queues plus the requests the
    gateway holds; `overflow_in_flight` is what the fallback serves now. Offered token rates come from
    the gateway (every route) when present, else from the engines' counters. `replay_usd`, the replay's
    price of each replica count over the last hour (`policies.replay`; None when there is none), passes
    into the sample as it is. Returns the sample and the Reading a later call takes rates against (None
    after a failed read: a partial read is no baseline).
    """
    if isinstance(engines, NoData):
        return engines, None
    if isinstance(gateway, NoData):
        return NoData(f"gateway counters unreadable: {gateway.reason}"), None

    interval = (now - previous.at).total_seconds() if previous is not None else 0.0
    rated = previous is not None and interval > 0.0
    gateway_at = None if gateway is None else gateway.at or now
    observed_at = now
    if isinstance(engines, EngineTotals):
        if engines.pods is not None:
            unseen = _unseen(engines.pods, expected)
            if unseen is not None:
                return unseen, None
        waiting, running, kv = engines.waiting, engines.running, engines.kv_cache_usage
        prompt_rate, gen_rate = engines.prompt_tokens_per_second, engines.generation_tokens_per_second
        observed_at = engines.observed_at
        engine_counters: Mapping[str, tuple[float | None, float | None]] = _EMPTY
    else:
        # The common case, every expected pod read, is checked without sorting the names.
        for name in expected:
            if not isinstance(engines.get(name), EngineSample):
                missing = _partial(engines, expected)
                if missing is not None:
                    return missing, None
                break
        samples = {name: s for name, s in engines.items() if name in expected and isinstance(s, EngineSample)}
        # Queue gauges are whole requests (ints): summed in one pass, exactly as sum() would.
        queued = in_batch = 0
        for s in samples.values():
            queued += s.waiting
            in_batch += s.running
        waiting, running = float(queued), float(in_batch)
        kvs = [s.kv_cache_usage for s in samples.values() if s.kv_cache_usage is not None]
        kv = sum(kvs) / len(kvs) if kvs else None
        prompt_rate = gen_rate = None
        # With gateway counters the offered rates come from the gateway below: these would be discarded.
        if rated and previous is not None and gateway is None:
            prompt_rate, gen_rate = _engine_rates(samples, previous, interval)
        engine_counters = MappingProxyType(
            {name: (s.prompt_tokens_total, s.generation_tokens_total) for name, s in samples.items()}
        )

    overflow_in_flight = 0.0
    overflow_rate: float | None = None
    gateway_series: Mapping[str, GatewaySeries] | None = None
    if gateway is not None:
        series = gateway.instances.values()
        waiting += sum([s.held for s in series])
        overflow_in_flight = float(sum([s.fallback_in_flight for s in series]))
        gateway_series = MappingProxyType(dict(gateway.instances))
        prompt_rate = gen_rate = None
        if previous is not None and gateway_at is not None:
            # The gateway is scraped in its own round: its rates run between its own scrape times. A
            # previous reading without gateway counters (the gateway just appeared) counts from zero.
            span = (gateway_at - (previous.gateway_at or previous.at)).total_seconds()
            if span > 0.0:
                prompt_rate, gen_rate, overflow_rate = _gateway_rates(gateway, previous.gateway or {}, span)

    if not (
        math.isfinite(waiting)
        and waiting >= 0
        and math.isfinite(running)
        and running >= 0
        and math.isfinite(overflow_in_flight)
        and overflow_in_flight >= 0
    ):
        return NoData(
            f"invalid queue values (waiting {waiting}, running {running}, fallback {overflow_in_flight})"
        ), None
    sample = DemandSample(
        observed_at=observed_at,
        waiting=waiting,
        running=running,
        overflow_in_flight=overflow_in_flight,
        kv_cache_usage=kv,
        input_tokens_per_second=prompt_rate,
        output_tokens_per_second=gen_rate,
        overflow_tokens_per_second=overflow_rate,
        replay_usd=replay_usd,
    )
    return sample, Reading(at=now, engines=engine_counters, gateway=gateway_series, gateway_at=gateway_at)


class ReadingWindow:
    """Recent complete readings of one pool; rates are taken against the one about `seconds` ago.

    In the first `seconds` of a pool's life the oldest reading serves, so rates cover what has been
    observed so far instead of waiting a whole window.
    """

    def __init__(self, seconds: float = RATE_WINDOW_SECONDS, *, resolution: float = 0.0) -> None:
        if not seconds > 0:
            raise ValueError(f"the rate window must be > 0 seconds, got {seconds}")
        if not 0 <= resolution < seconds:
            raise ValueError(f"the window's resolution must be in [0, {seconds:g}) seconds, got {resolution}")
        self.seconds = seconds
        self.resolution = resolution
        self._span = dt.timedelta(seconds=seconds)
        self._readings: deque[Reading] = deque()

    def baseline(self, now: dt.datetime) -> Reading | None:
        """The newest reading at least `seconds` before `now`, else the oldest one (None when empty)."""
        cutoff = now - self._span
        chosen: Reading | None = None
        for reading in self._readings:
            if reading.at <= cutoff:
                chosen = reading
            else:
                break
        if chosen is None and self._readings and self._readings[0].at < now:
            chosen = self._readings[0]
        return chosen

    def add(self, reading: Reading) -> None:
        """Keep a complete reading (at most one per `resolution` seconds); drop those no baseline needs.

        A coarser resolution keeps fewer readings per pool (memory) at the price of rate intervals up to
        `resolution` longer than the window; the rates are still exact over the interval they cover.
        """
        if self._readings and reading.at < self._readings[-1].at:
            self._readings.clear()  # the clock went back: start over rather than take negative intervals
        # At resolution 0 nothing is too close (the clock never went back by here): no need to subtract.
        last = self._readings[-1].at if self._readings else None
        if self.resolution and last is not None and (reading.at - last).total_seconds() < self.resolution:
            return
        self._readings.append(reading)
        cutoff = reading.at - self._span
        while len(self._readings) > 1 and self._readings[1].at <= cutoff:
            self._readings.popleft()
