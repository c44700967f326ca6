"""The gateway's view of its queue, for a simulated gateway that routes as the shipped one does.

The engine serves each request's true work (`ReplicaModel.work_seconds`), but the gateway in
`gateway/` cannot know it: it estimates a request's work when it sends it, from the prompt and the
pool's mean output (`Demand.work_tokens`, at `demand.replicaTokensPerSecond` or, when given, the
replica's prefill and decode speeds), drains that estimate at the Ready replicas' throughput as time
passes, normal lane first, caps it by the estimates of the requests still in flight, and keeps it at
least at the estimates of the requests still waiting for their first token, less the own prefill of
the one that has waited longest (`gateway.directory.PoolState`, `policies.overflow.waiting_floor`); the
normal lane's work ahead adds a margin for the spread of the outputs in flight (`output_margin`).
`GatewayEstimate` keeps the same books in the same order, so a simulated gateway routed on it sees what
the shipped one would see; `route_request` then decides as it does in the gateway.

Three differences, all small: the mean output is learned from each earlier GPU request as it is sent
(the gateway learns it from the usage an answer reports at its end); a request counts as in flight
until the engine has served its work (the gateway: until its last token); and it waits for its first
token until its lane has served its prefill (at more than one Ready replica the engine may give it a
little later, one prefill after its start).
"""

from __future__ import annotations

from collections import deque

from policies.overflow import INITIAL_COMPLETION_TOKENS, OUTPUT_EWMA_WEIGHT, output_margin, waiting_floor
from policies.spec import Demand

__all__ = ["GatewayEstimate"]


class _LaneBooks:
    """One lane's requests in flight and those of them still waiting for a first token, FIFO."""

    __slots__ = ("flight", "in_flight", "waiting", "waiting_work")

    def __init__(self) -> None:
        self.flight: deque[tuple[float, float]] = deque()
        """(the lane's served work once the request is done, its estimated work)"""
        self.in_flight = 0.0
        self.waiting: deque[tuple[float, float, float]] = deque()
        """(the lane's served work at its first token, its estimated work, its estimated prefill)"""
        self.waiting_work = 0.0

    def served_up_to(self, served: float) -> None:
        flight, waiting = self.flight, self.waiting
        while flight and flight[0][0] <= served:
            self.in_flight -= flight.popleft()[1]
        if not flight:
            self.in_flight = 0.0
        while waiting and waiting[0][0] <= served:
            self.waiting_work -= waiting.popleft()[1]
        if not waiting:
            self.waiting_work = 0.0

    def bounded(self, backlog: float) -> float:
        """The backlog within what is in flight and at least what waits (`waiting_floor`)."""
        head = self.waiting[0][2] if self.waiting else 0.0
        return max(min(backlog, self.in_flight), waiting_floor(self.waiting_work, head))


class GatewayEstimate:
    """Estimated work ahead in each lane, in replica-seconds, as the gateway books it."""

    def __init__(self, demand: Demand) -> None:
        self.demand = demand
        self.per_second = demand.replica_tokens_per_second
        self.mean_completion = INITIAL_COMPLETION_TOKENS
        self.var_completion = 0.0
        self.normal = 0.0
        self.late = 0.0
        self._at = 0.0
        self._lanes = (_LaneBooks(), _LaneBooks())

    def advance(self, t: float, ready: int, served_normal: float, served_late: float) -> None:
        """Drain the estimate from the last call to `t` at `ready` replicas, drop the requests the engine
        has served (their lane's served work passed their end) or given a first token, and bound each
        lane by the rest."""
        if ready > 0 and t > self._at:
            capacity = ready * (t - self._at)
            if capacity < self.normal:
                self.normal -= capacity
            else:
                self.late = max(self.late - (capacity - self.normal), 0.0)
                self.normal = 0.0
        self._at = max(t, self._at)
        normal, late = self._lanes
        normal.served_up_to(served_normal)
        late.served_up_to(served_late)
        self.normal = normal.bounded(self.normal)
        self.late = late.bounded(self.late)

    def send(
        self, late: bool, prompt_tokens: float, output_tokens: float, *, first_token_at: float, served_by: float
    ) -> None:
        """Book a GPU request in its lane; `first_token_at` and `served_by` are its lane's served work
        once the engine has done its prefill and its whole work. Its output is learned for the
        requests after it."""
        work = self.demand.work_tokens(prompt_tokens, self.mean_completion) / self.per_second
        books = self._lanes[1 if late else 0]
        if late:
            self.late += work
        else:
            self.normal += work
        books.flight.append((served_by, work))
        books.in_flight += work
        books.waiting.append((first_token_at, work, self.demand.prefill_seconds(prompt_tokens)))
        books.waiting_work += work
        deviation = output_tokens - self.mean_completion
        self.mean_completion += OUTPUT_EWMA_WEIGHT * deviation
        self.var_completion += OUTPUT_EWMA_WEIGHT * (deviation * deviation - self.var_completion)

    @property
    def normal_ahead(self) -> float:
        """The normal lane's work ahead as routing reads it: the books plus the outputs' margin."""
        margin = output_margin(len(self._lanes[0].flight), self.var_completion)
        return self.normal + (self.demand.work_tokens(0.0, margin) / self.per_second if margin else 0.0)
