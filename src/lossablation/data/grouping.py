"""Assign whole groups (sources) to train / val / test so that every side gets its share of every class.

A split grouped by source must keep each source on one side, so the sides cannot be cut to exact fractions: a
source brings all its blocks, and sources differ in size and class mix. The problem (a balanced multi-way
partition of vectors) is NP-hard; for the tens of sources a dataset has, a small local search finds splits close
to the target quickly.

The input is a count matrix, one row per group and one column per stratum (class). The target of side ``k`` for
stratum ``j`` is ``fraction_k * total_j``; a split's cost is the sum over sides and strata of the squared miss,
each stratum scaled by its total so that a rare class (AB) weighs as much as a common one (SPLIT)::

    cost = sum_k sum_j ((assigned_kj - fraction_k * total_j) / total_j) ** 2

:func:`grouped_assignment` starts from several random orders of the groups (drawn from the split seed) and keeps
the cheapest result. From one order, :func:`_assign_from_order` places the groups greedily (each to the side where
the cost is lowest at that moment), then improves the assignment by moving single groups and swapping pairs of
groups on different sides while any move lowers the cost. No side is ever left without a group.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

RESTARTS = 8            # random starting orders per split
MAX_ROUNDS = 100        # improvement rounds per start (each round tries every move and swap once)
MAX_SWAP_GROUPS = 400   # pairwise swaps cost O(groups^2) per round: tried only up to this many groups
_EPS = 1e-12            # a move must lower the cost by more than rounding noise


def _imbalance(assigned: np.ndarray, target: np.ndarray, scale: np.ndarray) -> float:
    return float((((assigned - target) / scale) ** 2).sum())


def grouped_assignment(counts: np.ndarray, fractions: Sequence[float], seed: int, restarts: int = RESTARTS
                       ) -> np.ndarray:
    """Side index per group (row of the groups x strata ``counts``), stratified as far as the groups allow.

    Deterministic in ``seed``; other seeds give other, similarly balanced assignments when the groups allow it.
    """
    counts = np.asarray(counts, dtype=float)
    fractions = np.asarray(fractions, dtype=float)
    total = counts.sum(axis=0)
    scale = np.where(total > 0, total, 1.0)
    target = fractions[:, None] * total[None, :]
    rng = np.random.default_rng(seed)
    best, best_cost = None, np.inf
    for _ in range(restarts):
        side_of = _assign_from_order(counts, fractions, rng.permutation(counts.shape[0]))
        assigned = np.stack([counts[side_of == k].sum(axis=0) for k in range(len(fractions))])
        cost = _imbalance(assigned, target, scale)
        if cost < best_cost - _EPS:
            best, best_cost = side_of, cost
    return best


def _assign_from_order(counts: np.ndarray, fractions: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Greedy pass in ``order`` (each group to the side that costs least), then single-group moves and pairwise
    swaps (up to ``MAX_SWAP_GROUPS`` groups) while any lowers the cost; every side keeps at least one group."""
    counts = np.asarray(counts, dtype=float)
    fractions = np.asarray(fractions, dtype=float)
    n_groups, n_sides = counts.shape[0], len(fractions)
    total = counts.sum(axis=0)
    scale = np.where(total > 0, total, 1.0)
    target = fractions[:, None] * total[None, :]
    assigned = np.zeros((n_sides, counts.shape[1]))
    side_of = np.full(n_groups, -1, dtype=np.int64)

    def best_side(g: int) -> int:
        costs = []
        for side in range(n_sides):
            assigned[side] += counts[g]
            costs.append(_imbalance(assigned, target, scale))
            assigned[side] -= counts[g]
        return int(np.argmin(costs))

    for g in order:
        side_of[g] = best_side(g)
        assigned[side_of[g]] += counts[g]
    for _ in range(MAX_ROUNDS):  # local improvement: move one group at a time while the cost drops
        moved = False
        for g in order:
            here = side_of[g]
            if (side_of == here).sum() == 1:
                continue  # never empty a side
            before = _imbalance(assigned, target, scale)
            assigned[here] -= counts[g]
            side = best_side(g)
            assigned[side] += counts[g]
            if side != here and _imbalance(assigned, target, scale) < before - _EPS:
                side_of[g], moved = side, True
            else:
                assigned[side] -= counts[g]
                assigned[here] += counts[g]
        if n_groups <= MAX_SWAP_GROUPS:  # then swaps of two groups on different sides
            for i, g in enumerate(order):
                for h in order[i + 1:]:
                    a, b = side_of[g], side_of[h]
                    if a == b:
                        continue
                    before = _imbalance(assigned, target, scale)
                    delta = counts[h] - counts[g]
                    assigned[a] += delta
                    assigned[b] -= delta
                    if _imbalance(assigned, target, scale) < before - _EPS:
                        side_of[g], side_of[h], moved = b, a, True
                    else:
                        assigned[a] -= delta
                        assigned[b] += delta
        if not moved:
            break
    for side in range(n_sides):  # a side left empty takes the smallest group of the largest side
        if not (side_of == side).any():
            donor = np.bincount(side_of, minlength=n_sides).argmax()
            members = np.flatnonzero(side_of == donor)
            side_of[members[np.argmin(counts[members].sum(axis=1))]] = side
    return side_of
