"""A tighter savings bound for one loaded slot: every window of its requests at once, as a linear program.

`policies/slot_savings.py` bounds a slot's savings by partitioning its requests into groups of atoms,
each group checked against its own window alone. Here every *window* constraint holds at once, with
the savings of each request a variable `x_i` in [0, 1] (1: on time on the GPUs):

    max sum_i v_i x_i   subject to   sum_{i in S_r} w_i x_i <= H_r(n, j, n', j')   for every row r,

where each row `r` is a set `S_r` of the slot's requests with its window `[f_r, e_r]`, and `H_r` the
replica-seconds that any run can give `S_r`'s on-time work inside it, plus a slack. Two families, for
`g1` and `g2` on a grid of `T * WINDOW_GRID_SHARE` seconds:

- arrival windows: the requests arriving in `[g1, g2 - T]`; `f` the first arrival, `e` the last one
  plus `T`, the slack the `lanes` largest decodes (each lane's last on-time request need only have its
  prefill done by `e`);
- deadline windows: the requests arriving at or after `g1` whose *latest start* `a + T - prefill` is at
  most `g2`; `e` the latest of those starts, the slack the `lanes` largest works. A request is on time
  only if every request ahead of it in its FIFO lane is done by its latest start (its own prefill
  comes after them), so in each lane all of `S_r`'s on-time work but the lane's last request's is done
  inside `[f, e]`.

`H_r = n * (min(e, L) - f - lost) + next + slack` counts the slot's capacity as the partition bound
does (`lost`: what the previous slot's work takes of the window at level `j`; `next`: the next slot's
`n'` replicas up to the share `j'`, and the pool's maximum past it). The rows hold for every run whose
Ready counts and shares match the combination, so the LP's value bounds what the slot's on-time
requests can save there. Any dual `u >= 0` of the rows gives an upper bound of it, whatever the
solver's accuracy (weak duality): `sum_r u_r H_r + sum_i max(0, v_i - sum_r u_r w_i [i in S_r])`. As
`H_r` is known in closed form for every combination, one solve at the combination a plan uses bounds
the slot at every other combination too (`Certificate.bound`), which is what the DP needs.

Only rows that can bind (`sum_{S_r} w > H_r`) enter, and of those, the rows the LP needs (row
generation: solve with the tightest rows, add the rows the solution breaks, solve again).
"""

from __future__ import annotations

from dataclasses import dataclass

import highspy
import numpy as np
import numpy.typing as npt
from highspy._core import _Highs

__all__ = ["WINDOW_GRID_SHARE", "Certificate", "SlotGeometry", "certificate"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

WINDOW_GRID_SHARE = 1 / 16
"""The windows' ends lie on a grid of this share of the objective (finer: more rows, a tighter bound)."""
_MAX_ENDS = 128
"""At most about this many window starts per slot: a slot longer than `_MAX_ENDS` sixteenths of the
objective gets a coarser grid (a 15 s slot with a 2 s objective keeps the sixteenth)."""
_FIRST_ROWS = 40
"""Rows of the first solve: the ones with least capacity per unit of their work."""
_ADDED_ROWS = 60
"""At most this many broken rows are added per round."""
_ROUNDS = 12
"""Row-generation rounds at most (any round's duals already give a bound)."""


@dataclass(frozen=True, slots=True)
class SlotGeometry:
    """What a window's capacity depends on besides its ends: the slot's length, the stretches it shares
    with its neighbours, the next slot's length and the pool's maximum."""

    length: float
    shared_in: float
    """The stretch at the slot's start that the previous slot's requests can still use."""
    shared_out: float
    """The stretch at the next slot's start that this slot's requests can still use."""
    next_length: float
    top: int


def capacity(
    g: SlotGeometry,
    f: FloatArray,
    e: FloatArray,
    slack: FloatArray,
    n: FloatArray,
    in_share: FloatArray,
    n_next: FloatArray,
    out_share: FloatArray,
) -> FloatArray:
    """Each window's `H` (broadcast over the combination's arrays): replica-seconds inside `[f, e]`
    with `n` Ready, less what the previous slot takes at least (`in_share` of its shared stretch),
    plus the next slot's (`n_next` replicas, at most `out_share` of the stretch), the pool's maximum
    past it, and the slack."""
    inside = np.minimum(e, g.length) - f
    lost = np.maximum(in_share * g.shared_in - np.minimum(f, g.shared_in) - np.maximum(g.shared_in - e, 0.0), 0.0)
    beyond = np.maximum(e - g.length, 0.0)
    nxt = np.minimum(out_share * n_next * g.shared_out, n_next * np.minimum(beyond, g.next_length))
    return np.asarray(n * (inside - lost) + nxt + g.top * np.maximum(beyond - g.next_length, 0.0) + slack)


@dataclass(frozen=True, slots=True)
class Certificate:
    """An LP dual of one slot: the rows it weighs and the value left outside them."""

    geometry: SlotGeometry
    f: FloatArray
    e: FloatArray
    slack: FloatArray
    u: FloatArray
    """The rows' weights (all > 0)."""
    rest: float
    """`sum_i max(0, v_i - sum_r u_r w_i [i in S_r])`."""

    def bound(
        self, counts: FloatArray, in_share: FloatArray, next_counts: FloatArray, out_share: FloatArray
    ) -> FloatArray:
        """The bound on the slot's savings at every combination: shape (n, j, n', j')."""
        n = counts[:, None, None, None, None]
        j = in_share[None, :, None, None, None]
        n2 = next_counts[None, None, :, None, None]
        j2 = out_share[None, None, None, :, None]
        h = capacity(self.geometry, self.f, self.e, self.slack, n, j, n2, j2)
        return np.asarray(h @ self.u + self.rest)


def _running_top(x: FloatArray, lanes: int) -> FloatArray:
    """Per row of `x` (entries >= 0), the running sum of its `lanes` largest entries along axis 1
    (for more than two lanes, `lanes` times the running maximum, which is no smaller)."""
    m1 = np.maximum.accumulate(x, axis=1)
    if lanes <= 1:
        return m1
    if lanes > 2:
        return np.asarray(lanes * m1)
    second = np.minimum(x[:, 1:], m1[:, :-1])
    m2 = np.concatenate((np.zeros((x.shape[0], 1)), np.maximum.accumulate(second, axis=1)), axis=1)
    return np.asarray(m1 + m2)


@dataclass(frozen=True, slots=True)
class _Rows:
    f: FloatArray
    e: FloatArray
    slack: FloatArray
    work: FloatArray
    """The whole work of each row's requests."""
    first: IntArray
    """Arrival windows: the first request; deadline windows: the first request that may belong."""
    last: IntArray
    """Arrival windows: one past the last request; deadline windows: how many latest starts (in
    their order) the row takes."""
    deadline: BoolArray


def _rows(a: FloatArray, w: FloatArray, prefill: FloatArray, objective: float, length: float, lanes: int) -> _Rows:
    """Every window of both families on the grid (rows with the same requests once)."""
    n = a.size
    step = max(objective * WINDOW_GRID_SHARE, length / _MAX_ENDS) if objective > 0 else length
    i1 = np.unique(np.searchsorted(a, np.arange(0.0, length, step)))
    i1 = i1[i1 < n]
    ends = np.arange(step, length + objective + step, step)
    index = np.arange(n)
    cumulative = np.concatenate(([0.0], np.cumsum(w)))
    # Arrival windows: requests i1 .. i2 - 1 (sorted by arrival).
    i2 = np.unique(np.searchsorted(a + objective, ends, side="right"))
    first, last = (m.ravel() for m in np.meshgrid(i1, i2, indexing="ij"))
    keep = last > first
    first, last = first[keep], last[keep]
    decode = np.maximum(w - prefill, 0.0)
    top_decode = _running_top(np.where(index[None, :] >= i1[:, None], decode[None, :], 0.0), lanes)
    row_of = np.searchsorted(i1, first)
    arrival = _Rows(
        f=a[first],
        e=a[last - 1] + objective,
        slack=top_decode[row_of, last - 1],
        work=cumulative[last] - cumulative[first],
        first=first,
        last=last,
        deadline=np.zeros(first.size, dtype=bool),
    )
    # Deadline windows: requests from i1 on whose latest start is at most the end.
    start = a + objective - prefill
    by_start = np.argsort(start, kind="stable")
    starts = start[by_start]
    taken = np.unique(np.searchsorted(starts, ends, side="right"))
    taken = taken[taken > 0]
    inside = by_start[None, :] >= i1[:, None]  # (i1, requests in order of latest start)
    cum_work = np.cumsum(np.where(inside, w[by_start][None, :], 0.0), axis=1)
    latest = np.maximum.accumulate(np.where(inside, starts[None, :], -np.inf), axis=1)
    members = np.cumsum(inside, axis=1)
    top_work = _running_top(np.where(inside, w[by_start][None, :], 0.0), lanes)
    row, col = (m.ravel() for m in np.meshgrid(np.arange(i1.size), taken - 1, indexing="ij"))
    keep = np.isfinite(latest[row, col])
    row, col = row[keep], col[keep]
    _, once = np.unique(row * (n + 1) + members[row, col], return_index=True)  # same i1 and size: same set
    row, col = row[once], col[once]
    deadline = _Rows(
        f=a[i1[row]],
        e=latest[row, col],
        slack=top_work[row, col],
        work=cum_work[row, col],
        first=i1[row],
        last=col + 1,
        deadline=np.ones(row.size, dtype=bool),
    )
    return _Rows(*(np.concatenate((x, y)) for x, y in zip(_fields(arrival), _fields(deadline), strict=True)))


def _fields(r: _Rows) -> tuple[npt.NDArray[np.generic], ...]:
    return (r.f, r.e, r.slack, r.work, r.first, r.last, r.deadline)


def _members(r: _Rows, pick: IntArray, rank: IntArray) -> BoolArray:
    """Which requests each picked row holds: (rows, requests)."""
    index = np.arange(rank.size)[None, :]
    first, last = r.first[pick, None], r.last[pick, None]
    by_arrival = (index >= first) & (index < last)
    by_start = (index >= first) & (rank[None, :] < last)
    return np.where(r.deadline[pick, None], by_start, by_arrival)


def _loads(r: _Rows, pick: IntArray, load: FloatArray, by_start: IntArray) -> FloatArray:
    """Each picked row's sum of `load` over its requests, without building the rows' matrix."""
    out = np.empty(pick.size)
    first, last, deadline = r.first[pick], r.last[pick], r.deadline[pick]
    arrival = ~deadline
    cumulative = np.concatenate(([0.0], np.cumsum(load)))
    out[arrival] = cumulative[last[arrival]] - cumulative[first[arrival]]
    if np.any(deadline):
        starts, row = np.unique(first[deadline], return_inverse=True)
        inside = np.where(by_start[None, :] >= starts[:, None], load[by_start][None, :], 0.0)
        out[deadline] = np.cumsum(inside, axis=1)[row, last[deadline] - 1]
    return out


def _solve(value: FloatArray, matrix: FloatArray, capacity: FloatArray) -> tuple[FloatArray, FloatArray]:
    """max value.x subject to matrix x <= capacity, 0 <= x <= 1: (x, the rows' duals >= 0)."""
    rows, cols = matrix.shape
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = cols, rows
    lp.col_cost_ = -value
    lp.col_lower_, lp.col_upper_ = np.zeros(cols), np.ones(cols)
    lp.row_lower_, lp.row_upper_ = np.full(rows, -highspy.kHighsInf), capacity
    r, c = np.nonzero(matrix)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.start_ = np.concatenate(([0], np.cumsum(np.bincount(r, minlength=rows)))).astype(np.int32)
    lp.a_matrix_.index_ = c.astype(np.int32)
    lp.a_matrix_.value_ = matrix[r, c]
    lp.a_matrix_.num_row_, lp.a_matrix_.num_col_ = rows, cols
    h = _Highs()  # the bare solver: `highspy.Highs()` prints a banner to stdout
    h.setOptionValue("output_flag", False)
    # Presolve took most of the time on these LPs (with it, 2.5 to 10 times the solve without it,
    # measured on the default weeks' and an overloaded day's slots), for the same duals' bound.
    h.setOptionValue("presolve", "off")
    h.passModel(lp)
    h.run()
    solution = h.getSolution()
    x = np.clip(np.asarray(solution.col_value, dtype=np.float64), 0.0, 1.0)
    if x.size != cols:  # no solution: no weights, which still bounds (every request saves its value)
        return np.zeros(cols), np.zeros(rows)
    return x, np.maximum(-np.asarray(solution.row_dual, dtype=np.float64), 0.0)


def certificate(
    geometry: SlotGeometry,
    arrival: FloatArray,
    work: FloatArray,
    prefill: FloatArray,
    value: FloatArray,
    *,
    objective: float,
    lanes: int,
    at: tuple[float, float, float, float],
) -> Certificate | None:
    """The LP's dual at the combination `at` = (n, in_share, n', out_share) for one slot's savable
    requests (arrival offsets in the slot, sorted; each prefill within the objective), or None when no
    window can bind there (every request fits: nothing to tighten)."""
    if arrival.size == 0:
        return None
    w = np.maximum(work, 1e-15)
    r = _rows(arrival, w, prefill, objective, geometry.length, lanes)
    n, j, n2, j2 = (np.full(1, x, dtype=np.float64) for x in at)
    h = capacity(geometry, r.f, r.e, r.slack, n, j, n2, j2)
    binding = np.flatnonzero(r.work > h * (1 + 1e-12) + 1e-12)
    if binding.size == 0:
        return None
    by_start = np.argsort(arrival + objective - prefill, kind="stable")
    rank = np.empty(arrival.size, dtype=np.int64)
    rank[by_start] = np.arange(arrival.size)
    hb = h[binding]
    active = np.zeros(binding.size, dtype=bool)
    active[np.argsort(hb / r.work[binding], kind="stable")[:_FIRST_ROWS]] = True
    u = np.zeros(binding.size)
    for _ in range(_ROUNDS):
        matrix = np.where(_members(r, binding[active], rank), w[None, :], 0.0)
        x, duals = _solve(value, matrix, hb[active])
        u[:] = 0.0
        u[active] = duals
        broken = _loads(r, binding, w * x, by_start) - hb
        broken[active] = 0.0
        add = np.flatnonzero(broken > 1e-9 * np.maximum(hb, 1e-9))
        if add.size == 0:
            break
        active[add[np.argsort(-broken[add], kind="stable")[:_ADDED_ROWS]]] = True
    matrix = np.where(_members(r, binding[u > 0], rank), w[None, :], 0.0)
    rest = float(np.maximum(value - matrix.T @ u[u > 0], 0.0).sum())
    weighed = u > 0
    rows = binding[weighed]
    return Certificate(geometry, r.f[rows], r.e[rows], r.slack[rows], u[weighed], rest)
