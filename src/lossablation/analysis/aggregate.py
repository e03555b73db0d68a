"""Runs -> runs.csv -> paired statistics -> tables, figures and verdicts.

Reads ``RUNS/<arm>/seed<seed>/`` for every arm and seed of the config (:mod:`lossablation.analysis.runs`, which
checks every file). A run is *usable* when its status is ``completed`` and it has test metrics; a missing folder
(failed job under ``--keep-going``) or a ``diverged`` run is listed in runs.csv, excluded from every statistic, and
named in the tables' notes. Pairing is by seed, so an excluded run removes that seed from its arm's comparison
only (the baseline's missing seeds leave every comparison); each row shows its ``n_pairs``. Holm corrects over
every non-baseline arm of the config (the planned family), whether or not it could be tested.

All statistics are on the TEST split (val selected the checkpoint; reference §5), in percent. Verdicts:
:mod:`lossablation.analysis.verdicts`; the results document summary.md: :mod:`lossablation.analysis.summary`;
performance by QP (Table 5, Figure 7): :mod:`lossablation.analysis.qp`.

Nothing is half-written: every input is read and checked, every output rendered in memory (tables, CSVs,
verdicts, figures), and only then are the files written, each atomically.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from lossablation.analysis import figures, qp, stats, tables
from lossablation.analysis.pooling import check_poolable
from lossablation.analysis.runs import Run, read_runs, runs_table, test_values
from lossablation.analysis.summary import summary_markdown
from lossablation.analysis.verdicts import summary_value, verdicts_markdown
from lossablation.classes import STAGE2_CLASSES
from lossablation.io import atomic_write_bytes

PERCENT_METRICS = ("macro_f1", "macro_precision", "macro_recall", "accuracy", "ece", "mce")
#: metric -> higher is better, for the paired tests (ECE: lower is better)
TESTED_METRICS = {"macro_f1": True, "accuracy": True, "f1_SPLIT": True, "f1_RECT": True, "f1_AB": True,
                  "ece": False, "macro_precision": True, "macro_recall": True, "precision_AB": True,
                  "recall_AB": True}
#: the trade-off table (Table 4): tested metric -> label
TRADEOFF_METRICS = {"macro_precision": "macro precision", "macro_recall": "macro recall",
                    "precision_AB": "AB precision", "recall_AB": "AB recall"}
TABLE_STEMS = ("table1_overall", "table2_per_class", "table3_calibration", "table4_tradeoffs", qp.TABLE_STEM)
FIGURE_STEMS = ("fig1_per_seed_f1", "fig2_paired_diffs", "fig4_reliability", "fig5_confidence",
                "fig6_learning_curves", qp.FIGURE_STEM)


# ------------------------------------------------------------------------------------------------ outputs
def output_files(arms: list[str]) -> dict[str, list[str]]:
    """Every file :func:`aggregate` writes, relative to OUT, grouped by report caption stem."""
    out = {"summary": ["summary.md"], "runs": ["runs.csv"], "paired_tests": ["paired_tests.csv"],
           "verdicts": ["verdicts.md"]}
    for stem in TABLE_STEMS:
        out[stem] = [f"tables/{stem}.{s}" for s in tables.TABLE_SUFFIXES]
    for stem in FIGURE_STEMS[:2]:
        out[stem] = [f"figures/{stem}.{s}" for s in figures.FIG_SUFFIXES]
    out["fig3_confusion"] = [f"figures/fig3_confusion_{a}.{s}" for a in arms for s in figures.FIG_SUFFIXES]
    for stem in FIGURE_STEMS[2:]:
        out[stem] = [f"figures/{stem}.{s}" for s in figures.FIG_SUFFIXES]
    return out


def write_outputs(out_dir: Path, files: Mapping[str, str | bytes]) -> None:
    """Write the rendered files (relative path -> content), each atomically, after everything was computed."""
    for name, content in files.items():
        atomic_write_bytes(out_dir / name, content.encode("utf-8") if isinstance(content, str) else content)


# ---------------------------------------------------------------------------------------------- analysis
def analyse(tidy: pd.DataFrame, runs: list[Run], arms: list[str], baseline: str,
            min_effect: float = 1.0) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, pd.DataFrame]]:
    """(summary: metric/arm/n/mean/sd, tests: metric + stats.COLUMNS, per-metric value frames)."""
    usable = {(r.arm, r.seed) for r in runs if r.usable}
    values, summaries, tests = {}, [], []
    metrics = list(PERCENT_METRICS) + [f"{k}_{c}" for k in ("f1", "precision", "recall") for c in STAGE2_CLASSES]
    for metric in metrics:
        values[metric] = test_values(tidy, usable, metric)
        summaries.append(stats.describe(values[metric], arms).assign(metric=metric))
    for metric, higher in TESTED_METRICS.items():
        res = stats.paired_comparison(values[metric], baseline, arms=arms, min_effect=min_effect,
                                      higher_is_better=higher)
        tests.append(res.assign(metric=metric))
    summary = pd.concat(summaries, ignore_index=True)[["metric", "arm", "n", "mean", "sd"]]
    test_frame = pd.concat(tests, ignore_index=True)
    return summary, test_frame[["metric", *stats.COLUMNS]], values


def _untested_reason(row) -> str:
    n = int(row["n_pairs"])
    if n == 0:
        return "no usable run paired with the baseline"
    return f"{n} pair" if n == 1 else "sd of the differences 0"


def holm_family_note(tests: pd.DataFrame) -> list[str]:
    """Names the arms Holm counted with p = 1 (no t-test possible), with the reason and the metrics concerned."""
    untested = tests[~np.isfinite(tests["p"].astype(float))]
    if untested.empty:
        return []
    n_metrics = tests["metric"].nunique()
    where: dict[tuple[str, str], list[str]] = {}
    for _, row in untested.iterrows():
        where.setdefault((row["arm"], _untested_reason(row)), []).append(row["metric"])
    parts = [f"{arm} ({why}; {'every tested metric' if len(metrics) == n_metrics else ', '.join(metrics)})"
             for (arm, why), metrics in where.items()]
    return [f"Holm corrects over the {int(tests['holm_family'].max())} planned arms of the config per metric; "
            "without a paired t-test, counted with p = 1: " + "; ".join(parts) + "."]


def build_notes(runs: list[Run], tests: pd.DataFrame, arms: list[str], baseline: str) -> list[str]:
    """Warnings that must travel with the numbers (tables, verdicts, stderr)."""
    notes = []
    excluded = [f"{r.arm} seed {r.seed} ({r.status})" for r in runs if not r.usable]
    if excluded:
        notes.append("Excluded runs (not in any mean or test; their seeds leave the pairing): "
                     + ", ".join(excluded) + ".")
    f1 = tests[tests["metric"] == "macro_f1"]
    n_pairs = f1["n_pairs"].to_numpy(dtype=int) if len(f1) else np.array([0])
    n_arms = max(len(arms) - 1, 1)
    if int(n_pairs.max()) < 2:
        notes.append(f"At most {int(n_pairs.max())} paired seed(s) per arm: no paired test was run "
                     "(a paired t-test needs at least 2 pairs); the tables are descriptive only.")
    else:
        few = [a for a, n in zip(f1["arm"], n_pairs) if n < 2]
        if few:
            notes.append(f"No paired test for {', '.join(few)}: fewer than 2 seeds paired with the baseline.")
    notes += holm_family_note(tests)
    need = stats.min_seeds_for_wilcoxon_under_holm(n_arms, stats.ALPHA)
    if int(n_pairs.min()) < need:
        n = int(n_pairs.min())
        notes.append(f"Fewer than {need} paired seeds (min n_pairs = {n}): an exact Wilcoxon signed-rank test "
                     f"cannot pass Holm over {n_arms} arms (its smallest two-sided p is 2/2^n = "
                     f"{stats.min_exact_wilcoxon_p(n):.4g} > {stats.ALPHA}/{n_arms}); use >= 10 seeds.")
    on_cpu = [f"{r.arm}/seed{r.seed}" for r in runs
              if r.metrics and (r.metrics.get("provenance") or {}).get("gpu_requested_but_cpu_used")]
    if on_cpu:
        notes.append(f"{len(on_cpu)} run(s) trained on CPU although a GPU was requested "
                     f"(provenance.gpu_requested_but_cpu_used): {', '.join(on_cpu)}.")
    if any(r.metrics and (r.metrics.get("provenance") or {}).get("block_level_split") for r in runs):
        notes.append("The dataset has no source/sequence identifiers: its numbers come from a block-level split "
                     "(blocks of one video can sit on both sides), which flatters every arm alike.")
    return notes


# ----------------------------------------------------------------------------------------------- figures
def mean_confusion(arm_runs: list[Run]) -> np.ndarray | None:
    """Row-normalise each run's test confusion matrix (rows = true class), then average over runs."""
    mats = []
    for run in arm_runs:
        cm = np.asarray(run.metrics["test"]["confusion_matrix"], dtype=float)
        rows = cm.sum(axis=1, keepdims=True)
        mats.append(np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0))
    return np.mean(mats, axis=0) if mats else None


def _paired_diff_frame(values: pd.DataFrame, arms: list[str], baseline: str) -> pd.DataFrame:
    diffs = []
    for arm in arms:
        if arm != baseline:
            seeds, x, y = stats.paired_values(values, baseline, arm)
            diffs += [{"arm": arm, "seed": s, "diff": a - b} for s, a, b in zip(seeds, x, y)]
    return pd.DataFrame(diffs, columns=["arm", "seed", "diff"])


def _history_frame(usable: list[Run]) -> pd.DataFrame:
    """Validation macro F1 (%) per epoch of every usable run with a history."""
    frames = [r.history.assign(arm=r.arm, seed=r.seed, val_macro_f1=100.0 * r.history["val_macro_f1"])
              for r in usable if r.history is not None]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["arm", "epoch", "val_macro_f1"])


def render_figures(arms, baseline, runs, summary, tests, values, n_bins) -> dict[str, bytes]:
    """Every figure of the sweep, rendered in memory: ``{"figures/<file>": bytes}``."""
    usable = [r for r in runs if r.usable]
    files = dict(figures.per_seed_f1(values["macro_f1"], arms))
    others = [a for a in arms if a != baseline]
    files.update(figures.paired_diffs(_paired_diff_frame(values["macro_f1"], arms, baseline),
                                      tests[tests["metric"] == "macro_f1"], others))
    for arm in arms:
        arm_runs = [r for r in usable if r.arm == arm]
        files.update(figures.confusion(mean_confusion(arm_runs), arm, len(arm_runs), f"fig3_confusion_{arm}"))
    # runs with non-finite test probabilities are flagged unstable (runs.nonfinite_losses) and not pooled here
    preds = {arm: [r.predictions for r in usable if r.arm == arm and r.predictions is not None
                   and np.isfinite(r.predictions[0]).all()] for arm in arms}
    ece = {a: (summary_value(summary, "ece", a, "mean"), summary_value(summary, "ece", a)) for a in arms}
    files.update(figures.reliability(preds, ece, arms, n_bins=n_bins))
    files.update(figures.confidence_hist(preds, arms))
    files.update(figures.learning_curves(_history_frame(usable), arms))
    qp_values, qp_tests, reason = qp.qp_analysis(runs, arms, baseline)
    files.update(qp.figure_qp(qp_values, qp_tests, arms, baseline, reason))
    return {f"figures/{name}": content for name, content in files.items()}


def qp_paragraph(levels: list[int], reason: str | None) -> str:
    """summary.md's paragraph on performance by QP."""
    if reason:
        return reason
    return (f"Table 5 and Figure 7 give test macro F1 and AB F1 on the blocks of each QP level "
            f"({', '.join(map(str, levels))}) per arm, with the paired Δ vs the baseline.")


# ----------------------------------------------------------------------------------------------- driver
def aggregate(cfg: Mapping[str, Any], runs_dir: str | Path, out_dir: str | Path, *,
              make_figures: bool = True, min_effect: float = 1.0) -> dict[str, Any]:
    """Write summary.md, runs.csv, paired_tests.csv, tables, figures and verdicts.md under ``out_dir``; return
    the frames.

    A damaged run file or a runs folder without any run of the config raises :class:`LossAblationError` before
    anything is written.
    """
    arms, baseline = list(cfg["losses"]), cfg["baseline"]
    runs = read_runs(cfg, runs_dir, keep_predictions=make_figures)
    check_poolable(runs, cfg)
    tidy = runs_table(runs)
    summary, tests, values = analyse(tidy, runs, arms, baseline, min_effect=min_effect)
    notes = build_notes(runs, tests, arms, baseline)
    n_seeds = len(cfg["seeds"])
    n_runs = {a: f"{sum(r.usable for r in runs if r.arm == a)}/{n_seeds}" for a in arms}
    n_bins = int(cfg["calibration_bins"])
    qp_values, qp_tests, qp_reason = qp.qp_analysis(runs, arms, baseline, min_effect=min_effect)
    built = [tables.table_overall(summary, tests, arms, baseline, n_runs, notes),
             tables.table_per_class(summary, tests, arms, baseline, n_runs, notes),
             tables.table_calibration(summary, tests, arms, baseline, n_runs, notes, n_bins=n_bins),
             tables.table_deltas("table4_tradeoffs", "Table 4. Precision/recall trade-offs",
                                 "Paired differences of macro precision, macro recall, and AB precision and recall",
                                 TRADEOFF_METRICS, tests, arms, baseline, n_runs, notes),
             qp.table_qp(qp_values, qp_tests, arms, baseline, notes, qp_reason)]
    levels = sorted(int(q) for q in qp_values["qp"].unique())
    files: dict[str, str | bytes] = {
        "summary.md": summary_markdown(cfg, runs, summary, tests, notes, qp_paragraph(levels, qp_reason)),
        "runs.csv": tidy.to_csv(index=False, float_format="%.10g"),
        "paired_tests.csv": tests.to_csv(index=False, float_format="%.10g"),
        "verdicts.md": verdicts_markdown(arms, baseline, runs, summary, tests, notes)}
    for table in built:
        files.update({f"tables/{name}": text for name, text in tables.render_table(table).items()})
    if make_figures:
        files.update(render_figures(arms, baseline, runs, summary, tests, values, n_bins))
    for note in notes:
        print(f"lossablation aggregate: warning: {note}", file=sys.stderr)
    write_outputs(Path(out_dir), files)
    return {"runs": runs, "tidy": tidy, "summary": summary, "tests": tests, "notes": notes, "tables": built}


def draw_sweep_figures(cfg: Mapping[str, Any], runs_dir: str | Path, out_dir: str | Path, *,
                       min_effect: float = 1.0) -> None:
    """Only the figures of :func:`aggregate` (the workflow's ``figures`` rule), from the same analysis."""
    arms, baseline = list(cfg["losses"]), cfg["baseline"]
    runs = read_runs(cfg, runs_dir)
    summary, tests, values = analyse(runs_table(runs), runs, arms, baseline, min_effect=min_effect)
    write_outputs(Path(out_dir), render_figures(arms, baseline, runs, summary, tests, values,
                                                int(cfg["calibration_bins"])))
