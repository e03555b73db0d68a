"""lossablation.analysis.stats against the reference §3 oracles, statsmodels and pingouin."""

import math
import warnings

import numpy as np
import pandas as pd
import pingouin as pg
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from lossablation.analysis import signedrank, stats

BASE = [58.2, 58.5, 58.1, 58.9, 58.4]
ARMS = {"4A": [58.4, 58.3, 58.6, 59.0, 58.5], "4B": [59.0, 59.4, 58.6, 59.9, 59.1],
        "4C": [57.9, 58.8, 58.0, 58.7, 58.1], "4D": [58.6, 58.9, 58.3, 59.4, 58.9]}


def frame(arms: dict, base=BASE, seeds=None) -> pd.DataFrame:
    seeds = seeds or list(range(1, len(base) + 1))
    rows = [{"arm": "base", "seed": s, "value": v} for s, v in zip(seeds, base)]
    for arm, vals in arms.items():
        rows += [{"arm": arm, "seed": s, "value": v} for s, v in zip(seeds, vals) if v is not None]
    return pd.DataFrame(rows)


def test_single_pair_oracle():
    res = stats.paired_comparison(frame({"poly": ARMS["4B"]}), "base").set_index("arm").loc["poly"]
    assert list(stats.paired_comparison(frame({"poly": ARMS["4B"]}), "base").columns) == stats.COLUMNS
    assert res["n_pairs"] == 5
    assert res["mean_diff"] == pytest.approx(0.78, abs=1e-9)
    assert res["t"] == pytest.approx(9.067315822018, abs=1e-9)
    assert res["p"] == pytest.approx(0.000820004786888, abs=1e-9)
    assert res["ci_low"] == pytest.approx(0.541161161190, abs=1e-9)
    assert res["ci_high"] == pytest.approx(1.018838838810, abs=1e-9)
    assert res["d_z"] == pytest.approx(4.055026910298, abs=1e-9)
    assert res["d_av"] == pytest.approx(1.914434705328, abs=1e-9)
    assert res["wilcoxon_p"] == pytest.approx(0.0625, abs=1e-9)
    assert res["p_holm"] == pytest.approx(res["p"], abs=1e-12)  # one arm: Holm is the identity
    assert (res["wins"], res["ties"], res["losses"]) == (5, 0, 0)


def test_d_av_matches_pingouin_cohen_d_magnitude():
    base, arm = np.array(BASE), np.array(ARMS["4C"])  # a negative effect: pingouin drops the sign
    res = stats.paired_comparison(frame({"4C": ARMS["4C"]}), "base").iloc[0]
    ping = pg.ttest(arm, base, paired=True)
    assert res["d_av"] < 0
    assert abs(res["d_av"]) == pytest.approx(float(ping["cohen_d"].iloc[0]), abs=1e-9)
    assert res["t"] == pytest.approx(float(ping["T"].iloc[0]), abs=1e-9)


def test_holm_oracle_four_arms():
    res = stats.paired_comparison(frame(ARMS), "base").set_index("arm")
    assert list(res.index) == ["4A", "4B", "4C", "4D"]
    np.testing.assert_allclose(res["p"], [0.2803556434, 0.0008200048, 0.3418509620, 0.0018695076], atol=1e-9)
    np.testing.assert_allclose(res["p_holm"], [0.5607112868, 0.0032800191, 0.5607112868, 0.0056085228],
                               atol=1e-9)
    np.testing.assert_allclose(res["wilcoxon_p"], [0.375, 0.0625, 0.4375, 0.0625], atol=1e-9)
    assert (res.loc["4C", "wins"], res.loc["4C", "losses"]) == (1, 4)


def test_seeds_for_power_matches_statsmodels_solve_power():
    for sd, effect, alpha in [(0.5, 1.0, 0.05), (0.8, 1.0, 0.05), (1.3, 1.0, 0.0125), (0.4, 0.5, 0.05)]:
        nobs = TTestPower().solve_power(effect_size=effect / sd, alpha=alpha, power=0.8, alternative="two-sided")
        assert stats.seeds_for_power(sd, min_effect=effect, alpha=alpha) == math.ceil(nobs)
        n = stats.seeds_for_power(sd, min_effect=effect, alpha=alpha)
        achieved = TTestPower().power(effect_size=effect / sd, nobs=n, alpha=alpha)
        below = TTestPower().power(effect_size=effect / sd, nobs=n - 1, alpha=alpha)
        assert achieved >= 0.8 > below


def test_seeds_for_power_reference_remark():
    # Reference: "sd_diff ~0.5 pp, 80 % power for +1 pp needs ~7 seeds (alpha .05) / ~9 (alpha .0125)".
    # TTestPower reproduces 7 / 9 at sd_diff = 0.5*sqrt(2) ~ 0.71 (each arm's per-seed sd 0.5, uncorrelated);
    # at sd_diff exactly 0.5 it needs 5 / 7.
    assert stats.seeds_for_power(0.5 * math.sqrt(2)) == 7
    assert stats.seeds_for_power(0.5 * math.sqrt(2), alpha=0.0125) == 9
    assert stats.seeds_for_power(0.5) == 5
    assert stats.seeds_for_power(0.5, alpha=0.0125) == 7


def test_seeds_for_power_extremes_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert stats.seeds_for_power(0.01) == 2          # tiny sd: 2 pairs already give the power
        n = stats.seeds_for_power(3.0)
        assert n == math.ceil(TTestPower().solve_power(effect_size=1 / 3, alpha=0.05, power=0.8))
        assert math.isnan(stats.seeds_for_power(0.0))
    # the column in paired_comparison uses the observed sd of the differences
    res = stats.paired_comparison(frame({"4B": ARMS["4B"]}), "base").iloc[0]
    d = np.array(ARMS["4B"]) - np.array(BASE)
    assert res["seeds_for_power"] == stats.seeds_for_power(d.std(ddof=1))


def test_one_pair_gives_nan_statistics_without_warnings():
    df = frame({"a": [59.0, None, None, None, None]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = stats.paired_comparison(df, "base").iloc[0]
    assert res["n_pairs"] == 1
    assert res["mean_diff"] == pytest.approx(0.8)
    for col in ("ci_low", "ci_high", "t", "p", "p_holm", "d_z", "d_av", "wilcoxon_p", "seeds_for_power"):
        assert math.isnan(res[col]), col


def test_zero_sd_of_differences_without_warnings():
    base = [58.0, 58.5, 59.0]
    df = frame({"same": base, "shift": [b + 0.5 for b in base]}, base=base)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = stats.paired_comparison(df, "base").set_index("arm")
    assert math.isnan(res.loc["same", "t"]) and math.isnan(res.loc["same", "p_holm"])
    assert res.loc["same", "wilcoxon_p"] == 1.0 and res.loc["same", "ties"] == 3
    assert res.loc["shift", "mean_diff"] == pytest.approx(0.5)
    assert res.loc["shift", "ci_low"] == res.loc["shift", "ci_high"] == pytest.approx(0.5)
    assert math.isnan(res.loc["shift", "t"]) and math.isnan(res.loc["shift", "d_z"])
    assert res.loc["shift", "wilcoxon_p"] == pytest.approx(2 / 2 ** 3)   # exact: all three signs positive


def test_pairing_by_seed_drops_unpaired_seeds_and_holm_counts_the_untested_arm():
    # arm 'b' misses seed 2, baseline misses nothing; arm 'c' has a single seed -> no p of its own, but it stays
    # in the planned Holm family with p = 1 (issue 13: the family no longer shrinks), so b's p is doubled
    df = frame({"b": [59.0, None, 58.6, 59.9, 59.1], "c": [60.0, None, None, None, None]})
    res = stats.paired_comparison(df, "base").set_index("arm")
    assert res.loc["b", "n_pairs"] == 4
    d = np.array([59.0, 58.6, 59.9, 59.1]) - np.array([58.2, 58.1, 58.9, 58.4])
    assert res.loc["b", "mean_diff"] == pytest.approx(d.mean(), abs=1e-12)
    assert res.loc["b", "p_holm"] == pytest.approx(2 * res.loc["b", "p"], abs=1e-12)
    assert math.isnan(res.loc["c", "p_holm"])
    assert (res["holm_family"] == 2).all()


def test_lower_is_better_counts_wins_the_other_way():
    res = stats.paired_comparison(frame({"4C": ARMS["4C"]}), "base", higher_is_better=False).iloc[0]
    assert (res["wins"], res["losses"]) == (4, 1)


def test_wilcoxon_floor_under_holm():
    assert stats.min_exact_wilcoxon_p(5) == pytest.approx(0.0625)
    assert stats.min_seeds_for_wilcoxon_under_holm(4) == 8      # reference: "under Holm over 4 arms it needs n >= 8"
    assert stats.min_seeds_for_wilcoxon_under_holm(1) == 6


def test_missing_columns_is_an_error():
    with pytest.raises(ValueError, match="value"):
        stats.paired_comparison(pd.DataFrame({"arm": [], "seed": []}), "base")


# ----------------------------------------------------------------------------------- Holm over the planned family
def test_holm_family_issue_oracle_identical_arm_counts_with_p_one():
    # issue 13: baseline [40, 41, 42], an identical arm (t-test undefined) and arm A [41, 41.5, 43.5]
    df = frame({"same": [40, 41, 42], "A": [41, 41.5, 43.5]}, base=[40, 41, 42])
    res = stats.paired_comparison(df, "base").set_index("arm")
    assert res.loc["A", "p"] == pytest.approx(0.0742, abs=5e-5)
    assert f"{res.loc['A', 'p_holm']:.4f}" == "0.1484"                 # not 0.0742
    assert res.loc["A", "p_holm"] == pytest.approx(2 * res.loc["A", "p"], abs=1e-12)
    assert math.isnan(res.loc["same", "p"]) and math.isnan(res.loc["same", "p_holm"])
    assert (res["holm_family"] == 2).all()


def test_a_planned_arm_without_any_run_counts_in_the_family():
    df = frame({"4B": ARMS["4B"]})
    res = stats.paired_comparison(df, "base", arms=["base", "4B", "ghost", "4D"]).set_index("arm")
    assert list(res.index) == ["4B", "ghost", "4D"] and res.loc["ghost", "n_pairs"] == 0
    assert (res["holm_family"] == 3).all()
    assert res.loc["4B", "p_holm"] == pytest.approx(3 * res.loc["4B", "p"], abs=1e-12)   # the smallest of 3


@pytest.mark.parametrize("seed", range(6))
def test_holm_agrees_with_statsmodels(seed):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 0.2, size=rng.integers(1, 9))
    p[rng.integers(0, p.size)] = p[0]                                    # a tie
    np.testing.assert_allclose(stats.holm(p), multipletests(p, method="holm")[1], rtol=0, atol=1e-15)
    # NaN entries (no test) count as p = 1: same as statsmodels on the padded family, NaN for themselves
    with_nan = np.concatenate([p, [np.nan, np.nan]])
    padded = multipletests(np.concatenate([p, [1.0, 1.0]]), method="holm")[1]
    got = stats.holm(with_nan)
    np.testing.assert_allclose(got[:p.size], padded[:p.size], rtol=0, atol=1e-15)
    assert np.isnan(got[p.size:]).all()


# ----------------------------------------------------------------------------------------- exact Wilcoxon
def average_ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (1-based) written out: each value's rank is the mean position of its equal values."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = np.empty(len(values))
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def brute_force_signed_rank_p(d: np.ndarray) -> float:
    """Two-sided p over all 2^n sign flips of d (zeros included: flipping a zero changes nothing)."""
    n = len(d)
    nonzero = d != 0
    ranks = np.zeros(n)
    ranks[nonzero] = average_ranks(np.abs(d[nonzero]))
    observed = ranks[d > 0].sum()
    signs = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1).astype(bool)   # every sign pattern
    t_plus = (signs * ranks).sum(axis=1)
    centre = ranks.sum() / 2
    return float(np.mean(np.abs(t_plus - centre) >= abs(observed - centre) - 1e-9))


def test_wilcoxon_exact_at_14_pairs_with_ties_and_a_zero_equals_brute_force():
    d = np.array([0.3, -0.1, 0.3, 0.0, 0.7, 0.2, -0.3, 0.5, 0.5, 0.1, 0.9, -0.2, 0.4, 0.6])
    assert len(d) == 14 and (d == 0).sum() == 1 and len(np.unique(np.abs(d))) < 13
    p, method = signedrank.signed_rank_test(d)
    expected = brute_force_signed_rank_p(d)
    assert method == "exact"
    assert p == pytest.approx(expected, abs=1e-12)
    # scipy's "auto" switches to the normal approximation here (n > 13 with ties): not the exact value
    assert abs(sps.wilcoxon(d).pvalue - expected) > 1e-4
    res = stats.paired_comparison(frame({"x": list(50 + d)}, base=[50.0] * 14), "base").iloc[0]
    assert res["wilcoxon_method"] == "exact" and res["wilcoxon_p"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("n", [5, 8, 13, 17, 20, 25])
def test_wilcoxon_exact_agrees_with_scipy_without_ties(n):
    rng = np.random.default_rng(n)
    d = rng.permutation(np.arange(1, n + 1)) * 0.13 * rng.choice([-1, 1], size=n)
    p, method = signedrank.signed_rank_test(d)
    assert method == "exact"
    assert p == pytest.approx(sps.wilcoxon(d, method="exact").pvalue, abs=1e-12)


def test_wilcoxon_beyond_the_exact_limit_is_a_labelled_normal_approximation():
    n = signedrank.EXACT_MAX_N + 10
    d = np.round(np.random.default_rng(1).normal(0.3, 1.0, size=n), 1)       # ties after rounding
    p, method = signedrank.signed_rank_test(d)
    assert method == "approx."
    assert p == pytest.approx(sps.wilcoxon(d, method="asymptotic").pvalue, abs=1e-12)
    base = list(range(n))
    res = stats.paired_comparison(frame({"x": [b + x for b, x in zip(base, d)]}, base=base), "base").iloc[0]
    assert res["wilcoxon_method"] == "approx."


# ----------------------------------------------------------------------------------------- power after Holm
def test_seeds_for_power_at_alpha_and_at_the_holm_alpha():
    res = stats.paired_comparison(frame(ARMS), "base").set_index("arm")
    for arm, values in ARMS.items():
        sd = (np.array(values) - np.array(BASE)).std(ddof=1)
        assert res.loc[arm, "sd_diff"] == pytest.approx(sd, abs=1e-12)
        for column, alpha in (("seeds_for_power", 0.05), ("seeds_for_power_holm", 0.05 / 4)):
            n_pingouin = pg.power_ttest(d=1.0 / sd, power=0.8, alpha=alpha, contrast="paired")
            assert res.loc[arm, column] == max(2, math.ceil(n_pingouin)), (arm, column)
        assert res.loc[arm, "seeds_for_power_holm"] >= res.loc[arm, "seeds_for_power"]
    # reference §3: ~7 seeds at alpha .05 / ~9 at alpha .0125 for sd_diff 0.5*sqrt(2); TTestPower independently
    sd = 0.5 * math.sqrt(2)
    assert stats.seeds_for_power(sd, alpha=stats.holm_alpha(0.05, 4)) == 9 == math.ceil(
        TTestPower().solve_power(effect_size=1 / sd, alpha=0.0125, power=0.8))
