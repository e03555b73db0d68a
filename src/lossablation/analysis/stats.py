"""Paired statistics over seeds: each arm against the baseline, the seed being the unit of pairing.

Pure functions returning tidy DataFrames (one row per arm, pingouin style). scipy and statsmodels do the
numerical work (reference ``losses-and-stats.md`` §3):

- paired t-test ``scipy.stats.ttest_rel`` and the 95 % t interval of the mean difference;
- effect sizes d_z = mean(d) / sd(d) (= t / sqrt(n)) and d_av = mean(d) / sqrt((s_x^2 + s_y^2) / 2), signed;
- exact Wilcoxon signed-rank on the differences rounded to 1e-6 (rounding turns float noise into true ties;
  with ties scipy enumerates all sign flips over mid-ranks, exact for n <= 13);
- Holm over the arms (``statsmodels.stats.multitest.multipletests``);
- seeds for 80 % power (``statsmodels.stats.power.TTestPower``: a paired test is a one-sample test on d).

Conventions for degenerate inputs (no warnings are emitted for them):

- fewer than 2 pairs: every test statistic is NaN (``mean_diff`` and the win/tie/loss counts are still given);
- sd of the differences is 0: the t-test is undefined (t, p, CI width, d_z, power are NaN; the CI collapses to
  the mean), while the Wilcoxon test is still exact (all differences 0 -> p = 1).
"""

from __future__ import annotations

import math
import warnings
from typing import Iterable

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower
# Imported here so that its module-level warnings.simplefilter("always", ConvergenceWarning) runs once now, not
# lazily inside solve_power where it would override the catch_warnings() below.
import statsmodels.tools.sm_exceptions  # noqa: F401,E402

#: Decimal places the differences are rounded to before the signed-rank test and the win/tie/loss count.
ROUND_DECIMALS = 6

COLUMNS = ["arm", "n_pairs", "mean_diff", "ci_low", "ci_high", "t", "p", "p_holm", "d_z", "d_av",
           "wilcoxon_p", "wins", "ties", "losses", "seeds_for_power"]


def paired_values(df: pd.DataFrame, baseline: str, arm: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(seeds, arm values, baseline values) over the seeds both have a finite value for, sorted by seed."""
    wide = df.pivot_table(index="seed", columns="arm", values="value", aggfunc="first")
    if arm not in wide or baseline not in wide:
        empty = np.empty(0)
        return empty.astype(int), empty, empty
    both = wide[[arm, baseline]].astype(float).dropna()
    both = both[np.isfinite(both).all(axis=1)].sort_index()
    return both.index.to_numpy(), both[arm].to_numpy(), both[baseline].to_numpy()


def seeds_for_power(sd_diff: float, min_effect: float = 1.0, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest number of seeds (pairs) giving ``power`` to detect a mean difference of ``min_effect``.

    Two-sided one-sample t-test on the differences (TTestPower) at effect size min_effect / sd_diff.
    NaN when sd_diff is not a positive finite number.
    """
    if not (np.isfinite(sd_diff) and sd_diff > 0):
        return float("nan")
    analysis = TTestPower()
    effect = min_effect / sd_diff

    def achieved(n: float) -> float:
        return float(analysis.power(effect_size=effect, nobs=n, alpha=alpha, alternative="two-sided"))

    if achieved(2) >= power:  # the root finder fails below 2 observations; 2 pairs are the minimum anyway
        return 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nobs = float(np.asarray(analysis.solve_power(effect_size=effect, alpha=alpha, power=power,
                                                     alternative="two-sided")).item())
    if not np.isfinite(nobs):  # solver gave up (tiny effect): integer search on the power function
        hi = 4
        while achieved(hi) < power and hi < 10**7:
            hi *= 2
        lo = hi // 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if achieved(mid) < power else (lo, mid)
        return float(hi)
    return float(math.ceil(nobs - 1e-9))


def _wilcoxon_p(d_rounded: np.ndarray) -> float:
    """Exact two-sided signed-rank p on rounded differences; 1.0 when every difference is zero."""
    if not np.any(d_rounded != 0):
        return 1.0
    # scipy's "auto": the exact table without ties; with tied |d| (common after rounding) the exhaustive
    # enumeration of the 2^n sign flips over mid-ranks (n <= 13), i.e. the exact conditional distribution.
    # method="exact" would use the no-ties table there. Zeros are dropped (zero_method="wilcox").
    return float(sps.wilcoxon(d_rounded).pvalue)


def compare_one(arm_values: np.ndarray, base_values: np.ndarray, *, min_effect: float = 1.0,
                alpha: float = 0.05, power: float = 0.8, higher_is_better: bool = True) -> dict:
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
           "seeds_for_power": float("nan")}
    if n < 2:
        return row
    sd_d = float(d.std(ddof=1))
    sd_av = math.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2.0)
    row["d_av"] = row["mean_diff"] / sd_av if sd_av > 0 else float("nan")
    row["wilcoxon_p"] = _wilcoxon_p(d_round)
    if np.all(d_round == d_round[0]):  # zero spread (up to float noise): the t statistic is undefined
        row["ci_low"] = row["ci_high"] = row["mean_diff"]
        return row
    res = sps.ttest_rel(x, y)
    ci = res.confidence_interval(confidence_level=0.95)
    row.update(t=float(res.statistic), p=float(res.pvalue), ci_low=float(ci.low), ci_high=float(ci.high),
               d_z=row["mean_diff"] / sd_d,
               seeds_for_power=seeds_for_power(sd_d, min_effect=min_effect, alpha=alpha, power=power))
    return row


def holm(pvalues: Iterable[float]) -> np.ndarray:
    """Holm-adjusted p-values; NaN entries stay NaN and do not count towards the family size."""
    p = np.asarray(list(pvalues), dtype=float)
    out = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        out[finite] = multipletests(p[finite], method="holm")[1]
    return out


def paired_comparison(df: pd.DataFrame, baseline: str, *, min_effect: float = 1.0, alpha: float = 0.05,
                      power: float = 0.8, higher_is_better: bool = True,
                      arms: Iterable[str] | None = None) -> pd.DataFrame:
    """Compare every non-baseline arm with ``baseline``, pairing by seed.

    ``df`` has columns ``arm``, ``seed``, ``value`` (one row per run; NaN or absent = run not usable). Values are
    in whatever unit is passed (the aggregation passes percentages, so ``min_effect=1.0`` is +1 pp).
    ``arms`` fixes the arms and their order (default: order of appearance). ``higher_is_better`` only decides
    which differences count as wins (set False for ECE). Returns one row per arm with the columns ``COLUMNS``;
    ``p_holm`` adjusts ``p`` over the arms.
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
    out = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "p_holm"])
    out.insert(COLUMNS.index("p_holm"), "p_holm", holm(out["p"]) if len(out) else [])
    return out.astype({"n_pairs": int, "wins": int, "ties": int, "losses": int})


def min_exact_wilcoxon_p(n: int) -> float:
    """Smallest two-sided p an exact signed-rank test can give with n non-zero pairs: 2 / 2^n."""
    return 2.0 / 2.0 ** n if n > 0 else 1.0


def min_seeds_for_wilcoxon_under_holm(n_arms: int, alpha: float = 0.05) -> int:
    """Fewest pairs for which an exact Wilcoxon can pass Holm's strictest threshold alpha / n_arms."""
    n = 1
    while min_exact_wilcoxon_p(n) > alpha / max(n_arms, 1):
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
