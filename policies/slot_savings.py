"""What each slot's requests can save at most: the savings bound `U` of `offline_optimum`.

`policies/optimum.py` states the model and the proof; this module computes, slot by slot, the bound
`U_s(n, j, n', j')` on the API dollars that the on-time GPU requests arriving in slot `s` can save when
`n` replicas are Ready in it and `n'` in the next one, `j` is the level of the capacity at the start of
slot `s` that the previous slot's on-time work takes (the slot loses at least `in_share[j]` of it), and
`j'` the level of the next slot's capacity that this slot's on-time work takes (at most
`out_share[j']` of it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from policies.optimum import OptimumProblem

__all__ = ["SlotSavings", "shares"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_DENSITY_BINS = 4
"""Price-per-work bins of the knapsack bound; the API's prices make densities vary within ~25 %."""
BIN_SEGMENTS = 2
"""2: each bin's savings follow the two-segment envelope of its densest and sparsest request (its
work counted in full); 1: its work counted at its densest request only, a looser bound (the tests'
reference)."""
_MAX_ATOMS = 8
_FINE_ATOMS = 32
FINE_ATOM_SHARE = 0.25
"""Slots with load enough to matter are cut again into atoms of this share of the objective (at most
`_FINE_ATOMS`): more partitions, a tighter `U`; light slots keep atoms of one objective."""
_CHUNK = 2048
"""Slots whose U is held at once."""
_BATCH = 512
"""Slots evaluated at once (bounds the memory of the vectorised knapsack)."""


def shares(levels: int) -> tuple[FloatArray, FloatArray]:
    """Per level `j` of the capacity shared across a slot boundary: the share the earlier slot may use
    at most, and the share the later slot loses at least.

    The true share `y` lies in `((j - 1) / levels, j / levels]` (level 0: `y = 0`), so the earlier slot
    is allowed `j / levels` and the later one loses `(j - 1) / levels`: each boundary counts at most one
    level's width twice. `levels = 0` counts the whole shared capacity for both slots (one state).
    """
    if levels <= 0:
        return np.ones(1), np.zeros(1)
    j = np.arange(levels + 1, dtype=np.float64)
    return j / levels, np.maximum(j - 1, 0) / levels


def _sums(index: IntArray, weights: FloatArray, size: int) -> FloatArray:
    return np.asarray(np.bincount(index, weights=weights, minlength=size), dtype=np.float64)


def _greedy(before: FloatArray, upper: FloatArray, density: FloatArray, cap: FloatArray) -> FloatArray:
    """Fractional knapsack over density bins (last axis, densest first) filled up to `cap`.

    Bin `c` is filled from `before[c]` replica-seconds (the work of denser bins) to `upper[c]`, at
    `density[c]` dollars per replica-second: it saves `density * (clip(cap, before, upper) - before)`.
    `cap` may carry extra trailing axes before the bins' (broadcast against them).
    """
    filled = np.clip(cap[..., None], before, upper)
    return np.asarray(filled @ density - before @ density)


def _segments(V: FloatArray, W: FloatArray, hi: FloatArray, lo: FloatArray) -> FloatArray:
    """Per bin (last axis) the widths of its two segments, at densities `hi` then `lo`: (..., 2 * bins).

    A bin's requests, of value `V` and work `W`, have densities in `[lo, hi]`, so a subset of work `w`
    saves at most `w * hi` and at most `V - (W - w) * lo` (the rest is worth at least its work at
    `lo`). The concave envelope of the two runs at `hi` up to `w1 = (V - W lo) / (hi - lo)` and at `lo`
    up to `W`. Both widths are linear in (V, W), so they add up over atoms; and as a denser bin's `lo`
    is at least a sparser bin's `hi`, all segments stay densest first.
    """
    spread = hi - lo
    wide = spread > hi * 1e-9
    first = np.where(wide, (V - W * lo) / np.where(wide, spread, 1.0), V / np.where(hi > 0, hi, 1.0))
    first = np.clip(first, 0.0, W)
    second = np.where(wide, W - first, 0.0)
    return np.stack((first, second), axis=-1).reshape(*V.shape[:-1], -1)


def _largest_sum(x: FloatArray, count: int) -> FloatArray:
    """The sum of each row's `count` largest entries."""
    if x.shape[1] <= count:
        return np.asarray(x.sum(axis=1), dtype=np.float64)
    return np.asarray(np.partition(x, x.shape[1] - count, axis=1)[:, -count:].sum(axis=1), dtype=np.float64)


def _compact(a: _Atoms, rows: IntArray) -> _Atoms:
    """The atoms of slots `rows`, row by row, each slot's filled atoms first (in order) and only as
    many atoms as the fullest slot fills.

    This changes no slot's U, up to the rounding of sums taken over arrays of another shape. An empty
    atom adds nothing to a group (its window runs from its first arrival to its last one plus `T`), so
    a run that starts or ends at one holds what a shorter run holds, and the best partition of the
    atoms before it is the same as of the atoms up to it. A run that closes the slot counts the next
    slot at most as much as one that does not (at its share and `n'` replicas, where one that does not
    counts the pool's maximum), so ending the partition with empty atoms never does better than
    closing it at the last filled one.
    """
    filled = np.isfinite(a.first[rows])
    order = np.argsort(~filled, axis=1, kind="stable")[:, : max(int(filled.sum(axis=1).max(initial=0)), 1)]

    def take(x: FloatArray) -> FloatArray:
        index = order.reshape(order.shape + (1,) * (x.ndim - 2))
        return np.take_along_axis(x[rows], index, axis=1)

    return _Atoms(
        atoms=order.shape[1],
        V=take(a.V),
        E=take(a.E),
        dtop=take(a.dtop),
        free=take(a.free),
        first=take(a.first),
        last=take(a.last),
    )


@dataclass(frozen=True, slots=True)
class _Group:
    """Atoms i..k of each slot in a chunk: their savable dollars per bin, the work of denser bins ahead
    of each bin, slack, free value, and the group's window inside, beyond and before the slot's end."""

    before: FloatArray
    upper: FloatArray
    slack: FloatArray
    free: FloatArray
    inside: FloatArray
    beyond: FloatArray
    lost: FloatArray
    """Per incoming level: the share of one replica's capacity the previous slot's work takes inside
    the window at least (the previous slot's part minus what lies outside the window)."""


@dataclass(frozen=True, slots=True)
class _Atoms:
    """Every slot's requests binned into `atoms` equal atoms and the density bins."""

    atoms: int
    V: FloatArray
    """Savable dollars per (slot, atom, bin), densest bin first."""
    E: FloatArray
    """The widths in replica-seconds of each bin's segments, densest first (see `_segments`; with
    `BIN_SEGMENTS = 1`, each bin's work counted at its densest request)."""
    dtop: FloatArray
    """Each atom's `lanes` largest decodes."""
    free: FloatArray
    first: FloatArray
    last: FloatArray


class SlotSavings:
    """The requests binned into slots, atoms and density bins, ready for `U` chunk by chunk."""

    def __init__(self, p: OptimumProblem, bounds: FloatArray, levels: int, exact_next: bool) -> None:
        self.p = p
        self.slots = slots = bounds.size - 1
        self.top = p.max_replicas
        self.exact_next = exact_next
        self.out_share, self.in_share = shares(levels)
        lengths = np.diff(bounds)
        self.lengths = lengths
        self.nxt = np.append(lengths[1:], math.inf)
        t_obj = p.objective_s
        # The stretch at each slot's start that the previous slot's requests can still use.
        self.shared_in = np.minimum(t_obj, lengths)
        self.shared_out = np.minimum(t_obj, self.nxt)
        slot = np.clip(np.searchsorted(bounds, p.arrival_s, side="right") - 1, 0, slots - 1)
        self.api_total = _sums(slot, p.api_usd, slots)
        self.first_request = np.searchsorted(slot, np.arange(slots + 1))
        """Each slot's first request (the requests are sorted by arrival), and last their count."""
        self.busy = np.zeros(slots, dtype=bool)
        savable = (p.prefill_s <= t_obj) & (p.api_usd > 0)
        self.empty = self.top == 0 or not np.any(savable)
        if self.empty:
            return
        median = float(np.median(lengths))
        coarse = int(min(max(math.floor(median / t_obj), 1), _MAX_ATOMS)) if t_obj > 0 else 1
        fine = int(min(max(math.floor(median / (t_obj * FINE_ATOM_SHARE)), 1), _FINE_ATOMS)) if t_obj > 0 else 1
        s_idx = slot[savable]
        offset = p.arrival_s[savable] - bounds[s_idx]
        value = p.api_usd[savable]
        work = np.maximum(p.work_s[savable], 1e-15)
        decode = np.maximum(p.work_s[savable] - p.prefill_s[savable], 0.0)
        density = value / work
        lo, hi = float(density.min()), float(density.max())
        bins = _DENSITY_BINS if hi > lo * (1 + 1e-9) else 1
        klass = (
            np.clip((np.log(density / lo) / math.log(hi / lo) * bins).astype(np.int64), 0, bins - 1)
            if bins > 1
            else (np.zeros(density.size, dtype=np.int64))
        )
        # Each bin's requests have densities in [d_lo, d_hi]: any subset of work w of a bin's (V, W)
        # saves at most min(w d_hi, V - (W - w) d_lo), two segments (see `_segments`).
        bin_top = np.zeros(bins)
        np.maximum.at(bin_top, klass, density)
        bin_low = np.full(bins, math.inf)
        np.minimum.at(bin_low, klass, density)
        bin_low = np.where(np.isfinite(bin_low), bin_low, 0.0)
        order = np.argsort(-bin_top)  # densest bin first
        hi_d, lo_d = bin_top[order], bin_low[order]
        segmented = BIN_SEGMENTS > 1
        self.density = np.stack((hi_d, lo_d), axis=1).reshape(-1) if segmented else hi_d  # densest first
        free = np.where(p.prefill_s[savable] <= 0, value, 0.0)

        def atomize(atoms: int) -> _Atoms:
            atom = np.clip((offset / (lengths[s_idx] / atoms)).astype(np.int64), 0, atoms - 1)
            cell = s_idx * atoms + atom
            V = _sums(cell * bins + klass, value, slots * atoms * bins).reshape(slots, atoms, bins)[:, :, order]
            W = _sums(cell * bins + klass, work, slots * atoms * bins).reshape(slots, atoms, bins)[:, :, order]
            # Each atom's `lanes` largest decodes (zeros where it has fewer requests).
            lanes = max(self.p.lanes, 1)
            ranked = np.lexsort((-decode, cell))
            cells = cell[ranked]
            rank = np.arange(cells.size) - np.searchsorted(cells, cells, side="left")
            keep = rank < lanes
            dtop = np.zeros(slots * atoms * lanes)
            dtop[cells[keep] * lanes + rank[keep]] = decode[ranked][keep]
            first = np.full(slots * atoms, math.inf)
            np.minimum.at(first, cell, offset)
            last = np.full(slots * atoms, -math.inf)
            np.maximum.at(last, cell, offset)
            return _Atoms(
                atoms=atoms,
                V=V,
                E=_segments(V, W, hi_d, lo_d) if segmented else V / np.where(hi_d > 0, hi_d, 1.0),
                dtop=dtop.reshape(slots, atoms, lanes),
                free=_sums(cell, free, slots * atoms).reshape(slots, atoms),
                first=first.reshape(slots, atoms),
                last=last.reshape(slots, atoms),
            )

        self.coarse = atomize(coarse)
        self.fine = atomize(fine) if fine > coarse else None
        self.savable_total = self.coarse.V.sum(axis=(1, 2))
        self.busy = self.savable_total > 0

    @property
    def next_counts(self) -> range | list[int]:
        """The next slot's Ready counts `U` distinguishes (only the maximum above `_EXACT_NEXT`)."""
        return range(self.top + 1) if self.exact_next else [self.top]

    def chunks(self) -> Iterator[tuple[int, int, FloatArray]]:
        """(first slot, end, U of those slots): U[s, n, j, n', j'], zero where a slot saves nothing."""
        shape = (self.top + 1, self.in_share.size, len(self.next_counts), self.out_share.size)
        for c in range(0, self.slots, _CHUNK):
            end = min(c + _CHUNK, self.slots)
            U = np.zeros((end - c, *shape))
            rows = c + np.flatnonzero(self.busy[c:end]) if not self.empty else np.zeros(0, dtype=np.int64)
            if rows.size:
                U[rows - c] = self._chunk(rows)
            yield c, end, U

    def _chunk(self, rows: IntArray) -> FloatArray:
        """U for busy slots `rows`.

        U falls with what the previous slot takes and rises with what this one may take of the next:
        where the two extremes agree, no level matters (a slot that is not full). Where even the
        tighter extreme saves every savable dollar with one replica the slot is light and keeps its
        coarse atoms; the others are cut again into fine atoms (any cut gives a bound).
        """
        out = np.empty((rows.size, self.top + 1, self.in_share.size, len(self.next_counts), self.out_share.size))
        none, full = np.zeros(1), np.ones(1)
        hi = self._bounds(self.coarse, rows, none, full)
        lo = self._bounds(self.coarse, rows, self.in_share[-1:], none)
        todo = np.ones(rows.size, dtype=bool)
        if self.fine is not None:
            saved_all = lo[:, 1:] >= self.savable_total[rows, None, None, None, None] * (1 - 1e-12)
            light = np.all(saved_all, axis=(1, 2, 3, 4))
            out[light] = hi[light]
            todo = ~light
            if np.any(todo):
                hi[todo] = self._bounds(self.fine, rows[todo], none, full)
                lo[todo] = self._bounds(self.fine, rows[todo], self.in_share[-1:], none)
        fixed = todo & np.all(hi - lo <= 1e-12 * np.maximum(np.abs(hi), 1.0), axis=(1, 2, 3, 4))
        out[fixed] = hi[fixed]
        tight = todo & ~fixed
        if np.any(tight) and self.in_share.size > 1:
            atoms = self.fine if self.fine is not None else self.coarse
            out[tight] = self._bounds(atoms, rows[tight], self.in_share, self.out_share)
        elif np.any(tight):
            out[tight] = hi[tight]
        return out

    def _group(
        self,
        a: _Atoms,
        rows: IntArray,
        cum: tuple[FloatArray, FloatArray],
        i: int,
        k: int,
        in_share: FloatArray,
    ) -> _Group:
        cE, cF = cum
        t_obj, length = self.p.objective_s, self.lengths[rows]
        begin = a.first[:, i : k + 1].min(axis=1)
        end = a.last[:, i : k + 1].max(axis=1) + t_obj
        empty = ~np.isfinite(end)
        begin = np.where(empty, 0.0, begin)
        end = np.where(empty, 0.0, end)
        inside = np.where(empty, 0.0, np.minimum(end, length) - begin)
        beyond = np.where(empty, 0.0, np.maximum(end - length, 0.0))
        # The previous slot's work in the shared stretch [0, shared) is at least its share of it; of
        # that, what lies before `begin` or after `end` may be outside this window.
        shared = self.shared_in[rows]
        outside = np.minimum(begin, shared) + np.maximum(shared - end, 0.0)
        lost = np.maximum(in_share[None, :] * shared[:, None] - outside[:, None], 0.0)
        work = cE[:, k + 1] - cE[:, i]
        return _Group(
            before=np.cumsum(work, axis=-1) - work,
            upper=np.cumsum(work, axis=-1),
            slack=_largest_sum(a.dtop[:, i : k + 1].reshape(rows.size, -1), a.dtop.shape[-1]),
            free=cF[:, k + 1] - cF[:, i],
            inside=inside,
            beyond=beyond,
            lost=lost,
        )

    def _bound(self, g: _Group, cap: FloatArray) -> FloatArray:
        """The group's savings bound for capacities `cap` of shape (rows, ...)."""
        extra = cap.ndim - 1
        shape = (-1,) + (1,) * extra
        bins = g.before.shape[:1] + (1,) * extra + g.before.shape[1:]
        saved = _greedy(g.before.reshape(bins), g.upper.reshape(bins), self.density, cap + g.slack.reshape(shape))
        return np.where(cap > 0, saved, g.free.reshape(shape))

    def _bounds(self, a: _Atoms, rows: IntArray, in_share: FloatArray, out_share: FloatArray) -> FloatArray:
        """U for the slots `rows` (see `_batch`), a batch at a time, slots with as many filled atoms
        batched together."""
        filled = np.isfinite(a.first[rows]).sum(axis=1)
        order = np.argsort(filled, kind="stable")
        out: FloatArray | None = None
        for b in range(0, rows.size, _BATCH):
            pick = order[b : b + _BATCH]
            part = self._batch(_compact(a, rows[pick]), rows[pick], in_share, out_share)
            if out is None:
                out = np.empty((rows.size, *part.shape[1:]))
            out[pick] = part
        assert out is not None
        return out

    def _batch(self, a: _Atoms, rows: IntArray, in_share: FloatArray, out_share: FloatArray) -> FloatArray:
        """U for the slots `rows`, whose atoms `a` holds row by row (see `_compact`): the least sum of
        group bounds over partitions into atom runs.

        A group's window runs from its first arrival to its last one plus `T`. One that does not end
        the slot counts any window beyond it at the pool's maximum; one that ends it counts the next
        slot's capacity up to the share `out_share[j']` of the stretch it shares with that slot, and
        any window past the next slot at the maximum.
        """
        atoms, top = a.atoms, self.top
        cum = tuple(
            np.concatenate((np.zeros((rows.size, 1, *x.shape[2:])), np.cumsum(x, axis=1)), axis=1)
            for x in (a.E, a.free)
        )
        groups = {(i, k): self._group(a, rows, cum, i, k, in_share) for k in range(atoms) for i in range(k + 1)}  # type: ignore[arg-type]
        nexts = np.asarray(list(self.next_counts), dtype=np.float64)
        # The next slot's capacity a closing group may use, per (n', j'): within its window, its share.
        after = {i: np.minimum(groups[(i, atoms - 1)].beyond, self.nxt[rows]) for i in range(atoms)}
        shared_out = self.shared_out[rows]
        extra = {
            i: np.minimum(
                out_share[None, None, :] * nexts[None, :, None] * shared_out[:, None, None],
                nexts[None, :, None] * after[i][:, None, None],
            )
            + top * (groups[(i, atoms - 1)].beyond - after[i])[:, None, None]
            for i in range(atoms)
        }
        n = np.arange(top + 1, dtype=np.float64)
        J = in_share.size

        def cap_of(g: _Group) -> FloatArray:
            """(rows, n, j): n replicas over the window, less what the previous slot takes of it."""
            return n[None, :, None] * (g.inside[:, None, None] - g.lost[:, None, :])

        def bounds_of(g: _Group, cap: FloatArray) -> FloatArray:
            # Levels that leave the group's capacity alone give the same bound: compute one, broadcast.
            if np.all(g.lost == 0.0):
                return np.broadcast_to(self._bound(g, cap[:, :, :1]), cap.shape)
            return self._bound(g, cap)

        best = np.zeros((rows.size, top + 1, J, atoms))  # best[..., a]: least bound of atoms [0, a)
        for k in range(atoms - 1):
            candidates = []
            for i in range(k + 1):
                g = groups[(i, k)]
                cap = cap_of(g) + top * g.beyond[:, None, None]
                candidates.append(best[..., i] + bounds_of(g, cap))
            best[..., k + 1] = np.min(candidates, axis=0)
        tails = []
        for i in range(atoms):
            g = groups[(i, atoms - 1)]
            inner = cap_of(g)
            if np.all(g.lost == 0.0):
                saved = self._bound(g, inner[:, :, :1, None, None] + extra[i][:, None, None])
            else:
                saved = self._bound(g, inner[:, :, :, None, None] + extra[i][:, None, None])
            tails.append(best[:, :, :, i, None, None] + saved)
        return np.asarray(np.min(tails, axis=0), dtype=np.float64)
