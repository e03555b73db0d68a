"""Runs -> runs.csv -> paired statistics -> tables, figures and verdicts.

Reads ``RUNS/<arm>/seed<seed>/metrics.json`` for every arm and seed of the config (docs/design.md). A run is
*usable* when its status is ``completed`` and it has test metrics; a missing folder (failed job under
``--keep-going``) or a ``diverged`` run is listed in runs.csv, excluded from every statistic, and named in the
tables' notes. Pairing is by seed, so an excluded run removes that seed from its arm's comparison only (the
baseline's missing seeds leave every comparison); each row shows its ``n_pairs``.

All statistics are on the TEST split (val selected the checkpoint; reference §5), in percent.

Verdict rules (plan §7, with the test split standing in for the plan's "Val F1"; Δ = paired mean difference of
test macro F1 vs the baseline in pp; "AB up" = paired mean difference of AB F1 > 0):

- **unstable**: any of the arm's configured seeds diverged, or the sd of its test macro F1 over usable seeds is
  more than twice the baseline's (both with >= 2 usable seeds and baseline sd > 0);
- **failure**: unstable, or Δ < +0.5 pp, or AB F1 not up;
- **complete success**: Δ > +2.0 pp and mean AB F1 > 20 %;
- **partial success**: Δ > +1.0 pp (and AB F1 up);
- **inconclusive**: the rest (+0.5 <= Δ <= +1.0 pp, AB up, stable) - the plan names no outcome for it;
- **not assessable**: no usable pair with the baseline.

A verdict is about point estimates, as the plan's criteria are; whether Δ is significant is stated only from the
Holm-adjusted p.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from lossablation.classes import STAGE2_CLASSES
from lossablation.analysis import figures, stats, tables
from lossablation.errors import LossAblationError
from lossablation.io import atomic_write_text

PERCENT_METRICS = ("macro_f1", "macro_precision", "macro_recall", "accuracy", "ece", "mce")
#: metric -> higher is better, for the paired tests (ECE: lower is better)
TESTED_METRICS = {"macro_f1": True, "accuracy": True, "f1_SPLIT": True, "f1_RECT": True, "f1_AB": True,
                  "ece": False}
ALPHA = 0.05
COMPLETE_DELTA, PARTIAL_DELTA, FAILURE_DELTA, COMPLETE_AB_F1 = 2.0, 1.0, 0.5, 20.0
UNSTABLE_SD_RATIO = 2.0
TABLE_STEMS = ("table1_overall", "table2_per_class", "table3_calibration")
FIGURE_STEMS = ("fig1_per_seed_f1", "fig2_paired_diffs", "fig4_reliability", "fig5_confidence",
                "fig6_learning_curves")


@dataclass
class Run:
    arm: str
    seed: int
    status: str                      # completed | diverged | missing
    folder: Path
    metrics: dict | None = None      # the parsed metrics.json

    @property
    def usable(self) -> bool:
        return self.status == "completed" and bool(self.metrics) and self.metrics.get("test") is not None


# ------------------------------------------------------------------------------------------------ outputs
def output_files(arms: list[str]) -> dict[str, list[str]]:
    """Every file :func:`aggregate` writes, relative to OUT, grouped by report caption stem."""
    out = {"runs": ["runs.csv"], "paired_tests": ["paired_tests.csv"], "verdicts": ["verdicts.md"]}
    for stem in TABLE_STEMS:
        out[stem] = [f"tables/{stem}.{s}" for s in tables.TABLE_SUFFIXES]
    for stem in FIGURE_STEMS[:2]:
        out[stem] = [f"figures/{stem}.{s}" for s in figures.FIG_SUFFIXES]
    out["fig3_confusion"] = [f"figures/fig3_confusion_{a}.{s}" for a in arms for s in figures.FIG_SUFFIXES]
    for stem in FIGURE_STEMS[2:]:
        out[stem] = [f"figures/{stem}.{s}" for s in figures.FIG_SUFFIXES]
    return out


# ----------------------------------------------------------------------------------------------- reading
def run_folder(runs_dir: str | Path, arm: str, seed: int) -> Path:
    return Path(runs_dir) / arm / f"seed{seed}"


def read_run(runs_dir: str | Path, arm: str, seed: int) -> Run:
    """One run; ``missing`` when metrics.json does not exist. A malformed file is a user error."""
    folder = run_folder(runs_dir, arm, seed)
    path = folder / "metrics.json"
    if not path.is_file():
        return Run(arm, seed, "missing", folder)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LossAblationError(f"{path}: not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})") from None
    if not isinstance(data, dict):
        raise LossAblationError(f"{path}: expected a JSON object")
    status = data.get("status")
    if status not in ("completed", "diverged"):
        raise LossAblationError(f"{path}: status: expected 'completed' or 'diverged', got {status!r}")
    if data.get("arm", arm) != arm or data.get("seed", seed) != seed:
        raise LossAblationError(f"{path}: arm/seed {data.get('arm')!r}/{data.get('seed')!r} do not match the "
                                f"folder ({arm!r}/seed{seed})")
    for split in ("val", "test"):
        block = data.get(split)
        if status == "completed" and not isinstance(block, dict):
            raise LossAblationError(f"{path}: {split}: a completed run needs its metrics")
        if isinstance(block, dict):
            for key in ("macro_f1", "accuracy", "ece", "per_class", "confusion_matrix"):
                if key not in block:
                    raise LossAblationError(f"{path}: {split}.{key}: missing")
    return Run(arm, seed, status, folder, data)


def read_runs(cfg: Mapping[str, Any], runs_dir: str | Path) -> list[Run]:
    return [read_run(runs_dir, arm, int(seed)) for arm in cfg["losses"] for seed in cfg["seeds"]]


def flatten_metrics(block: Mapping[str, Any]) -> dict[str, float]:
    """METRICS (design.md) -> {metric name: value}: scalars, ``f1_SPLIT``..., ``confusion_SPLIT_RECT``..."""
    flat = {k: float(v) for k, v in block.items()
            if k not in ("per_class", "confusion_matrix") and isinstance(v, (int, float)) and v is not None}
    for cls, values in (block.get("per_class") or {}).items():
        for k, v in values.items():
            flat[f"{k}_{cls}"] = float(v)
    cm = block.get("confusion_matrix")
    if cm is not None:
        for i, true in enumerate(STAGE2_CLASSES):
            for j, pred in enumerate(STAGE2_CLASSES):
                flat[f"confusion_{true}_{pred}"] = float(cm[i][j])
    return flat


def runs_table(runs: list[Run]) -> pd.DataFrame:
    """Tidy runs.csv: one row per run, split and metric (values as in metrics.json, fractions); a run without
    metrics (missing, or diverged before any finite epoch) gets one row with empty split/metric."""
    rows = []
    for run in runs:
        blocks = [(s, run.metrics.get(s)) for s in ("val", "test")] if run.metrics else []
        blocks = [(s, b) for s, b in blocks if isinstance(b, dict)]
        if not blocks:
            rows.append({"arm": run.arm, "seed": run.seed, "split": "", "status": run.status, "metric": "",
                         "value": np.nan})
        for split, block in blocks:
            for metric, value in flatten_metrics(block).items():
                rows.append({"arm": run.arm, "seed": run.seed, "split": split, "status": run.status,
                             "metric": metric, "value": value})
    return pd.DataFrame(rows, columns=["arm", "seed", "split", "status", "metric", "value"])


def test_values(tidy: pd.DataFrame, usable: set[tuple[str, int]], metric: str) -> pd.DataFrame:
    """arm, seed, value (percent) of one test metric over the usable runs."""
    sel = tidy[(tidy["split"] == "test") & (tidy["metric"] == metric)]
    sel = sel[np.array([(a, s) in usable for a, s in zip(sel["arm"], sel["seed"])], dtype=bool)]
    return pd.DataFrame({"arm": sel["arm"].to_numpy(), "seed": sel["seed"].to_numpy(),
                         "value": 100.0 * sel["value"].to_numpy(dtype=float)})


# ---------------------------------------------------------------------------------------------- analysis
def analyse(tidy: pd.DataFrame, runs: list[Run], arms: list[str], baseline: str,
            min_effect: float = 1.0) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, pd.DataFrame]]:
    """(summary: metric/arm/n/mean/sd, tests: metric + stats.COLUMNS, per-metric value frames)."""
    usable = {(r.arm, r.seed) for r in runs if r.usable}
    values, summaries, tests = {}, [], []
    metrics = list(PERCENT_METRICS) + [f"f1_{c}" for c in STAGE2_CLASSES]
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
    need = stats.min_seeds_for_wilcoxon_under_holm(n_arms, ALPHA)
    if int(n_pairs.min()) < need:
        n = int(n_pairs.min())
        notes.append(f"Fewer than {need} paired seeds (min n_pairs = {n}): an exact Wilcoxon signed-rank test "
                     f"cannot pass Holm over {n_arms} arms (its smallest two-sided p is 2/2^n = "
                     f"{stats.min_exact_wilcoxon_p(n):.4g} > {ALPHA}/{n_arms}); use >= 10 seeds.")
    if any(r.metrics and (r.metrics.get("provenance") or {}).get("block_level_split") for r in runs):
        notes.append("The dataset has no source/sequence identifiers: its numbers come from a block-level split "
                     "(blocks of one video can sit on both sides), which flatters every arm alike.")
    return notes


def _sd(summary: pd.DataFrame, metric: str, arm: str, column: str = "sd") -> float:
    hit = summary[(summary["metric"] == metric) & (summary["arm"] == arm)]
    return float(hit[column].iloc[0]) if len(hit) else float("nan")


def verdict(arm: str, baseline: str, runs: list[Run], summary: pd.DataFrame, tests: pd.DataFrame) -> tuple[str, list[str]]:
    """(verdict, reasons with the numbers) for one arm; rules in the module docstring."""
    def test(metric):
        hit = tests[(tests["metric"] == metric) & (tests["arm"] == arm)]
        return hit.iloc[0]

    f1, ab = test("macro_f1"), test("f1_AB")
    delta, ab_delta = float(f1["mean_diff"]), float(ab["mean_diff"])
    ab_mean = _sd(summary, "f1_AB", arm, "mean")
    reasons = []
    diverged = [r.seed for r in runs if r.arm == arm and r.status == "diverged"]
    sd_arm, sd_base = _sd(summary, "macro_f1", arm), _sd(summary, "macro_f1", baseline)
    unstable = bool(diverged)
    if diverged:
        reasons.append(f"diverged seed(s): {', '.join(map(str, diverged))}")
    if np.isfinite(sd_arm) and np.isfinite(sd_base) and sd_base > 0 and sd_arm > UNSTABLE_SD_RATIO * sd_base:
        unstable = True
        reasons.append(f"sd of macro F1 over seeds {sd_arm:.2f} pp > {UNSTABLE_SD_RATIO:g} × baseline's "
                       f"{sd_base:.2f} pp")
    if int(f1["n_pairs"]) == 0 or not np.isfinite(delta):
        return "not assessable", reasons + ["no usable seed paired with the baseline"]
    facts = [f"Δ macro F1 = {delta:+.2f} pp (n_pairs = {int(f1['n_pairs'])})",
             f"AB F1 = {ab_mean:.2f} % (Δ AB F1 = {ab_delta:+.2f} pp)"]
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
    return result, facts + reasons + [significance_sentence(f1)]


def significance_sentence(row) -> str:
    if not np.isfinite(row["p_holm"]):
        why = "fewer than 2 pairs" if int(row["n_pairs"]) < 2 else "sd of the differences is 0"
        return f"no paired t-test ({why}); nothing is claimed significant"
    ci = f"95 % CI [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}] pp"
    word = "significant" if row["p_holm"] < ALPHA else "not significant"
    return (f"{word} after Holm (paired t-test p = {row['p']:.4f}, p_Holm = {row['p_holm']:.4f}; {ci}; "
            f"d_z = {row['d_z']:.2f}; exact Wilcoxon p = {row['wilcoxon_p']:.4f}; "
            f"seeds for 80 % power at +1 pp: {row['seeds_for_power']:.0f})")


def verdicts_markdown(arms, baseline, runs, summary, tests, notes) -> str:
    base_f1 = _sd(summary, "macro_f1", baseline, "mean")
    lines = ["# Verdicts per arm (plan §7 criteria)", "",
             f"Baseline **{baseline}**: test macro F1 {base_f1:.2f} ± {_sd(summary, 'macro_f1', baseline):.2f} %, "
             f"AB F1 {_sd(summary, 'f1_AB', baseline, 'mean'):.2f} %.", "",
             "Criteria, applied to the TEST split (validation selected the checkpoint), Δ = paired mean "
             "difference vs the baseline: complete success Δ > +2.0 pp and AB F1 > 20 %; partial success "
             "Δ > +1.0 pp and AB F1 up; failure Δ < +0.5 pp, or AB F1 not up, or unstable; otherwise "
             "inconclusive. Unstable = any diverged seed, or sd of macro F1 over seeds > 2 × the baseline's. "
             "Verdicts rest on point estimates; significance is only claimed from the Holm-adjusted p.", ""]
    for arm in arms:
        if arm == baseline:
            continue
        result, reasons = verdict(arm, baseline, runs, summary, tests)
        lines.append(f"- **{arm}: {result}** — " + "; ".join(reasons) + ".")
    if notes:
        lines += ["", *[f"Note: {n}" for n in notes]]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- figures
def _predictions(run: Run) -> tuple[np.ndarray, np.ndarray] | None:
    path = run.folder / "predictions.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            return np.asarray(data["test_probs"], dtype=float), np.asarray(data["test_labels"])
    except (KeyError, ValueError, OSError) as exc:
        raise LossAblationError(f"{path}: cannot read test_probs/test_labels ({exc})") from None


def _history(run: Run) -> pd.DataFrame | None:
    path = run.folder / "history.csv"
    if not path.is_file():
        return None
    frame = pd.read_csv(path)
    if not {"epoch", "val_macro_f1"} <= set(frame.columns):
        raise LossAblationError(f"{path}: needs columns epoch and val_macro_f1")
    return frame.assign(arm=run.arm, seed=run.seed, val_macro_f1=100.0 * frame["val_macro_f1"])


def mean_confusion(arm_runs: list[Run]) -> np.ndarray | None:
    """Row-normalise each run's test confusion matrix (rows = true class), then average over runs."""
    mats = []
    for run in arm_runs:
        cm = np.asarray(run.metrics["test"]["confusion_matrix"], dtype=float)
        rows = cm.sum(axis=1, keepdims=True)
        mats.append(np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0))
    return np.mean(mats, axis=0) if mats else None


def draw_figures(out_dir: Path, arms, baseline, runs, summary, tests, values, n_bins) -> None:
    fig_dir = out_dir / "figures"
    usable = [r for r in runs if r.usable]
    figures.per_seed_f1(values["macro_f1"], arms, fig_dir)
    diffs = []
    f1 = values["macro_f1"]
    for arm in arms:
        if arm != baseline:
            seeds, x, y = stats.paired_values(f1, baseline, arm)
            diffs += [{"arm": arm, "seed": s, "diff": a - b} for s, a, b in zip(seeds, x, y)]
    f1_tests = tests[tests["metric"] == "macro_f1"]
    others = [a for a in arms if a != baseline]
    figures.paired_diffs(pd.DataFrame(diffs, columns=["arm", "seed", "diff"]), f1_tests, others, fig_dir)
    for arm in arms:
        arm_runs = [r for r in usable if r.arm == arm]
        figures.confusion(mean_confusion(arm_runs), arm, len(arm_runs), fig_dir, f"fig3_confusion_{arm}")
    preds = {arm: [p for r in usable if r.arm == arm and (p := _predictions(r)) is not None] for arm in arms}
    ece = {a: (_sd(summary, "ece", a, "mean"), _sd(summary, "ece", a)) for a in arms}
    figures.reliability(preds, ece, arms, fig_dir, n_bins=n_bins)
    figures.confidence_hist(preds, arms, fig_dir)
    hist = [h for r in usable if (h := _history(r)) is not None]
    history = pd.concat(hist, ignore_index=True) if hist else pd.DataFrame(columns=["arm", "epoch", "val_macro_f1"])
    figures.learning_curves(history, arms, fig_dir)


# ----------------------------------------------------------------------------------------------- driver
def aggregate(cfg: Mapping[str, Any], runs_dir: str | Path, out_dir: str | Path, *,
              make_figures: bool = True, min_effect: float = 1.0) -> dict[str, Any]:
    """Write runs.csv, paired_tests.csv, tables, figures and verdicts.md under ``out_dir``; return the frames."""
    out_dir = Path(out_dir)
    arms, baseline = list(cfg["losses"]), cfg["baseline"]
    runs = read_runs(cfg, runs_dir)
    tidy = runs_table(runs)
    summary, tests, values = analyse(tidy, runs, arms, baseline, min_effect=min_effect)
    notes = build_notes(runs, tests, arms, baseline)
    for note in notes:
        print(f"lossablation aggregate: warning: {note}", file=sys.stderr)
    atomic_write_text(out_dir / "runs.csv", tidy.to_csv(index=False, float_format="%.10g"))
    atomic_write_text(out_dir / "paired_tests.csv", tests.to_csv(index=False, float_format="%.10g"))
    n_seeds = len(cfg["seeds"])
    n_runs = {a: f"{sum(r.usable for r in runs if r.arm == a)}/{n_seeds}" for a in arms}
    n_bins = int(cfg.get("calibration_bins", 15))
    built = [tables.table_overall(summary, tests, arms, baseline, n_runs, notes),
             tables.table_per_class(summary, tests, arms, baseline, n_runs, notes),
             tables.table_calibration(summary, tests, arms, baseline, n_runs, notes, n_bins=n_bins)]
    for table in built:
        tables.write_table(table, out_dir / "tables")
    atomic_write_text(out_dir / "verdicts.md", verdicts_markdown(arms, baseline, runs, summary, tests, notes))
    if make_figures:
        draw_figures(out_dir, arms, baseline, runs, summary, tests, values, n_bins)
    return {"runs": runs, "tidy": tidy, "summary": summary, "tests": tests, "notes": notes, "tables": built}


def draw_sweep_figures(cfg: Mapping[str, Any], runs_dir: str | Path, out_dir: str | Path, *,
                       min_effect: float = 1.0) -> None:
    """Only the figures of :func:`aggregate` (the workflow's ``figures`` rule), from the same analysis."""
    arms, baseline = list(cfg["losses"]), cfg["baseline"]
    runs = read_runs(cfg, runs_dir)
    summary, tests, values = analyse(runs_table(runs), runs, arms, baseline, min_effect=min_effect)
    draw_figures(Path(out_dir), arms, baseline, runs, summary, tests, values, int(cfg.get("calibration_bins", 15)))

