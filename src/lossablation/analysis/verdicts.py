"""The plan's §7 verdict per arm, with the numbers behind it (verdicts.md).

Rules (the test split stands in for the plan's "Val F1"; Δ = paired mean difference of test macro F1 vs the
baseline in pp; "AB up" = paired mean difference of AB F1 > 0):

- **unstable** (plan §7.3 "NaN losses, divergence"): any of the arm's configured seeds diverged (the trainer stops
  on a non-finite training or validation loss), or a run recorded a non-finite loss
  (:attr:`lossablation.analysis.runs.Run.nonfinite`). The sd of test macro F1 over seeds relative to the
  baseline's is reported for information only: at 3 seeds a ratio above 2 happens by chance for about one arm
  in five, and the plan does not name it;
- **failure**: unstable, or Δ < +0.5 pp, or AB F1 not up;
- **complete success**: Δ > +2.0 pp and mean AB F1 > 20 %;
- **partial success**: Δ > +1.0 pp (and AB F1 up);
- **inconclusive**: the rest (+0.5 <= Δ <= +1.0 pp, AB up, stable) - the plan names no outcome for it;
- **not assessable**: no usable pair with the baseline, and no sign of instability (an arm whose every seed
  diverged is a failure).

A verdict is about point estimates, as the plan's criteria are; whether Δ is significant is stated only from the
Holm-adjusted p.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lossablation.analysis.runs import Run
from lossablation.analysis.stats import ALPHA, holm_alpha

COMPLETE_DELTA, PARTIAL_DELTA, FAILURE_DELTA, COMPLETE_AB_F1 = 2.0, 1.0, 0.5, 20.0


def summary_value(summary: pd.DataFrame, metric: str, arm: str, column: str = "sd") -> float:
    """One cell of the descriptive summary (metric, arm -> n / mean / sd); NaN when absent."""
    hit = summary[(summary["metric"] == metric) & (summary["arm"] == arm)]
    return float(hit[column].iloc[0]) if len(hit) else float("nan")


def instability(arm: str, runs: list[Run]) -> list[str]:
    """The plan's evidence of instability for one arm (empty: stable)."""
    reasons = []
    diverged = [r.seed for r in runs if r.arm == arm and r.status == "diverged"]
    if diverged:
        reasons.append(f"diverged seed(s): {', '.join(map(str, diverged))}")
    for run in runs:
        if run.arm == arm and run.nonfinite:
            reasons.append(f"non-finite loss in seed {run.seed}: {'; '.join(run.nonfinite)}")
    return reasons


def sd_ratio_fact(arm: str, baseline: str, summary: pd.DataFrame) -> list[str]:
    """The sd of macro F1 over seeds against the baseline's, as information (not a criterion)."""
    sd_arm, sd_base = summary_value(summary, "macro_f1", arm), summary_value(summary, "macro_f1", baseline)
    if not (np.isfinite(sd_arm) and np.isfinite(sd_base) and sd_base > 0):
        return []
    return [f"sd of macro F1 over seeds {sd_arm:.2f} pp = {sd_arm / sd_base:.1f} × the baseline's {sd_base:.2f} pp "
            "(information, not a criterion)"]


def verdict(arm: str, baseline: str, runs: list[Run], summary: pd.DataFrame,
            tests: pd.DataFrame) -> tuple[str, list[str]]:
    """(verdict, reasons with the numbers) for one arm; rules in the module docstring."""
    result, parts = judge(arm, baseline, runs, summary, tests)
    return result, parts["facts"] + parts["information"] + parts["reasons"] + parts["significance"]


def judge(arm: str, baseline: str, runs: list[Run], summary: pd.DataFrame,
          tests: pd.DataFrame) -> tuple[str, dict[str, list[str]]]:
    """(verdict, {"facts", "information", "reasons", "significance"}: lists of phrases); :func:`verdict` joins
    them in that order."""
    def test(metric):
        hit = tests[(tests["metric"] == metric) & (tests["arm"] == arm)]
        return hit.iloc[0]

    f1, ab = test("macro_f1"), test("f1_AB")
    delta, ab_delta = float(f1["mean_diff"]), float(ab["mean_diff"])
    ab_mean = summary_value(summary, "f1_AB", arm, "mean")
    unstable = instability(arm, runs)
    reasons = list(unstable)
    if int(f1["n_pairs"]) == 0 or not np.isfinite(delta):
        unpaired = "no usable seed paired with the baseline"
        return (("failure", {"facts": [], "information": [], "reasons": ["unstable", *reasons, unpaired],
                              "significance": []})
                if unstable else ("not assessable", {"facts": [], "information": [], "reasons": [unpaired], "significance": []}))
    facts = [f"Δ macro F1 = {delta:+.2f} pp (n_pairs = {int(f1['n_pairs'])})",
             f"AB F1 = {ab_mean:.2f} % (Δ AB F1 = {ab_delta:+.2f} pp)"]
    sd_fact = sd_ratio_fact(arm, baseline, summary)
    ab_up = np.isfinite(ab_delta) and ab_delta > 0
    if unstable:
        result = "failure"
        reasons.insert(0, "unstable")
    elif delta < FAILURE_DELTA:
        result = "failure"
        reasons.append(f"Δ < +{FAILURE_DELTA} pp")
    elif not ab_up:
        result = "failure"
        reasons.append("AB F1 did not go up")
    elif delta > COMPLETE_DELTA and ab_mean > COMPLETE_AB_F1:
        result = "complete success"
        reasons.append(f"Δ > +{COMPLETE_DELTA} pp and AB F1 > {COMPLETE_AB_F1:g} %")
    elif delta > PARTIAL_DELTA:
        result = "partial success"
        reasons.append(f"Δ > +{PARTIAL_DELTA} pp and AB F1 up"
                       + (f" (AB F1 <= {COMPLETE_AB_F1:g} %, so not complete)" if delta > COMPLETE_DELTA else ""))
    else:
        result = "inconclusive"
        reasons.append(f"+{FAILURE_DELTA} <= Δ <= +{PARTIAL_DELTA} pp, AB F1 up, stable: between the plan's "
                       "failure and partial-success criteria")
    return result, {"facts": facts, "information": sd_fact, "reasons": reasons,
                    "significance": [significance_sentence(f1)]}


def power_text(row) -> str:
    """Seeds for 80 % power at +1 pp, at alpha and at Holm's strictest alpha / m."""
    m = int(row["holm_family"])
    return (f"seeds for 80 % power at +1 pp: {row['seeds_for_power']:.0f} at α = {ALPHA:g}, "
            f"{row['seeds_for_power_holm']:.0f} at the Holm α = {ALPHA:g}/{m} = {holm_alpha(ALPHA, m):.4g}")


def significance_sentence(row) -> str:
    m = int(row["holm_family"])
    if not np.isfinite(row["p_holm"]):
        why = "fewer than 2 pairs" if int(row["n_pairs"]) < 2 else "sd of the differences is 0"
        return (f"no paired t-test ({why}), counted with p = 1 in the Holm family of {m}; nothing is claimed "
                "significant")
    ci = f"95 % CI [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}] pp"
    word = "significant" if row["p_holm"] < ALPHA else "not significant"
    return (f"{word} after Holm over {m} arms (paired t-test p = {row['p']:.4f}, p_Holm = {row['p_holm']:.4f}; "
            f"{ci}; d_z = {row['d_z']:.2f}; {row['wilcoxon_method']} Wilcoxon p = {row['wilcoxon_p']:.4f}; "
            f"{power_text(row)})")


def verdicts_markdown(arms, baseline, runs, summary, tests, notes) -> str:
    base_f1 = summary_value(summary, "macro_f1", baseline, "mean")
    lines = ["# Verdicts per arm (plan §7 criteria)", "",
             f"Baseline **{baseline}**: test macro F1 {base_f1:.2f} ± "
             f"{summary_value(summary, 'macro_f1', baseline):.2f} %, "
             f"AB F1 {summary_value(summary, 'f1_AB', baseline, 'mean'):.2f} %.", "",
             "Criteria, applied to the TEST split (validation selected the checkpoint), Δ = paired mean "
             "difference vs the baseline: complete success Δ > +2.0 pp and AB F1 > 20 %; partial success "
             "Δ > +1.0 pp and AB F1 up; failure Δ < +0.5 pp, or AB F1 not up, or unstable; otherwise "
             "inconclusive. Unstable (plan §7.3) = a diverged seed or a non-finite loss in any run of the arm; "
             "the sd of macro F1 over seeds against the baseline's is given as information only. "
             "Verdicts rest on point estimates; significance is only claimed from the Holm-adjusted p.", ""]
    for arm in arms:
        if arm == baseline:
            continue
        result, reasons = verdict(arm, baseline, runs, summary, tests)
        lines.append(f"- **{arm}: {result}** — " + "; ".join(reasons) + ".")
    if notes:
        lines += ["", *[f"Note: {n}" for n in notes]]
    return "\n".join(lines) + "\n"
