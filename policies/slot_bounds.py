"""Every slot's savings bound `U` as the DP reads it: the partition bound, lowered by window LPs.

`policies/slot_savings.py` gives each slot's partition bound at every combination (n, j, n', j');
`policies/window_lp.py` a certificate that bounds a slot at every combination from one LP solved at
one of them. `SlotBounds` keeps both: the partition bound (held in memory when it fits, else
computed again on each pass) and, per slot, the certificates found so far, and
hands the DP their least, slot by slot. Every entry is an upper bound of the slot's savings, so every
pass's DP value is a lower bound of the optimum.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from policies.slot_savings import SlotSavings
from policies.window_lp import Certificate, SlotGeometry, certificate

if TYPE_CHECKING:
    from policies.optimum import OptimumProblem

__all__ = ["SlotBounds"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_KEEP_BYTES = 1 << 29
"""At most this much memory for the partition bounds held between passes (else they are recomputed):
a week at 15-second ticks with 8 replicas takes about 330 MB."""


class SlotBounds:
    """The slots' `U`, the partition bound lowered by every certificate found so far."""

    def __init__(self, p: OptimumProblem, bounds: FloatArray, savings: SlotSavings) -> None:
        self.p = p
        self.bounds = bounds
        self.savings = savings
        self.slots = savings.slots
        self.counts = np.arange(savings.top + 1, dtype=np.float64)
        self.next_counts = np.asarray(list(savings.next_counts), dtype=np.float64)
        self.certificates: dict[int, list[Certificate]] = {}
        self.solved: set[tuple[int, int, int, int, int]] = set()
        shape = (savings.top + 1, savings.in_share.size, len(savings.next_counts), savings.out_share.size)
        busy = np.flatnonzero(savings.busy)
        self._kept: FloatArray | None = None
        self._row = np.full(self.slots, -1, dtype=np.int64)
        if busy.size * math.prod(shape) * 8 <= _KEEP_BYTES:
            self._kept = np.zeros((busy.size, *shape))
            self._row[busy] = np.arange(busy.size)
            for c, end, U in savings.chunks():
                inside = busy[(busy >= c) & (busy < end)]
                self._kept[self._row[inside]] = U[inside - c]

    def __iter__(self) -> Iterator[tuple[int, FloatArray]]:
        """(slot, its U) for every slot in order."""
        if self._kept is None:
            for c, end, U in self.savings.chunks():
                for s in range(c, end):
                    yield s, self._lowered(s, U[s - c])
            return
        zero = np.zeros(self._kept.shape[1:])
        for s in range(self.slots):
            row = self._row[s]
            yield s, (zero if row < 0 else self._lowered(s, self._kept[row]))

    def _lowered(self, s: int, u: FloatArray) -> FloatArray:
        """The slot's U with every certificate applied where it has replicas Ready (with none, the
        partition bound stands: no LP is solved there, so the passes' end is the model's least)."""
        sv = self.savings
        certs = self.certificates.get(s, ())
        if not certs:
            return u
        u = u.copy()
        for cert in certs:
            u[1:] = np.minimum(u[1:], cert.bound(self.counts[1:], sv.in_share, self.next_counts, sv.out_share))
        return u

    def tighten(self, ready: IntArray, level: IntArray, saved: FloatArray) -> int:
        """Solve the window LP of every busy slot at the combination the plan (`ready`, `level` per
        slot and at the horizon, `saved` the bound it counted per slot) uses, where not solved before;
        how many certificates lower the plan's own bound.

        When none does, the plan stays the cheapest (its cost is unchanged and no other plan's fell), so
        another pass would find it again.
        """
        sv = self.savings
        lowering = 0
        for s in np.flatnonzero(sv.busy & (ready[:-1] > 0)):
            nxt = int(ready[s + 1]) if sv.exact_next else 0
            key = (int(s), int(ready[s]), int(level[s]), nxt, int(level[s + 1]))
            if key in self.solved:
                continue
            self.solved.add(key)
            cert = self._certificate(int(s), key)
            if cert is None:
                continue
            self.certificates.setdefault(int(s), []).append(cert)
            _, n, j, _, j2 = key
            here = cert.bound(
                self.counts[n : n + 1],
                sv.in_share[j : j + 1],
                self.next_counts[nxt : nxt + 1],
                sv.out_share[j2 : j2 + 1],
            )
            lowering += float(here.reshape(-1)[0]) < saved[s] - 1e-12 * max(abs(saved[s]), 1.0)
        return lowering

    def _certificate(self, s: int, key: tuple[int, int, int, int, int]) -> Certificate | None:
        p, sv = self.p, self.savings
        pick = np.arange(sv.first_request[s], sv.first_request[s + 1])
        pick = pick[(p.prefill_s[pick] <= p.objective_s) & (p.api_usd[pick] > 0)]
        geometry = SlotGeometry(
            length=float(sv.lengths[s]),
            shared_in=float(sv.shared_in[s]),
            shared_out=float(sv.shared_out[s]),
            next_length=float(sv.nxt[s]),
            top=sv.top,
        )
        _, n, j, nxt, j2 = key
        return certificate(
            geometry,
            p.arrival_s[pick] - self.bounds[s],
            p.work_s[pick],
            p.prefill_s[pick],
            p.api_usd[pick],
            objective=p.objective_s,
            lanes=max(p.lanes, 1),
            at=(float(n), float(sv.in_share[j]), float(self.next_counts[nxt]), float(sv.out_share[j2])),
        )
