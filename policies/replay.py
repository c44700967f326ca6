"""The last hour replayed through every replica count: what `k` replicas held throughout would have cost.

The gateway sees every request it routes; the controller (and the simulator) feed each one, in arrival
order, through a shadow of the pool for each count `k` from 0 to the pool's maximum: a fluid FIFO served
at `k` replica-seconds per second, the simulator's serving model. A request is on time with `k`
replicas when the work ahead of it, shared by the `k`, plus its own prefill comes within the objective;
then its work joins that shadow's queue. Otherwise `k` replicas would have left it to the fallback (or
late), and its fallback price is counted against `k` in the minute it arrived.

`costs` then prices each count over the window (an hour): `k` replicas' GPU time for the time the replay
covers, plus the fallback price of every request it would not have served on time. The count of least
cost is what a planner with hindsight would have held through that hour; `policies.scaling.decide`
keeps at least that many (`Reason.REPLAY`), except once the pool has been idle for its idle grace.
The shadows start empty, with no cold starts and no billing unit: they price a count held throughout,
as the simulator's hindsight ladder does.

The replay runs `lag_seconds` behind the clock: the gateway reports a request when it has finished
(its output is known then), and the requests of several gateway processes come together out of order.
A request reported after the replay has passed its arrival is replayed at the replay's clock.

Pure computation on numbers, no I/O: the daemon and the simulator drive the same class.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from policies.cost import ApiPrice
from policies.spec import Demand, GPUPoolSpec

Tokens = TypeVar("Tokens")

__all__ = [
    "REPLAY_LAG_SECONDS",
    "REPLAY_WINDOW_SECONDS",
    "Replay",
    "ReplayRequest",
    "cheapest_count",
    "replay_count",
    "replay_message",
    "request_terms",
]

REPLAY_WINDOW_SECONDS = 3600.0
"""The past each count is priced on: the last hour, as the policy's mean."""
REPLAY_BUCKET_SECONDS = 60.0
"""The window slides by whole minutes."""
REPLAY_LAG_SECONDS = 120.0
"""How far behind the clock the replay runs, so that finished requests have been reported."""


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """One request as the replay needs it (times in seconds on the replay's clock)."""

    arrived_at: float
    work_seconds: float
    """Replica-seconds of one replica's full throughput it takes (prompt over prefill, output over decode)."""
    prefill_seconds: float
    """Its own prefill: the part of its work before its first token."""
    fallback_usd: float
    """What the fallback charges for its tokens."""


def request_terms(demand: Demand, price: ApiPrice, prompt: Tokens, output: Tokens) -> tuple[Tokens, Tokens, Tokens]:
    """(work seconds, prefill seconds, fallback dollars) of requests with these token counts, by the
    pool's replica speeds and the fallback's prices: plain numbers or numpy arrays alike."""
    work = demand.work_tokens(prompt, output) / demand.replica_tokens_per_second  # type: ignore[arg-type]
    prefill = demand.prefill_seconds(prompt)  # type: ignore[arg-type]
    usd = (prompt * price.input_usd_per_million + output * price.output_usd_per_million) / 1e6  # type: ignore[operator]
    return work, prefill, usd  # type: ignore[return-value]


class Replay:
    """Shadow queues for 0..`max_replicas` replicas over a sliding window; see the module docstring."""

    def __init__(
        self,
        max_replicas: int,
        objective_seconds: float,
        *,
        window_seconds: float = REPLAY_WINDOW_SECONDS,
        bucket_seconds: float = REPLAY_BUCKET_SECONDS,
        lag_seconds: float = REPLAY_LAG_SECONDS,
    ) -> None:
        if max_replicas < 0:
            raise ValueError(f"max_replicas must be >= 0, got {max_replicas}")
        if not objective_seconds > 0:
            raise ValueError(f"the objective must be > 0 s, got {objective_seconds}")
        if not (bucket_seconds > 0 and window_seconds >= bucket_seconds and lag_seconds >= 0):
            raise ValueError("need 0 < bucket_seconds <= window_seconds and lag_seconds >= 0")
        self.max_replicas = max_replicas
        self.objective_seconds = objective_seconds
        self.window_seconds = window_seconds
        self.bucket_seconds = bucket_seconds
        self.lag_seconds = lag_seconds
        self.clock: float | None = None
        """The replay's time: every request up to here has been replayed."""
        self.started_at: float | None = None
        self.replayed = 0
        self._free = [-math.inf] * max_replicas
        """Per count k = 1..max_replicas: when its shadow's queue runs empty."""
        self._shares = [1.0 / k for k in range(1, max_replicas + 1)]
        # Per minute: (minute index, fallback dollars left unserved on time, per count).
        self._buckets: deque[tuple[int, list[float]]] = deque()
        # Their sum over the window, kept as buckets come and go.
        self._window = [0.0] * (max_replicas + 1)
        self._pending: list[ReplayRequest] = []

    def begin(self, at: float) -> None:
        """Start the replay at `at` (the moment the requests began to be seen); once only."""
        if self.clock is None:
            self.started_at = self.clock = at

    def add(self, requests: Sequence[ReplayRequest]) -> None:
        """Requests reported since the last call, in any order; replayed once the clock passes them."""
        self._pending.extend(requests)

    def advance(self, now: float) -> None:
        """Replay every request that arrived up to `now - lag_seconds`, and serve the shadows to there."""
        until = now - self.lag_seconds
        if self.clock is None:
            if not self._pending:
                return
            self.begin(min(min(r.arrived_at for r in self._pending), until))
        if self.clock is None or until <= self.clock:
            return
        start = self.started_at if self.started_at is not None else -math.inf
        # Requests from before the replay began cannot be placed: what came before them is unknown.
        pending = sorted((r for r in self._pending if r.arrived_at >= start), key=lambda r: r.arrived_at)
        cut = next((i for i, r in enumerate(pending) if r.arrived_at > until), len(pending))
        self._replay(pending[:cut])
        self._pending = pending[cut:]
        self.clock = until  # the shadows' queues are kept as moments: nothing to serve
        self._trim()

    def feed(
        self,
        arrived_at: Sequence[float],
        work_seconds: Sequence[float],
        prefill_seconds: Sequence[float],
        fallback_usd: Sequence[float],
    ) -> None:
        """Replay requests given as columns, already in arrival order, without the lag (the simulator)."""
        if self.clock is None and len(arrived_at):
            self.begin(float(arrived_at[0]))
        self._replay_columns(arrived_at, work_seconds, prefill_seconds, fallback_usd)
        self._trim()

    def serve_to(self, until: float) -> None:
        """Serve the shadows up to `until` with no arrivals (the simulator, between its feeds)."""
        if self.clock is not None and until > self.clock:
            self.clock = until
            self._trim()

    def _replay(self, requests: Sequence[ReplayRequest]) -> None:
        self._replay_columns(
            [r.arrived_at for r in requests],
            [r.work_seconds for r in requests],
            [r.prefill_seconds for r in requests],
            [r.fallback_usd for r in requests],
        )

    def _replay_columns(
        self,
        arrived_at: Sequence[float],
        work_seconds: Sequence[float],
        prefill_seconds: Sequence[float],
        fallback_usd: Sequence[float],
    ) -> None:
        if not len(arrived_at):
            return
        assert self.clock is not None
        clock = self.clock
        # Each shadow's queue as the moment it would run empty (`free`): the work ahead of a request
        # arriving at `at` is (free - at) * k, so the shadows need no draining between arrivals.
        free = self._free
        window = self._window
        shares = self._shares
        objective = self.objective_seconds
        bucket_s = self.bucket_seconds
        minute, unsaved = self._bucket(math.floor(clock / bucket_s))
        counts = range(self.max_replicas)
        for at, work, prefill, usd in zip(arrived_at, work_seconds, prefill_seconds, fallback_usd, strict=True):
            if at > clock:
                clock = at
                index = math.floor(clock / bucket_s)
                if index != minute:
                    minute, unsaved = self._bucket(index)
            else:
                at = clock
            # On time with k replicas when the wait, free - at, plus the prefill is within the objective.
            deadline = at + objective - prefill
            unsaved[0] += usd
            window[0] += usd
            if deadline < at:  # its own prefill takes longer than the objective: late with any count
                for i in counts:
                    unsaved[i + 1] += usd
                    window[i + 1] += usd
                continue
            for i in counts:
                f = free[i]
                if f <= deadline:
                    free[i] = (f if f > at else at) + work * shares[i]
                else:
                    unsaved[i + 1] += usd
                    window[i + 1] += usd
        self.clock = clock
        self.replayed += len(arrived_at)

    def _bucket(self, index: int) -> tuple[int, list[float]]:
        if self._buckets and self._buckets[-1][0] == index:
            return self._buckets[-1]
        entry = (index, [0.0] * (self.max_replicas + 1))
        self._buckets.append(entry)
        return entry

    def _trim(self) -> None:
        if self.clock is None:
            return
        oldest = math.floor((self.clock - self.window_seconds) / self.bucket_seconds)
        while self._buckets and self._buckets[0][0] <= oldest:
            _, gone = self._buckets.popleft()
            if self._buckets:
                self._window = [max(w - g, 0.0) for w, g in zip(self._window, gone, strict=True)]
            else:
                self._window = [0.0] * (self.max_replicas + 1)

    def costs(self, replica_usd_per_hour: float) -> tuple[float, ...] | None:
        """Per count `k` from 0: `k` replicas' price over the window plus the fallback price of what they
        would not have served on time. None before anything was replayed (no data is not zero load)."""
        if self.clock is None or self.started_at is None:
            return None
        covered = min(self.clock - self.started_at, self.window_seconds)
        unsaved = self._window
        return tuple(k * replica_usd_per_hour * covered / 3600.0 + usd for k, usd in enumerate(unsaved))


def cheapest_count(costs: Sequence[float]) -> int:
    """The count of least cost; on a tie the fewer replicas."""
    if not costs:
        raise ValueError("no counts to choose from")
    best = min(costs)
    return next(k for k, c in enumerate(costs) if c <= best)


def replay_count(spec: GPUPoolSpec, costs: Sequence[float] | None) -> int:
    """The count the policy keeps for the replay: its cheapest, within the pool (0 without a replay)."""
    if not costs or not spec.demand.replay:
        return 0
    return min(cheapest_count(costs), spec.target.max_replicas)


def replay_message(costs: Sequence[float], k: int) -> str:
    """The decision's words for it: the cheapest count's cost and its neighbours'."""
    around = ", ".join(f"{n}: ${costs[n]:.2f}" for n in (k - 1, k + 1) if 0 <= n < len(costs))
    return f"the last hour replayed: {k} replica(s) throughout would have cost least, ${costs[k]:.2f} ({around})"
