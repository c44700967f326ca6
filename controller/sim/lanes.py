"""The serving model's lanes: fluid FIFO queues with their served-work curves, and reading times off them.

A lane's served-work curve V(t) is piecewise linear, kept as breakpoints (time, served work) back to
the lowest position of a request not yet settled. `drain` serves the two lanes (the normal one
first, preemptively) and records where a curve changes slope; `invert` and `reached` read, for
work positions, when service of them began and when the curve first reached them.
"""

from __future__ import annotations

import heapq

import numpy as np
import numpy.typing as npt

__all__ = ["REL_EPS", "EndTimes", "Lane", "curve_time", "drain", "invert", "on_curve", "reached"]

FloatArray = npt.NDArray[np.float64]

# Served work must pass a position by more than this (relative) for the request to count as started,
# so float noise never starts a request while nothing serves it.
REL_EPS = 1e-12


class Lane:
    """One priority lane of GPU requests: a fluid FIFO with its served-work curve and unsettled requests."""

    __slots__ = ("backlog", "bt", "bv", "pending_idx", "pending_pos", "served")

    def __init__(self) -> None:
        self.backlog = 0.0
        self.served = 0.0
        # The served-work curve back to the lowest unsettled position: breakpoints (time, served work).
        self.bt: list[float] = [0.0]
        self.bv: list[float] = [0.0]
        # Requests whose prefill is not done yet: indices and work positions, in arrival (= FIFO) order.
        self.pending_idx: list[npt.NDArray[np.int64]] = []
        self.pending_pos: list[FloatArray] = []

    def mark(self, t: float) -> None:
        """A breakpoint at `t`: the curve's slope may change here."""
        self.bt.append(t)
        self.bv.append(self.served)

    def pending(self) -> int:
        """Requests queued in this lane whose first token has not been settled yet."""
        return sum(int(p.size) for p in self.pending_pos)


def drain(
    ready: int, t0: float, t1: float, b1: float, s1: float, b2: float, s2: float, one: Lane, two: Lane
) -> tuple[float, float, float, float]:
    """Serve from t0 to t1 at `ready` replica-seconds per second, the normal lane first (preemptive).

    Takes and returns the lanes' (backlog, served) as plain floats, for the per-request loop; appends
    the breakpoints where a lane's curve changes slope.
    """
    if ready <= 0 or (b1 <= 0.0 and b2 <= 0.0):
        return b1, s1, b2, s2
    t = t0
    if b1 > 0.0:
        cap = ready * (t1 - t0)
        if cap < b1:
            return b1 - cap, s1 + cap, b2, s2
        t = t0 + b1 / ready
        s1 += b1
        b1 = 0.0
        one.bt.append(t)
        one.bv.append(s1)
        if b2 <= 0.0:
            return b1, s1, b2, s2
        two.bt.append(t)  # the late lane starts moving when the normal lane empties
        two.bv.append(s2)
    cap = ready * (t1 - t)
    if cap < b2:
        return b1, s1, b2 - cap, s2 + cap
    s2 += b2
    two.bt.append(t + b2 / ready)
    two.bv.append(s2)
    return b1, s1, 0.0, s2


class EndTimes:
    """End times of requests in flight (running batch, or streaming from the fallback), counted at `now`.

    A min-heap: each reading pops what has ended and counts the rest, so a long request does not keep
    every later one's chunk alive and re-scanned. Readings' `now` never goes back (the engine's time
    runs forward), so an end time popped once can never count again.
    """

    __slots__ = ("_heap",)

    def __init__(self) -> None:
        self._heap: list[float] = []

    def add(self, ends: FloatArray | list[float]) -> None:
        """Requests that end at these times."""
        heap = self._heap
        for end in ends.tolist() if isinstance(ends, np.ndarray) else ends:
            heapq.heappush(heap, end)

    def count_after(self, now: float) -> int:
        """How many end after `now` (those that ended are dropped)."""
        heap = self._heap
        while heap and heap[0] <= now:
            heapq.heappop(heap)
        return len(heap)


def curve_time(bt: list[float], bv: list[float], target: float, j: int, flat: float) -> float:
    """`on_curve` for one target, in plain floats."""
    if j >= len(bv):
        return bt[-1]
    j = min(max(j, 1), len(bv) - 1)
    v0, v1 = bv[j - 1], bv[j]
    t0, t1 = bt[j - 1], bt[j]
    span = v1 - v0
    frac = (target - v0) / span if span > 0 else flat
    return t0 + min(max(frac, 0.0), 1.0) * (t1 - t0)


def invert(lane: Lane, positions: FloatArray) -> FloatArray:
    """When service of each position began: the last moment the lane's served-work curve was at or below it.

    Taking the last moment (not the first) matters where the curve is flat while work waits (no Ready
    replica, or the normal lane ahead): service begins where the curve starts to rise again.
    """
    values = np.asarray(lane.bv, dtype=np.float64)
    return on_curve(lane, positions, np.searchsorted(values, positions, side="right"), flat=0.0)


def reached(lane: Lane, targets: FloatArray) -> FloatArray:
    """The first moment the lane's served-work curve reached each target (its last point if never)."""
    values = np.asarray(lane.bv, dtype=np.float64)
    # A target the curve reached up to float noise counts as reached (as in settling: a request with no
    # output ends exactly where its prefill does).
    j = np.searchsorted(values, targets - REL_EPS * np.maximum(np.abs(targets), 1.0), side="left")
    return np.where(targets <= values[0], lane.bt[0], on_curve(lane, targets, j, flat=1.0))


def on_curve(lane: Lane, targets: FloatArray, j: npt.NDArray[np.intp], *, flat: float) -> FloatArray:
    """Interpolate the time of each target on the curve segment ending at breakpoint `j` (the last
    breakpoint's time beyond the curve); on a flat segment, `flat` picks its start (0) or end (1)."""
    times = np.asarray(lane.bt, dtype=np.float64)
    values = np.asarray(lane.bv, dtype=np.float64)
    beyond = j >= values.size
    j = np.clip(j, 1, values.size - 1)
    v0, v1 = values[j - 1], values[j]
    t0, t1 = times[j - 1], times[j]
    span = v1 - v0
    frac = np.divide(targets - v0, span, out=np.full_like(targets, flat), where=span > 0)
    return np.where(beyond, times[-1], t0 + np.clip(frac, 0.0, 1.0) * (t1 - t0))
