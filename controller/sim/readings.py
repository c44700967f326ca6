"""What the pool engine reads out: settled first tokens, and demand readings like the gateway's.

`DemandReading` is what the engines and the gateway would report at one moment; `EngineReadings` holds
the `PoolEngine` methods (`controller.sim.engine`) that produce it: settling start times, TTFTs and
finish times from each lane's served-work curve (`controller.sim.lanes`), and reading the waiting,
running and overflow counts and the offered token rates from the engine's running sums.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from controller.sim.lanes import REL_EPS, EndTimes, Lane, curve_time, invert, reached
from controller.sim.models import FloatArray, ReplicaModel, RouteCode
from controller.sim.workload import Workload

__all__ = ["DemandReading", "EngineReadings"]

_SCALAR_SETTLE = 12
"""Up to this many unsettled requests in a lane, settling runs in plain floats."""


@dataclass(frozen=True, slots=True)
class DemandReading:
    """What the engines and the gateway would report at one moment."""

    waiting: float
    running: float
    overflow_in_flight: float
    input_tokens_per_second: float
    output_tokens_per_second: float
    overflow_tokens_per_second: float = 0.0


class EngineReadings:
    """`PoolEngine`'s readings and settling (a mixin: the engine's state is set by `PoolEngine.__init__`)."""

    workload: Workload
    replica: ReplicaModel
    rate_window_seconds: float
    prefill: FloatArray
    saturated: npt.NDArray[np.bool_]
    ttft: FloatArray
    _t: float
    _ready: int
    _next: int
    _lanes: tuple[Lane, Lane]
    _running: EndTimes
    _overflowing: EndTimes
    _cum_in: npt.NDArray[np.int64]
    _cum_out: npt.NDArray[np.int64]
    _sat_in: npt.NDArray[np.int64]
    _sat_out: npt.NDArray[np.int64]
    _sat_upto: int
    beyond: npt.NDArray[np.bool_]
    route: npt.NDArray[np.int8]
    _beyond_in: npt.NDArray[np.int64]
    _beyond_out: npt.NDArray[np.int64]

    def sample(self) -> DemandReading:
        """Settle start times up to now and read waiting, running, overflow and offered token rates."""
        now = self._t
        self._settle_started(now)
        one, two = self._lanes
        pending = (one.pending() if one.pending_pos else 0) + (two.pending() if two.pending_pos else 0)
        running = self._running.count_after(now)
        overflow = self._overflowing.count_after(now)
        batch_limit = self._ready * self.replica.max_num_seqs
        excess = max(running - batch_limit, 0)
        lo = int(self.workload.arrival_s.searchsorted(now - self.rate_window_seconds, side="left"))
        hi = self._next
        self._count_saturated(hi)
        # Over what has been observed: in the first minute the window is as long as the run so far.
        window = min(self.rate_window_seconds, max(now, 1.0))
        overflow_tokens = float(self._sat_in[hi] - self._sat_in[lo]) + float(self._sat_out[hi] - self._sat_out[lo])
        # Offered to the GPUs: every request but those sent away as late on any number of replicas.
        offered_in = float(self._cum_in[hi] - self._cum_in[lo]) - float(self._beyond_in[hi] - self._beyond_in[lo])
        offered_out = float(self._cum_out[hi] - self._cum_out[lo]) - float(self._beyond_out[hi] - self._beyond_out[lo])
        return DemandReading(
            waiting=float(pending + excess),
            running=float(running - excess),
            overflow_in_flight=float(overflow),
            input_tokens_per_second=offered_in / window,
            output_tokens_per_second=offered_out / window,
            overflow_tokens_per_second=overflow_tokens / window,
        )

    def routed_tokens(self) -> tuple[int, int, int, int, int]:
        """Prompt, completion and saturated-overflow tokens of every request routed so far, and the prompt
        and completion tokens of those sent away as beyond the objective.

        What a gateway's cumulative counters hold: every request that has arrived before `now` (the
        engine routes each one on arrival), read from the running sums (integers: exact).
        """
        hi = self._next
        self._count_saturated(hi)
        return (
            int(self._cum_in[hi]),
            int(self._cum_out[hi]),
            int(self._sat_in[hi]) + int(self._sat_out[hi]),
            int(self._beyond_in[hi]),
            int(self._beyond_out[hi]),
        )

    def _count_saturated(self, hi: int) -> None:
        """Extend the running sums of saturated overflow tokens, and of the tokens sent away as beyond the
        objective, to the first `hi` requests."""
        lo = self._sat_upto
        if hi <= lo:
            return
        beyond = self.beyond[lo:hi] & (self.route[lo:hi] == RouteCode.FALLBACK)
        self._extend(self._beyond_in, self._beyond_out, beyond, lo, hi)
        self._extend(self._sat_in, self._sat_out, self.saturated[lo:hi], lo, hi)
        self._sat_upto = hi

    def _extend(
        self,
        sums_in: npt.NDArray[np.int64],
        sums_out: npt.NDArray[np.int64],
        mask: npt.NDArray[np.bool_],
        lo: int,
        hi: int,
    ) -> None:
        """Extend one pair of running token sums over requests `lo..hi - 1`, counting those in `mask`."""
        if mask.any():
            sums_in[lo + 1 : hi + 1] = sums_in[lo] + np.cumsum(self.workload.input_tokens[lo:hi] * mask)
            sums_out[lo + 1 : hi + 1] = sums_out[lo] + np.cumsum(self.workload.output_tokens[lo:hi] * mask)
        else:
            sums_in[lo + 1 : hi + 1] = sums_in[lo]
            sums_out[lo + 1 : hi + 1] = sums_out[lo]

    def _settle_started(self, now: float) -> None:
        """Give every GPU request whose prefill is done by `now` its start, TTFT and finish time.

        A request's first token comes one prefill after its start, or when its lane has served its
        prefill's work, whichever is later: a late request preempted (or a request left without a Ready
        replica) in the middle of its prefill gets its first token only after the pause.
        """
        for lane in self._lanes:
            if not lane.pending_pos:
                # Nothing unsettled: the curve restarts here (what marking and trimming would leave).
                lane.bt = [now]
                lane.bv = [lane.served]
                continue
            lane.mark(now)
            if len(lane.pending_pos) == 1 and lane.pending_pos[0].size <= _SCALAR_SETTLE:
                self._settle_few(lane)
            elif lane.pending_pos:
                positions = np.concatenate(lane.pending_pos)
                indices = np.concatenate(lane.pending_idx)
                prefill = self.prefill[indices]
                prefilled = positions + prefill  # still sorted: a request's prefill is part of its work
                if lane.backlog <= 0.0:
                    k = int(positions.size)
                else:
                    k = int(np.searchsorted(prefilled, lane.served - REL_EPS * max(lane.served, 1.0), side="left"))
                if k:
                    done = indices[:k]
                    arrival = self.workload.arrival_s[done]
                    start = np.maximum(invert(lane, positions[:k]), arrival)
                    first_token = np.maximum(start + prefill[:k], reached(lane, prefilled[:k]))
                    self.ttft[done] = first_token - arrival
                    finish = first_token + self.workload.output_tokens[done] / self.replica.sequence_tokens_per_second
                    self._running.add(finish)
                lane.pending_pos = [positions[k:]] if k < positions.size else []
                lane.pending_idx = [indices[k:]] if k < indices.size else []
            # Requests not settled yet need the curve from the last moment it was at or below the lowest
            # of their positions; everything before can go.
            if lane.pending_pos:
                keep = max(bisect.bisect_right(lane.bv, float(lane.pending_pos[0][0])) - 1, 0)  # bv never falls
                del lane.bt[:keep], lane.bv[:keep]
            else:
                lane.bt = [now]
                lane.bv = [lane.served]

    def _settle_few(self, lane: Lane) -> None:
        """`_settle_started` for one lane with a few unsettled requests, in plain floats.

        The same arithmetic, step for step, as the vectorised path (so results are identical); numpy's
        per-call overhead dominates below a dozen requests.
        """
        positions: list[float] = lane.pending_pos[0].tolist()
        indices: list[int] = lane.pending_idx[0].tolist()
        prefill = [float(self.prefill[i]) for i in indices]
        prefilled = [pos + pre for pos, pre in zip(positions, prefill, strict=True)]
        bt, bv = lane.bt, lane.bv
        if lane.backlog <= 0.0:
            k = len(positions)
        else:
            k = bisect.bisect_left(prefilled, lane.served - REL_EPS * max(lane.served, 1.0))
        if k:
            arrival = self.workload.arrival_s
            outputs = self.workload.output_tokens
            seq_tps = self.replica.sequence_tokens_per_second
            finish = []
            for m in range(k):
                i = indices[m]
                arrived = float(arrival[i])
                start = max(curve_time(bt, bv, positions[m], bisect.bisect_right(bv, positions[m]), 0.0), arrived)
                target = prefilled[m]
                if target <= bv[0]:
                    reached = bt[0]
                else:
                    j = bisect.bisect_left(bv, target - REL_EPS * max(abs(target), 1.0))
                    reached = curve_time(bt, bv, target, j, 1.0)
                first_token = max(start + prefill[m], reached)
                self.ttft[i] = first_token - arrived
                finish.append(first_token + int(outputs[i]) / seq_tps)
            self._running.add(finish)
        if k < len(positions):
            lane.pending_pos = [lane.pending_pos[0][k:]]
            lane.pending_idx = [lane.pending_idx[0][k:]]
        else:
            lane.pending_pos, lane.pending_idx = [], []
