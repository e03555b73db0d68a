"""Each arm's own prediction (plan §3; the optional ``losses.<arm>.hypothesis`` block of the config) against its
paired tests.

Primary prediction: Δ test macro F1 vs the baseline inside ``predicted_gain_pp = [low, high]``:

- **supported**: the point estimate lies in [low, high] and the gain is significant after Holm;
- **refuted**: the 95 % CI lies wholly below low or wholly above high;
- **not established**: anything else (the data cannot tell the prediction apart from its alternatives);
- **not assessable**: no paired t-test (fewer than 2 pairs, or zero spread).

Secondary predictions (``secondary``; :data:`SECONDARY_CHECKS` is the one list of them, the config checks names
against it) compare point estimates of paired differences already in paired_tests.csv; when one is a single
Δ (ECE) its significance is stated from its Holm-adjusted p. A comparison of two Δs of one arm is a point-estimate
comparison, said so in the text (no test of the difference of differences is run).
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import pandas as pd

from lossablation.analysis.stats import ALPHA
from lossablation.analysis.tables import fmt_num, fmt_p

Row = pd.Series


def test_row(tests: pd.DataFrame, metric: str, arm: str) -> Row | None:
    """The paired-test row of (metric, arm), None when absent."""
    hit = tests[(tests["metric"] == metric) & (tests["arm"] == arm)]
    return hit.iloc[0] if len(hit) else None


def delta(tests: pd.DataFrame, metric: str, arm: str) -> float:
    row = test_row(tests, metric, arm)
    return float("nan") if row is None else float(row["mean_diff"])


def stat_text(row: Row | None, unit: str = "pp") -> str:
    """'+1.23 pp [95 % CI +0.10, +2.36], p_Holm = 0.0412, d_z = 1.10, n_pairs = 5' (the tables' rounding)."""
    if row is None or not np.isfinite(row["mean_diff"]):
        return "no usable pair with the baseline"
    text = f"{fmt_num(row['mean_diff'], sign=True)} {unit}"
    if np.isfinite(row["p_holm"]):
        text += (f" [95 % CI {fmt_num(row['ci_low'], sign=True)}, {fmt_num(row['ci_high'], sign=True)}], "
                 f"p_Holm = {fmt_p(row['p_holm'])}, d_z = {fmt_num(row['d_z'])}")
    else:
        text += " (no paired t-test: " + ("fewer than 2 pairs" if int(row["n_pairs"]) < 2 else "zero spread") + ")"
    return text + f", n_pairs = {int(row['n_pairs'])}"


def significant(row: Row | None) -> bool:
    return row is not None and np.isfinite(row["p_holm"]) and row["p_holm"] < ALPHA


# ------------------------------------------------------------------------------------------ secondary checks
def _ab_gains_most(tests, arm, arms, baseline):
    others = {a: delta(tests, "f1_AB", a) for a in arms if a != baseline}
    finite = {a: v for a, v in others.items() if np.isfinite(v)}
    if not np.isfinite(others.get(arm, np.nan)):
        return None, "no Δ AB F1 for this arm"
    top = max(finite, key=finite.get)
    ok = finite[arm] == finite[top]
    return ok, (f"Δ AB F1 = {fmt_num(finite[arm], sign=True)} pp, "
                + ("the largest of all arms" if ok else f"below {top}'s {fmt_num(finite[top], sign=True)} pp")
                + " (point estimates)")


def _ab_gain_exceeds_split_and_rect(tests, arm, arms, baseline):
    ab, split, rect = (delta(tests, f"f1_{c}", arm) for c in ("AB", "SPLIT", "RECT"))
    if not all(np.isfinite([ab, split, rect])):
        return None, "per-class Δ F1 not available"
    ok = ab > split and ab > rect
    return ok, (f"Δ AB F1 = {fmt_num(ab, sign=True)} pp vs Δ SPLIT F1 = {fmt_num(split, sign=True)} pp and "
                f"Δ RECT F1 = {fmt_num(rect, sign=True)} pp (point estimates)")


def _recall_gains_more_than_precision(tests, arm, arms, baseline):
    rec, prec = delta(tests, "macro_recall", arm), delta(tests, "macro_precision", arm)
    if not (np.isfinite(rec) and np.isfinite(prec)):
        return None, "Δ macro precision/recall not available"
    return rec > prec, (f"Δ macro recall = {fmt_num(rec, sign=True)} pp vs Δ macro precision = "
                        f"{fmt_num(prec, sign=True)} pp (point estimates)")


def _ece_decreases(tests, arm, arms, baseline):
    row = test_row(tests, "ece", arm)
    if row is None or not np.isfinite(row["mean_diff"]):
        return None, "no Δ ECE for this arm"
    down = row["mean_diff"] < 0
    claim = ("significantly" if significant(row) else "not significantly") if np.isfinite(row["p_holm"]) else "untested"
    return bool(down), f"Δ ECE = {stat_text(row)} ({'down' if down else 'not down'}, {claim} after Holm)"


#: secondary prediction name -> (what it says, check(tests, arm, arms, baseline) -> (held?, text with numbers))
SECONDARY_CHECKS: dict[str, tuple[str, Callable]] = {
    "ab_gains_most": ("AB F1 gains more with this loss than with any other arm", _ab_gains_most),
    "ab_gain_exceeds_split_and_rect": ("the AB F1 gain exceeds the SPLIT and RECT F1 gains",
                                       _ab_gain_exceeds_split_and_rect),
    "recall_gains_more_than_precision": ("macro recall gains more than macro precision",
                                         _recall_gains_more_than_precision),
    "ece_decreases": ("ECE goes down", _ece_decreases),
}


# ------------------------------------------------------------------------------------------ verdicts
def primary_verdict(row: Row | None, low: float, high: float) -> str:
    """supported / refuted / not established / not assessable (module docstring)."""
    if row is None or not np.isfinite(row["p_holm"]):
        return "not assessable"
    if row["ci_high"] < low or row["ci_low"] > high:
        return "refuted"
    if low <= row["mean_diff"] <= high and row["p_holm"] < ALPHA:
        return "supported"
    return "not established"


def hypothesis_lines(cfg_losses: Mapping[str, Mapping], tests: pd.DataFrame, baseline: str) -> list[str]:
    """One Markdown bullet per arm that carries a hypothesis block (config order)."""
    arms = list(cfg_losses)
    lines = []
    for arm, spec in cfg_losses.items():
        hyp = spec.get("hypothesis")
        if not hyp or arm == baseline:
            continue
        low, high = hyp["predicted_gain_pp"]
        row = test_row(tests, "macro_f1", arm)
        result = primary_verdict(row, low, high)
        text = (f"- **{hyp['id']} ({arm}): {result}.** Predicted Δ macro F1 {fmt_num(low, sign=True)} to "
                f"{fmt_num(high, sign=True)} pp; observed {stat_text(row)}.")
        if hyp.get("secondary"):
            said, check = SECONDARY_CHECKS[hyp["secondary"]]
            held, detail = check(tests, arm, arms, baseline)
            outcome = "not assessable" if held is None else ("holds" if held else "does not hold")
            text += f" Secondary prediction, {said}: {outcome} ({detail})."
        lines.append(text)
    return lines
