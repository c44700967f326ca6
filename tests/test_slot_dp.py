"""The DP's step over a slot that saves nothing, against the full step it stands in for."""

from __future__ import annotations

import math

import numpy as np
import pytest

from policies.slot_dp import _idle_step


def _full_step(cost: np.ndarray, held: np.ndarray, moves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The step over (n, j, n', j') as `one_pass` takes it where U is zero: (choice, next cost)."""
    top1, J = cost.shape
    states = top1 * J
    step = (cost + held[:, None])[:, :, None, None] - np.zeros((top1, J, top1, J))
    step = step + moves
    flat = np.broadcast_to(step, (top1, J, top1, J)).reshape(states, states)
    best = np.argmin(flat, axis=0)
    return best, flat[best, np.arange(states)].reshape(top1, J)


@pytest.mark.parametrize("seed", range(40))
def test_an_idle_slot_steps_as_the_full_step_does(seed: int) -> None:
    rng = np.random.default_rng(seed)
    top, J = int(rng.integers(0, 6)), int(rng.integers(1, 6))
    counts = np.arange(top + 1)
    # Whole dollars make ties common: the first minimum in flat order must be the one kept.
    cost = rng.integers(0, 4, (top + 1, J)).astype(np.float64)
    cost[rng.random((top + 1, J)) < 0.3] = math.inf
    held = float(rng.integers(0, 3)) * counts.astype(np.float64)
    up = np.maximum(counts[None, :] - counts[:, None], 0)
    if rng.random() < 0.5:
        moves = (float(rng.integers(0, 3)) * up)[:, None, :, None].astype(np.float64)
    else:
        moves = np.where(up > 0, math.inf, 0.0)[:, None, :, None]
    choice = np.zeros((top + 1) * J, dtype=np.int64)
    nxt = _idle_step(cost, held, moves, choice)
    want_choice, want_next = _full_step(cost, held, moves)
    np.testing.assert_array_equal(nxt, want_next)
    reachable = np.isfinite(want_next.reshape(-1))
    np.testing.assert_array_equal(choice[reachable], want_choice[reachable])
