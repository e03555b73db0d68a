"""Wilcoxon signed-rank test on paired differences, exact by enumeration of the sign flips.

Conventions (one home for them; :mod:`lossablation.analysis.stats` calls :func:`signed_rank_test`):

- **Zeros are dropped** before ranking (Wilcoxon's original rule, scipy's ``zero_method="wilcox"``): a zero
  difference carries no sign, and n below is the number of NON-zero differences. All differences zero gives
  p = 1.
- **Ties** in |d| get their average rank. Average ranks are multiples of 1/2, so the doubled ranks are integers.
- **Exact p** (n <= :data:`EXACT_MAX_N`): under H0 each difference's sign is + or - with probability 1/2,
  independently, with the ranks fixed (the permutation distribution conditional on the observed ties). The
  distribution of the doubled positive-rank sum 2·T+ over all 2^n sign flips is built by dynamic programming
  over the doubled ranks (n steps over at most n(n+1) + 1 sums), and two-sided p = P(|T+ - E| >= |t - E|)
  = min(1, 2·min(P(T+ <= t), P(T+ >= t))), the distribution being symmetric about E = n(n+1)/4.
  Without ties this is the classical table (scipy ``method="exact"``); with ties or zeros it equals scipy's
  exhaustive permutation test, which scipy's ``"auto"`` only runs up to 13 pairs.
- **Beyond** :data:`EXACT_MAX_N` non-zero pairs: the tie-corrected normal approximation without continuity
  correction (scipy ``method="asymptotic"``), reported with the method label ``"approx."``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

#: Largest number of non-zero differences for which p is computed exactly (2^50 sign flips, by DP in microseconds).
EXACT_MAX_N = 50
EXACT, APPROX = "exact", "approx."


def doubled_ranks(abs_d: np.ndarray) -> np.ndarray:
    """2 × the average ranks of ``abs_d`` (ranks 1..n, ties averaged), as integers."""
    return np.rint(2.0 * sps.rankdata(abs_d, method="average")).astype(np.int64)


def rank_sum_distribution(ranks2: np.ndarray) -> np.ndarray:
    """P(2·T+ = s) for s = 0..sum(ranks2): each rank enters the positive sum with probability 1/2."""
    dist = np.zeros(int(ranks2.sum()) + 1)
    dist[0] = 1.0
    top = 0
    for r in ranks2:
        shifted = dist[: top + 1].copy()
        dist[: top + 1] *= 0.5
        dist[r: r + top + 1] += 0.5 * shifted
        top += int(r)
    return dist


def _exact_p(ranks2: np.ndarray, t2: int) -> float:
    dist = rank_sum_distribution(ranks2)
    lower, upper = dist[: t2 + 1].sum(), dist[t2:].sum()
    return float(min(1.0, 2.0 * min(lower, upper)))


def _normal_p(abs_d: np.ndarray, t_plus: float) -> float:
    n = abs_d.size
    _, tie_sizes = np.unique(abs_d, return_counts=True)
    var = n * (n + 1) * (2 * n + 1) / 24.0 - float(np.sum(tie_sizes ** 3 - tie_sizes)) / 48.0
    z = (t_plus - n * (n + 1) / 4.0) / math.sqrt(var)
    return float(min(1.0, 2.0 * sps.norm.sf(abs(z))))


def signed_rank_test(d: np.ndarray) -> tuple[float, str]:
    """(two-sided p, method) of the signed-rank test on the (already rounded) differences ``d``."""
    d = np.asarray(d, dtype=float)
    d = d[d != 0]
    if d.size == 0:
        return 1.0, EXACT
    abs_d = np.abs(d)
    ranks2 = doubled_ranks(abs_d)
    t2 = int(ranks2[d > 0].sum())
    if d.size <= EXACT_MAX_N:
        return _exact_p(ranks2, t2), EXACT
    return _normal_p(abs_d, t2 / 2.0), APPROX


def min_exact_wilcoxon_p(n: int) -> float:
    """Smallest two-sided p an exact signed-rank test can give with n non-zero pairs: 2 / 2^n."""
    return 2.0 / 2.0 ** n if n > 0 else 1.0
