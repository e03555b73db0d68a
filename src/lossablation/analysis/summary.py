"""results/summary.md: the plan's results document (§9 Fase 4), generated from the numbers of the tables.

Answers the four questions of plan §6.2 in words, judges each arm's own prediction (plan §3; the config's
``hypothesis`` blocks, :mod:`lossablation.analysis.hypotheses`), repeats the §7 verdict of each arm
(:mod:`lossablation.analysis.verdicts`) and says what to do next (plan §8 Risco 4 when no arm succeeds).

Every statistic comes from the paired-test frame that is written as paired_tests.csv and feeds the tables, rounded
as the tables round it (:func:`lossablation.analysis.hypotheses.stat_text`): a claim of significance is only made
from p_Holm < alpha; when nothing is distinguishable from zero the seeds needed for 80 % power at +1 pp (at alpha
and at Holm's strictest alpha / m) are given from the same frame.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from lossablation.analysis.hypotheses import delta, hypothesis_lines, significant, stat_text, test_row
from lossablation.analysis.runs import Run
from lossablation.analysis.stats import ALPHA
from lossablation.analysis.verdicts import judge

#: §7 outcomes that count as a success when deciding the next step.
SUCCESSES = ("complete success", "partial success")
#: loss kinds that use label smoothing (question 4).
SMOOTHING_KINDS = ("focal_label_smoothing",)


def _others(arms: list[str], baseline: str) -> list[str]:
    return [a for a in arms if a != baseline]


def power_sentence(tests: pd.DataFrame, metric: str, arms: list[str], what: str) -> str:
    """Seeds for 80 % power at +1 pp per arm, at alpha and at the Holm alpha (empty when none is defined)."""
    parts = []
    for arm in arms:
        row = test_row(tests, metric, arm)
        if row is not None and np.isfinite(row["seeds_for_power"]):
            parts.append(f"{arm} {row['seeds_for_power']:.0f} ({row['seeds_for_power_holm']:.0f} after Holm)")
    if not parts:
        return ""
    return (f" At the observed spread of the paired differences, detecting {what} of +1 pp with 80 % power "
            f"would need this many seeds (at α = {ALPHA:g}; in brackets at Holm's strictest threshold): "
            + ", ".join(parts) + ".")


def significance_summary(tests: pd.DataFrame, metric: str, arms: list[str], what: str) -> str:
    """Which arms' Δ is significant after Holm; if none, say so and how many seeds +1 pp would need."""
    sig = [a for a in arms if significant(test_row(tests, metric, a))]
    family = int(tests.loc[tests["metric"] == metric, "holm_family"].max())
    if sig:
        return f" Significant after Holm over {family} arms: " + ", ".join(sig) + "."
    return (f" No arm's Δ {what} is distinguishable from zero after Holm over {family} arms (every p_Holm ≥ "
            f"{ALPHA:g} or untested)." + power_sentence(tests, metric, arms, f"a change in {what}"))


def largest_gain(tests: pd.DataFrame, metric: str, arms: list[str], what: str) -> str:
    """The arm with the largest paired Δ of ``metric``, its statistics, and what is significant."""
    gains = {a: delta(tests, metric, a) for a in arms}
    gains = {a: v for a, v in gains.items() if np.isfinite(v)}
    if not gains:
        return "Not answerable: no arm has a usable seed paired with the baseline."
    best = max(gains, key=gains.get)
    lead = (f"The largest gain in {what} is **{best}**'s" if gains[best] > 0
            else f"No arm gained in {what}; the smallest loss is **{best}**'s")
    return (f"{lead}: Δ = {stat_text(test_row(tests, metric, best))}."
            + significance_summary(tests, metric, arms, what))


def tradeoff_answer(tests: pd.DataFrame, arms: list[str]) -> str:
    """Δ macro precision and recall per arm, and whether they move in opposite directions; same for AB."""
    if not arms:
        return "Not answerable: the config has no arm besides the baseline."
    lines, opposite, sig_opposite = [], [], []
    for arm in arms:
        prec, rec = test_row(tests, "macro_precision", arm), test_row(tests, "macro_recall", arm)
        ab_p, ab_r = test_row(tests, "precision_AB", arm), test_row(tests, "recall_AB", arm)
        lines.append(f"  - {arm}: macro precision Δ = {stat_text(prec)}; macro recall Δ = {stat_text(rec)}; "
                     f"AB precision Δ = {stat_text(ab_p)}; AB recall Δ = {stat_text(ab_r)}.")
        dp, dr = delta(tests, "macro_precision", arm), delta(tests, "macro_recall", arm)
        if np.isfinite(dp) and np.isfinite(dr) and dp * dr < 0:
            opposite.append(arm)
            if significant(prec) and significant(rec):
                sig_opposite.append(arm)
    if sig_opposite:
        verdict = ("Yes: macro precision and recall move in opposite directions, both significantly after Holm, "
                   "for " + ", ".join(sig_opposite) + ".")
    elif opposite:
        verdict = ("Not established: macro precision and recall move in opposite directions for "
                   + ", ".join(opposite) + " (point estimates), but not both significantly after Holm.")
    else:
        verdict = "No: for no arm do macro precision and recall move in opposite directions."
    return verdict + "\n" + "\n".join(lines)


def calibration_answer(tests: pd.DataFrame, cfg_losses: Mapping[str, Mapping], arms: list[str]) -> str:
    """Δ ECE of the arms whose loss uses label smoothing."""
    smoothing = [a for a in arms if cfg_losses[a].get("kind") in SMOOTHING_KINDS]
    if not smoothing:
        return f"Not applicable: no arm uses label smoothing (loss kinds {', '.join(SMOOTHING_KINDS)})."
    parts = []
    for arm in smoothing:
        row = test_row(tests, "ece", arm)
        d = delta(tests, "ece", arm)
        if not np.isfinite(d):
            parts.append(f"{arm}: not answerable (no usable pair)")
        elif d < 0 and significant(row):
            parts.append(f"yes for {arm}: ECE went down significantly, Δ ECE = {stat_text(row)}")
        elif d < 0:
            parts.append(f"not established for {arm}: ECE went down, but not distinguishably from zero after "
                         f"Holm, Δ ECE = {stat_text(row)}")
        else:
            parts.append(f"no for {arm}: ECE did not go down, Δ ECE = {stat_text(row)}")
    text = "; ".join(parts) + "."
    if not any(significant(test_row(tests, "ece", a)) for a in smoothing):
        text += power_sentence(tests, "ece", smoothing, "a change in ECE")
    return text[0].upper() + text[1:]


def questions(tests: pd.DataFrame, cfg_losses: Mapping[str, Mapping], arms: list[str]) -> list[str]:
    return ["## Answers to the plan's questions (§6.2)", "",
            "1. **Which loss brought the largest gain?** " + largest_gain(tests, "macro_f1", arms, "macro F1"),
            "2. **Which loss benefited AB (the hard class) most?** " + largest_gain(tests, "f1_AB", arms, "AB F1"),
            "3. **Is there a precision/recall trade-off?** " + tradeoff_answer(tests, arms),
            "4. **Did label smoothing improve calibration?** " + calibration_answer(tests, cfg_losses, arms), ""]


def verdict_lines(arms, baseline, runs, summary, tests) -> tuple[list[str], dict[str, str]]:
    """One bullet per arm with its §7 verdict and the facts behind it (full reasoning: verdicts.md)."""
    lines, results = [], {}
    for arm in arms:
        result, parts = judge(arm, baseline, runs, summary, tests)
        results[arm] = result
        lines.append(f"- **{arm}: {result}** — " + "; ".join(parts["facts"] + parts["reasons"]) + ".")
    return lines, results


def next_step(results: Mapping[str, str], tests: pd.DataFrame) -> str:
    """The plan's decision: carry a successful arm forward, or §8 Risco 4 when none succeeded."""
    winners = [a for a, r in results.items() if r in SUCCESSES]
    if winners:
        best = max(winners, key=lambda a: delta(tests, "macro_f1", a))
        return (f"Met the plan's success criteria: {', '.join(winners)}. Carry **{best}** (largest Δ macro F1 "
                "among them) forward as the loss of the next experiments; confirm with more seeds where its "
                "gain is not significant after Holm.")
    if all(r == "not assessable" for r in results.values()):
        return "No arm could be assessed (no usable pairs with the baseline): rerun the missing trainings first."
    return ("No loss met the plan's success criteria (plan §8, Risco 4: the loss function is not the "
            "bottleneck). Document the negative result, move on to data augmentation (the next priority), "
            "and consider that the problem lies in the Stage-1 features.")


def summary_markdown(cfg: Mapping[str, Any], runs: list[Run], summary: pd.DataFrame, tests: pd.DataFrame,
                     notes: list[str], qp_text: str) -> str:
    """The whole document. ``qp_text``: one paragraph on performance by QP (or why it was skipped)."""
    arms_all, baseline = list(cfg["losses"]), cfg["baseline"]
    arms = _others(arms_all, baseline)
    verdicts, results = verdict_lines(arms, baseline, runs, summary, tests)
    hyps = hypothesis_lines(cfg["losses"], tests, baseline)
    lines = ["# Results of the loss-function ablation", "",
             f"Baseline **{baseline}**; every number is measured on the TEST split and taken from "
             "paired_tests.csv (the numbers of Tables 1-4), rounded as there. Δ = arm − baseline in percentage "
             "points, paired by seed, with its 95 % t confidence interval; p_Holm: paired t-test, Holm over the "
             f"planned arms; a difference is called significant only when p_Holm < {ALPHA:g}; d_z = mean Δ / "
             "sd Δ.", "", *questions(tests, cfg["losses"], arms),
             "## Hypotheses (plan §3)", "",
             *(hyps or ["No arm of this config carries a `hypothesis` block."]), "",
             "Primary verdicts: supported = the observed Δ macro F1 lies in the predicted range and is significant "
             "after Holm; refuted = the 95 % CI lies wholly outside the range; not established = neither.", "",
             "## Verdicts (plan §7 criteria; details in verdicts.md)", "",
             *(verdicts or ["No arm besides the baseline."]), "",
             "## Next step", "", next_step(results, tests), "",
             "## Performance by QP", "", qp_text, ""]
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)
