"""The serving model: how a pool of vLLM replicas and a fallback API turn arrivals into first tokens.

Capacity. Each request costs a Ready replica `work = prompt / prefill_tps + output / decode_tps`
seconds of its full throughput (continuous batching shares a replica between many sequences; the
shares add up to this much busy time). The pool is a fluid server working at `ready` such seconds per
second with two FIFO lanes, the late lane served only while the normal lane is empty (preemptively, as
vLLM's priority scheduling preempts a lower-priority sequence). A request's queue wait is the time until
all work ahead of it in its lane, and for the late lane all normal work too, has been done; its time to
first token is that wait plus its own prefill (`prompt / prefill_tps`), or later if it is paused during
its prefill (preempted, or no Ready replica) until the lane has served the prefill's work. The running
batch (`num_requests_running`) holds a request from its first token until its last
(`output / sequence_tps` later), at most `max_num_seqs` per replica; the rest count as waiting. This is
exact in throughput and, at moderate load, a little pessimistic on waits (a real
scheduler interleaves a new prefill with running decodes instead of finishing them first). The lanes are
optimistic for on-time requests: vLLM 0.32's priority policy orders its waiting queue by priority (FCFS
among equals) but preempts a running sequence only when KV-cache blocks run out, so late requests
already in the batch keep their share of the replica, where here the normal lane takes all of it.

Routing follows `policies.overflow.route_request`: a request whose expected wait (work ahead over the
pool's ready throughput) exceeds `fallback.max_queue_wait_seconds`, or that finds no Ready replica, goes
to the fallback when it is open; otherwise it queues (or is rejected, if the pool says so). With the
pool's objective (`objective.deferLateRequests`), a request whose wait in the normal lane would make it
miss `objective.ttftSeconds` (its own prefill counted) queues in the late lane instead, and with
`fallback.takeLateRequests` it goes to the open fallback (not counted as saturation). Only Ebbtide's
gateway has lanes; the baselines model plain vLLM, one FIFO.

The loop over requests is plain Python over one control tick's arrivals at a time; everything else is
vectorised. Start times are recovered exactly, even when the number of Ready replicas changes while a
request waits, by recording each lane's served-work curve V(t) (piecewise linear) and inverting it
(the lanes and their curves live in `controller.sim.lanes`; the replica and fallback models in
`controller.sim.models`; the settling of first tokens and the demand readings in `controller.sim.readings`).
"""

from __future__ import annotations

import math

import numpy as np

from controller.sim.estimates import GatewayEstimate
from controller.sim.lanes import EndTimes, Lane, drain
from controller.sim.models import (
    DEFAULT_DECODE_TPS,
    DEFAULT_FALLBACK_TTFT,
    DEFAULT_MAX_NUM_SEQS,
    DEFAULT_PREFILL_TPS,
    DEFAULT_SEQUENCE_TPS,
    FallbackModel,
    ReplicaModel,
    RouteCode,
)
from controller.sim.readings import DemandReading, EngineReadings
from controller.sim.workload import Workload
from policies.cost import ApiPrice, api_cost_usd
from policies.overflow import Route, Routing, is_saturation, route_request

__all__ = [
    "DEFAULT_DECODE_TPS",
    "DEFAULT_FALLBACK_TTFT",
    "DEFAULT_MAX_NUM_SEQS",
    "DEFAULT_PREFILL_TPS",
    "DEFAULT_SEQUENCE_TPS",
    "DemandReading",
    "FallbackModel",
    "PoolEngine",
    "ReplicaModel",
    "RouteCode",
]

# Times are offsets (s) from the simulation start; the workload's arrivals are never negative.
_MIN_WORK = 1e-6


_ROUTE_CODES = {Route.GPU: RouteCode.GPU, Route.FALLBACK: RouteCode.FALLBACK, Route.REJECT: RouteCode.REJECT}


class PoolEngine(EngineReadings):
    """Serves one workload under a changing number of Ready replicas; see the module docstring."""

    def __init__(
        self,
        workload: Workload,
        replica: ReplicaModel,
        fallback: FallbackModel,
        *,
        routing: Routing,
        max_wait_seconds: float,
        price: ApiPrice,
        rate_window_seconds: float = 60.0,
        objective_ttft_seconds: float | None = None,
        late_lane: bool = True,
        late_to_fallback: bool = False,
        replay: bool = False,
        has_fallback: bool = True,
        estimate: GatewayEstimate | None = None,
    ) -> None:
        self.workload = workload
        self.replica = replica
        self.fallback = fallback
        self.routing = routing
        self.max_wait_seconds = max_wait_seconds
        self.price = price
        self.rate_window_seconds = rate_window_seconds
        # With an objective, requests that would miss it go to the late lane (`late_lane`), or to the open
        # fallback (`late_to_fallback`): Ebbtide's gateway only.
        self.objective_ttft_seconds = objective_ttft_seconds if routing is Routing.OVERFLOW else None
        self.late_lane = late_lane
        self.late_to_fallback = late_to_fallback
        self.replay = replay  # whether the controller replays the requests (`is_saturation`)
        # Routed on the gateway's own estimates of the work ahead instead of the true work (`estimates`).
        self.estimate = estimate if routing is Routing.OVERFLOW else None
        n = len(workload)
        # Every request takes a moment of a replica, also one with no tokens at all (it still needs a step).
        self.work = np.maximum(replica.work_seconds(workload.input_tokens, workload.output_tokens), _MIN_WORK)
        self.prefill = workload.input_tokens / replica.prefill_tokens_per_second
        self.route = np.zeros(n, dtype=np.int8)
        self.late = np.zeros(n, dtype=np.bool_)
        # Sent to the fallback although a replica was Ready: the overflow that says the GPUs are short.
        self.saturated = np.zeros(n, dtype=np.bool_)
        self.ttft = np.full(n, np.inf, dtype=np.float64)
        self.has_fallback = has_fallback and routing is not Routing.QUEUE
        self.fallback_open = self.has_fallback
        self.reject_when_closed = False
        self.fallback_usd_day = 0.0
        self._next = 0
        self._t = 0.0
        self._ready = 0
        self._lanes = (Lane(), Lane())
        self._running = EndTimes()
        self._overflowing = EndTimes()
        # Running token counts, so a reading sums its rate window in O(1) (integers: exact).
        zero = np.zeros(1, dtype=np.int64)
        self._cum_in = np.concatenate((zero, np.cumsum(workload.input_tokens, dtype=np.int64)))
        self._cum_out = np.concatenate((zero, np.cumsum(workload.output_tokens, dtype=np.int64)))
        # The same for saturated overflow, extended as requests are routed (their flags never change).
        self._sat_in = np.zeros(n + 1, dtype=np.int64)
        self._sat_out = np.zeros(n + 1, dtype=np.int64)
        self._sat_upto = 0
        # Prompts whose own prefill, as the gateway sees it, is longer than the objective: sent to the open
        # fallback they are late on any number of replicas, and the gateway counts their tokens apart
        # (`ebbtide_gateway_beyond_objective_tokens_total`), as no demand for the GPUs.
        self.beyond = np.zeros(n, dtype=np.bool_)
        if self.objective_ttft_seconds is not None and late_to_fallback and self.has_fallback:
            # The prefill the routing below weighs: the gateway's estimate, or the true one with `--true-work`.
            seen = self.prefill
            if self.estimate is not None:
                seen = self.estimate.demand.prefill_seconds(workload.input_tokens)  # type: ignore[arg-type,assignment]
            self.beyond = np.asarray(seen > self.objective_ttft_seconds, dtype=np.bool_)
        self._beyond_in = np.zeros(n + 1, dtype=np.int64)
        self._beyond_out = np.zeros(n + 1, dtype=np.int64)

    @property
    def now(self) -> float:
        """Time (s from start) up to which arrivals have been served."""
        return self._t

    @property
    def ready(self) -> int:
        """Ready replicas serving right now."""
        return self._ready

    @property
    def backlog(self) -> float:
        """Replica-seconds of work queued on the GPUs, both lanes."""
        return self._lanes[0].backlog + self._lanes[1].backlog

    def set_ready(self, ready: int) -> None:
        """Change the number of Ready replicas at the current time."""
        if ready != self._ready:
            for lane in self._lanes:
                lane.mark(self._t)
            self._ready = ready

    def run_until(self, t_end: float) -> None:
        """Route and enqueue every arrival before `t_end`, and serve up to `t_end`."""
        if t_end < self._t:
            raise ValueError(f"time runs forward only ({t_end} < {self._t})")
        arrival = self.workload.arrival_s
        lo = self._next
        hi = int(arrival.searchsorted(t_end, side="left"))
        if hi > lo:
            self._serve_arrivals(lo, hi)
            self._next = hi
        self._drain_to(t_end)

    def _drain_to(self, t: float) -> None:
        one, two = self._lanes
        one.backlog, one.served, two.backlog, two.served = drain(
            self._ready, self._t, t, one.backlog, one.served, two.backlog, two.served, one, two
        )
        self._t = t

    def _serve_arrivals(self, lo: int, hi: int) -> None:
        """The per-request loop: drain, route, enqueue (plain Python over one tick's arrivals)."""
        times = self.workload.arrival_s[lo:hi].tolist()
        works = self.work[lo:hi].tolist()
        objective = self.objective_ttft_seconds
        est = self.estimate
        # Read only to decide a request's lane and to book its first token; else the loop never looks.
        prefills: list[float] = self.prefill[lo:hi].tolist() if objective is not None or est is not None else []
        codes = [RouteCode.GPU] * len(times)
        one, two = self._lanes
        positions: tuple[list[float], list[float]] = ([], [])
        gpu_idx: tuple[list[int], list[int]] = ([], [])
        late_idx: list[int] = []
        saturated_idx: list[int] = []
        ready, t_last = self._ready, self._t
        b1, s1, b2, s2 = one.backlog, one.served, two.backlog, two.served
        routing = self.routing
        late_lane, late_to_fallback, replay = self.late_lane, self.late_to_fallback, self.replay
        limit = self.max_wait_seconds
        open_ = self.fallback_open
        capped = self._cap_tracking()
        usd_in = self.price.input_usd_per_million / 1e6
        usd_out = self.price.output_usd_per_million / 1e6
        inputs = self.workload.input_tokens
        outputs = self.workload.output_tokens
        # Read only by the gateway's books: the prompts and outputs as plain numbers.
        tokens_in = inputs[lo:hi].tolist() if est is not None else []
        tokens_out = outputs[lo:hi].tolist() if est is not None else []
        for k, t in enumerate(times):
            if ready > 0 and (b1 > 0.0 or b2 > 0.0):
                b1, s1, b2, s2 = drain(ready, t_last, t, b1, s1, b2, s2, one, two)
            t_last = t
            lane = 0
            saturated = True
            w1, w2 = b1, b2  # the work ahead the routing sees: the true work, or the gateway's estimate
            prefill = prefills[k] if objective is not None else 0.0
            if est is not None:
                est.advance(t, ready, s1, s2)
                w1, w2 = est.normal_ahead, est.late
                prefill = est.demand.prefill_seconds(tokens_in[k])
            if routing is Routing.FALLBACK:
                code = RouteCode.FALLBACK
            elif routing is Routing.QUEUE:
                code = RouteCode.GPU
            elif ready > 0 and w1 <= limit * ready and (objective is None or w1 <= (objective - prefill) * ready):
                # route_request puts a request within both limits in the normal lane whatever else holds.
                code = RouteCode.GPU
            else:
                # Expressed in work: replica-seconds ahead at one replica-second per second each.
                budget = None if objective is None else objective - prefill
                decision = route_request(
                    waiting=w1,
                    ready_replicas=ready,
                    replica_requests_per_second=1.0,
                    max_wait_seconds=limit,
                    fallback_open=open_,
                    reject_when_closed=self.reject_when_closed,
                    late_waiting=w2,
                    on_time_wait_seconds=budget,
                    late_lane=late_lane,
                    late_to_fallback=late_to_fallback,
                )
                code = _ROUTE_CODES[decision.route]
                lane = int(decision.lane)
                saturated = is_saturation(decision, on_time_wait_seconds=budget, replay=replay)
            if code == RouteCode.GPU:
                if lane == 0:
                    if b1 <= 0.0:
                        one.bt.append(t)
                        one.bv.append(s1)
                        if b2 > 0.0 and ready > 0:
                            two.bt.append(t)  # the late lane pauses
                            two.bv.append(s2)
                    position = s1 + b1
                    b1 += works[k]
                else:
                    if b2 <= 0.0 and b1 <= 0.0:
                        two.bt.append(t)
                        two.bv.append(s2)
                    position = s2 + b2
                    b2 += works[k]
                    late_idx.append(lo + k)
                positions[lane].append(position)
                gpu_idx[lane].append(lo + k)
                if est is not None:
                    est.send(
                        lane == 1,
                        tokens_in[k],
                        tokens_out[k],
                        first_token_at=position + prefills[k],
                        served_by=position + works[k],
                    )
            else:
                codes[k] = code
                if code == RouteCode.FALLBACK and ready > 0 and saturated:
                    saturated_idx.append(lo + k)
                if code == RouteCode.FALLBACK and capped:
                    i = lo + k
                    self.fallback_usd_day += float(inputs[i]) * usd_in + float(outputs[i]) * usd_out
                    if self.fallback_usd_day >= self._fallback_cap:
                        open_ = False
        self.fallback_open = open_ if routing is Routing.OVERFLOW else self.fallback_open
        one.backlog, one.served, two.backlog, two.served = b1, s1, b2, s2
        self._t = t_last
        self.route[lo:hi] = codes
        if late_idx:
            self.late[late_idx] = True
        if saturated_idx:
            self.saturated[saturated_idx] = True
        for lane_, idx, pos in zip(self._lanes, gpu_idx, positions, strict=True):
            if idx:
                lane_.pending_idx.append(np.asarray(idx, dtype=np.int64))
                lane_.pending_pos.append(np.asarray(pos, dtype=np.float64))
        fb = np.flatnonzero(self.route[lo:hi] == RouteCode.FALLBACK) + lo
        if fb.size:
            self.ttft[fb] = self.fallback.ttft_seconds
            ends = (
                self.workload.arrival_s[fb]
                + self.fallback.ttft_seconds
                + self.workload.output_tokens[fb] / self.fallback.tokens_per_second
            )
            self._overflowing.add(ends)

    _fallback_cap: float = math.inf

    def set_fallback_cap(self, usd_per_day: float | None, reject: bool) -> None:
        """Close the fallback once a day's spend reaches `usd_per_day` (then queue, or reject).

        Only a cap that closes an existing fallback rejects: without a fallback every request queues.
        """
        self._fallback_cap = math.inf if usd_per_day is None else usd_per_day
        self.reject_when_closed = reject and self.has_fallback and usd_per_day is not None

    def new_day(self) -> None:
        """Reset the day's fallback spend (the runner calls this at local midnight)."""
        self.fallback_usd_day = 0.0
        if self.routing is Routing.OVERFLOW and self.has_fallback and self._fallback_cap < math.inf:
            self.fallback_open = True

    def _cap_tracking(self) -> bool:
        return self.routing is Routing.OVERFLOW and self._fallback_cap < math.inf

    def finish(self, horizon: float) -> None:
        """Serve up to the horizon, then let the last Ready replicas finish the queue (unbilled tail)."""
        self.run_until(max(horizon, self._t))
        if self.backlog > 0.0 and self._ready > 0:
            self._drain_to(self._t + self.backlog / self._ready + 1e-6)
        self._settle_started(self._t)

    def fallback_tokens(self) -> tuple[int, int]:
        """Prompt and generated tokens sent to the fallback."""
        mask = self.route == RouteCode.FALLBACK
        return int(self.workload.input_tokens[mask].sum()), int(self.workload.output_tokens[mask].sum())

    def fallback_cost_usd(self) -> float:
        """What the fallback billed for everything sent to it."""
        tokens_in, tokens_out = self.fallback_tokens()
        return api_cost_usd(tokens_in, tokens_out, self.price)
