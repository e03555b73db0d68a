"""Paired statistics over seeds: each arm against the baseline, the seed being the unit of pairing.

Pure functions returning tidy DataFrames (one row per arm, pingouin style). scipy and statsmodels do most of the
numerical work (reference ``losses-and-stats.md`` §3):

- paired t-test ``scipy.stats.ttest_rel`` and the 95 % t interval of the mean difference;
- effect sizes d_z = mean(d) / sd(d) (= t / sqrt(n)) and d_av = mean(d) / sqrt((s_x^2 + s_y^2) / 2), signed;
- Wilcoxon signed-rank on the differences rounded to 1e-6 (rounding turns float noise into true ties), exact by
  enumerating the sign flips (:mod:`lossablation.analysis.signedrank`) up to
  :data:`~lossablation.analysis.signedrank.EXACT_MAX_N` non-zero pairs, a labelled normal approximation beyond;
- Holm over the PLANNED family (every non-baseline arm; :func:`holm`);
- seeds for 80 % power (a paired test is a one-sample test on d; :func:`t_test_power`, checked against
  statsmodels' TTestPower and pingouin), at alpha and at the Holm-adjusted alpha / m.

Conventions for degenerate inputs (no warnings are emitted for them):

- fewer than 2 pairs: every test statistic is NaN (``mean_diff`` and the win/tie/loss counts are still given);
- sd of the differences is 0: the t-test is undefined (t, p, CI width, d_z, power are NaN; the CI collapses to
  the mean), while the Wilcoxon test is still exact (all differences 0 -> p = 1);
- an arm without a t-test p (either case above, or no run at all) still counts in the Holm family with p = 1, so
  the other arms are corrected for every planned comparison; its own ``p_holm`` stays NaN (nothing to claim).

Seeds for power at the Holm alpha use alpha / m (m = family size): the threshold of Holm's first, strictest step,
which is the one an arm must pass to be declared significant whatever the other arms' p-values are.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import pandas as pd
from scipy import stats as sps

from lossablation.analysis.signedrank import min_exact_wilcoxon_p, signed_rank_test

#: Significance level of every claim (after Holm) and of the power computations.
ALPHA = 0.05
#: Decimal places the differences are rounded to before the signed-rank test and the win/tie/loss count.
ROUND_DECIMALS = 6

#: One row per arm. ``wilcoxon_method``: "exact" or "approx." (normal approximation); ``holm_family``: the number
#: of planned comparisons Holm corrected for; ``seeds_for_power_holm``: seeds for power at alpha / holm_family.
COLUMNS = ["arm", "n_pairs", "mean_diff", "ci_low", "ci_high", "t", "p", "p_holm", "d_z", "d_av",
           "wilcoxon_p", "wins", "ties", "losses", "seeds_for_power",
           "wilcoxon_method", "sd_diff", "holm_family", "seeds_for_power_holm"]


def paired_values(df: pd.DataFrame, baseline: str, arm: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(seeds, arm values, baseline values) over the seeds both have a finite value for, sorted by seed."""
    wide = df.pivot_table(index="seed", columns="arm", values="value", aggfunc="first")
    if arm not in wide or baseline not in wide:
        empty = np.empty(0)
        return empty.astype(int), empty, empty
    both = wide[[arm, baseline]].astype(float).dropna()
    both = both[np.isfinite(both).all(axis=1)].sort_index()
    return both.index.to_numpy(), both[arm].to_numpy(), both[baseline].to_numpy()


def t_test_power(effect_size: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided one-sample (= paired) t-test with n pairs at standardised effect ``effect_size``.

    P(|T'| > t_crit) with T' non-central t (n - 1 df, non-centrality effect·sqrt(n)), both tails by ``nct.sf``
    (the lower one as sf at -nc): scipy's ``nct.cdf`` far in the lower tail returns NaN (e.g. 2 df, nc 9), which
    statsmodels' TTestPower propagates, and its ``solve_power`` then answers 3 seeds where 4 are needed.
    """
    df, nc = n - 1, effect_size * math.sqrt(n)
    crit = sps.t.isf(alpha / 2.0, df)
    return float(sps.nct.sf(crit, df, nc) + sps.nct.sf(crit, df, -nc))


def seeds_for_power(sd_diff: float, min_effect: float = 1.0, alpha: float = ALPHA, power: float = 0.8) -> float:
    """Smallest number of seeds (pairs), at least 2, giving ``power`` to detect a mean difference ``min_effect``.

    Two-sided paired t-test (:func:`t_test_power`) at effect size min_effect / sd_diff; integer search (the power
    grows with n). NaN when sd_diff is not a positive finite number.
    """
    if not (np.isfinite(sd_diff) and sd_diff > 0):
        return float("nan")
    effect = min_effect / sd_diff
    hi = 2
    while t_test_power(effect, hi, alpha) < power:
        if hi > 10**7:
            return float("nan")
        hi *= 2
    lo = hi // 2          # power(lo) < target whenever hi > 2; 2 pairs are the minimum anyway
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if t_test_power(effect, mid, alpha) < power else (lo, mid)
    return float(hi)


def compare_one(arm_values: np.ndarray, base_values: np.ndarray, *, min_effect: float = 1.0,
                alpha: float = ALPHA, power: float = 0.8, higher_is_better: bool = True) -> dict:
    """Statistics of one paired comparison (no multiplicity correction); see the module docstring."""
    x = np.asarray(arm_values, dtype=float)
    y = np.asarray(base_values, dtype=float)
    d = x - y
    n = d.size
    d_round = np.round(d, ROUND_DECIMALS)
    better = d_round > 0 if higher_is_better else d_round < 0
    worse = d_round < 0 if higher_is_better else d_round > 0
    row = {"n_pairs": n, "mean_diff": float(d.mean()) if n else float("nan"),
           "ci_low": float("nan"), "ci_high": float("nan"), "t": float("nan"), "p": float("nan"),
           "d_z": float("nan"), "d_av": float("nan"), "wilcoxon_p": float("nan"),
           "wins": int(better.sum()), "ties": int((d_round == 0).sum()), "losses": int(worse.sum()),
           "seeds_for_power": float("nan"), "wilcoxon_method": "", "sd_diff": float("nan")}
    if n < 2:
        return row
    sd_d = float(d.std(ddof=1))
    sd_av = math.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2.0)
    row["d_av"] = row["mean_diff"] / sd_av if sd_av > 0 else float("nan")
    row["wilcoxon_p"], row["wilcoxon_method"] = signed_rank_test(d_round)
    if np.all(d_round == d_round[0]):  # zero spread (up to float noise): the t statistic is undefined
        row["ci_low"] = row["ci_high"] = row["mean_diff"]
        row["sd_diff"] = 0.0
        return row
    res = sps.ttest_rel(x, y)
    ci = res.confidence_interval(confidence_level=0.95)
    row.update(t=float(res.statistic), p=float(res.pvalue), ci_low=float(ci.low), ci_high=float(ci.high),
               d_z=row["mean_diff"] / sd_d, sd_diff=sd_d,
               seeds_for_power=seeds_for_power(sd_d, min_effect=min_effect, alpha=alpha, power=power))
    return row


def holm(pvalues: Iterable[float]) -> np.ndarray:
    """Holm step-down adjusted p-values over the whole family ``pvalues``.

    Every entry is one planned comparison. A NaN entry (no test was possible) counts as p = 1, so the family size
    is always ``len(pvalues)``; its own adjusted value is returned as NaN. Written out here (sort ascending,
    multiply the k-th smallest by m - k + 1, running maximum, cap at 1); the tests check it against statsmodels'
    ``multipletests(method="holm")``.
    """
    p = np.asarray(list(pvalues), dtype=float)
    defined = np.isfinite(p)
    filled = np.where(defined, p, 1.0)
    m = filled.size
    order = np.argsort(filled, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * filled[order]) if m else filled
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return np.where(defined, adjusted, np.nan)


def holm_alpha(alpha: float, family_size: int) -> float:
    """Holm's strictest threshold alpha / m (the first step), used for seeds-for-power after Holm."""
    return alpha / max(int(family_size), 1)


def paired_comparison(df: pd.DataFrame, baseline: str, *, min_effect: float = 1.0, alpha: float = ALPHA,
                      power: float = 0.8, higher_is_better: bool = True,
                      arms: Iterable[str] | None = None) -> pd.DataFrame:
    """Compare every non-baseline arm with ``baseline``, pairing by seed.

    ``df`` has columns ``arm``, ``seed``, ``value`` (one row per run; NaN or absent = run not usable). Values are
    in whatever unit is passed (the aggregation passes percentages, so ``min_effect=1.0`` is +1 pp).
    ``arms`` fixes the arms and their order (default: order of appearance). ``higher_is_better`` only decides
    which differences count as wins (set False for ECE). Returns one row per arm with the columns ``COLUMNS``;
    ``p_holm`` adjusts ``p`` over every listed arm (the planned family, see :func:`holm`), and
    ``seeds_for_power_holm`` is computed at :func:`holm_alpha`.
    """
    missing = {"arm", "seed", "value"} - set(df.columns)
    if missing:
        raise ValueError(f"paired_comparison: df lacks columns {sorted(missing)}")
    order = list(arms) if arms is not None else list(dict.fromkeys(df["arm"]))
    rows = []
    for arm in order:
        if arm == baseline:
            continue
        _, x, y = paired_values(df, baseline, arm)
        rows.append({"arm": arm, **compare_one(x, y, min_effect=min_effect, alpha=alpha, power=power,
                                               higher_is_better=higher_is_better)})
    family = len(rows)
    added = ("p_holm", "holm_family", "seeds_for_power_holm")
    out = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in added])
    out.insert(COLUMNS.index("p_holm"), "p_holm", holm(out["p"]))
    out["holm_family"] = family
    strict = holm_alpha(alpha, family)
    out["seeds_for_power_holm"] = [seeds_for_power(sd, min_effect=min_effect, alpha=strict, power=power)
                                   if np.isfinite(p) else float("nan") for sd, p in zip(out["sd_diff"], out["p"])]
    return out[COLUMNS].astype({"n_pairs": int, "wins": int, "ties": int, "losses": int, "holm_family": int})


def min_seeds_for_wilcoxon_under_holm(n_arms: int, alpha: float = ALPHA) -> int:
    """Fewest pairs for which an exact Wilcoxon can pass Holm's strictest threshold alpha / n_arms."""
    n = 1
    while min_exact_wilcoxon_p(n) > holm_alpha(alpha, n_arms):
        n += 1
    return n


def describe(df: pd.DataFrame, arms: Iterable[str] | None = None) -> pd.DataFrame:
    """Per-arm mean, sd (ddof=1; NaN with one value) and count of the finite values."""
    order = list(arms) if arms is not None else list(dict.fromkeys(df["arm"]))
    rows = []
    for arm in order:
        v = df.loc[df["arm"] == arm, "value"].astype(float).to_numpy()
        v = v[np.isfinite(v)]
        rows.append({"arm": arm, "n": int(v.size), "mean": float(v.mean()) if v.size else float("nan"),
                     "sd": float(v.std(ddof=1)) if v.size > 1 else float("nan")})
    return pd.DataFrame(rows, columns=["arm", "n", "mean", "sd"])
