"""The gateway's view of its queue, for a simulated gateway that routes as the shipped one does.

The engine serves each request's true work (`ReplicaModel.work_seconds`), but the gateway in
`gateway/` cannot know it: it estimates a request's work when it sends it, from the prompt and the
pool's mean output (`Demand.work_tokens`, at `demand.replicaTokensPerSecond` or, when given, the
replica's prefill and decode speeds), drains that estimate at the Ready replicas' throughput as time
passes, normal lane first, and caps it by the estimates of the requests still in flight
(`gateway.directory.PoolState`). `GatewayEstimate` keeps the same books in the same order, so a
simulated gateway routed on it sees what the shipped one would see; `route_request` then decides as
it does in the gateway.

Two differences, both small: the mean output is learned from each earlier GPU request as it is sent
(the gateway learns it from the usage an answer reports at its end), and a request counts as in flight
until the engine has served its work (the gateway: until its last token).
"""

from __future__ import annotations

from collections import deque

from policies.overflow import INITIAL_COMPLETION_TOKENS, OUTPUT_EWMA_WEIGHT
from policies.spec import Demand

__all__ = ["GatewayEstimate"]


class GatewayEstimate:
    """Estimated work ahead in each lane, in replica-seconds, as the gateway books it."""

    def __init__(self, demand: Demand) -> None:
        self.demand = demand
        self.per_second = demand.replica_tokens_per_second
        self.mean_completion = INITIAL_COMPLETION_TOKENS
        self.normal = 0.0
        self.late = 0.0
        self._at = 0.0
        self._flight: tuple[deque[tuple[float, float]], deque[tuple[float, float]]] = (deque(), deque())
        self._in_flight = [0.0, 0.0]

    def advance(self, t: float, ready: int, served_normal: float, served_late: float) -> None:
        """Drain the estimate from the last call to `t` at `ready` replicas and drop the requests the
        engine has served (their lane's served work passed their end), capping each lane by the rest."""
        if ready > 0 and t > self._at:
            capacity = ready * (t - self._at)
            if capacity < self.normal:
                self.normal -= capacity
            else:
                self.late = max(self.late - (capacity - self.normal), 0.0)
                self.normal = 0.0
        self._at = max(t, self._at)
        for lane, served in ((0, served_normal), (1, served_late)):
            flight = self._flight[lane]
            while flight and flight[0][0] <= served:
                self._in_flight[lane] -= flight.popleft()[1]
            if not flight:
                self._in_flight[lane] = 0.0
        self.normal = min(self.normal, self._in_flight[0])
        self.late = min(self.late, self._in_flight[1])

    def send(self, late: bool, prompt_tokens: float, output_tokens: float, served_by: float) -> None:
        """Book a GPU request in its lane; `served_by` is its lane's served work once the engine has
        done it. Its output is learned for the requests after it."""
        work = self.demand.work_tokens(prompt_tokens, self.mean_completion) / self.per_second
        lane = 1 if late else 0
        if late:
            self.late += work
        else:
            self.normal += work
        self._flight[lane].append((served_by, work))
        self._in_flight[lane] += work
        self.mean_completion += OUTPUT_EWMA_WEIGHT * (output_tokens - self.mean_completion)
