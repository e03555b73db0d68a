"""Result tables: Markdown, CSV and LaTeX (pandas Styler, booktabs) from the aggregation's frames.

A :class:`Table` holds the display cells (strings, one row per arm), the raw numbers (the CSV: full precision,
for re-analysis), which cells are the best of their column (bold), the caption (naming the test) and notes
(warnings that must travel with the numbers). Percentages are shown with 2 decimals.

Inputs, built by :mod:`lossablation.analysis.aggregate` (all values in percent / percentage points):

- ``summary``: columns ``metric, arm, n, mean, sd`` (descriptive, usable runs of each arm);
- ``tests``: columns ``metric`` + :data:`lossablation.analysis.stats.COLUMNS` (paired tests vs the baseline).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lossablation.analysis.stats import ALPHA
from lossablation.classes import STAGE2_CLASSES
from lossablation.io import atomic_write_text

SIG_MARK = "†"
DASH = "—"


@dataclass
class Table:
    stem: str
    title: str
    caption: str
    cells: pd.DataFrame            # display strings; first column "Arm"
    numbers: pd.DataFrame          # the CSV
    best: dict[str, list[str]] = field(default_factory=dict)   # column -> arms whose cell is bold
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- formatting
def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float, np.floating, np.integer)) and math.isfinite(float(x))


def fmt_num(x, digits: int = 2, sign: bool = False) -> str:
    if not _finite(x):
        return DASH
    return f"{float(x):+.{digits}f}" if sign else f"{float(x):.{digits}f}"


def fmt_p(p) -> str:
    """p-values with 4 decimals; below 1e-4 as '<0.0001'."""
    if not _finite(p):
        return DASH
    return "<0.0001" if p < 1e-4 else f"{float(p):.4f}"


def fmt_mean_sd(mean, sd) -> str:
    if not _finite(mean):
        return DASH
    return fmt_num(mean) if not _finite(sd) else f"{fmt_num(mean)} ± {fmt_num(sd)}"


def sig_mark(p_holm, alpha: float = ALPHA) -> str:
    return SIG_MARK if _finite(p_holm) and p_holm < alpha else ""


def fmt_delta_ci(row) -> str:
    """'+0.78 [+0.54, +1.02]†' ; without a CI (fewer than 2 pairs) just the difference."""
    if row is None or not _finite(row["mean_diff"]):
        return DASH
    text = fmt_num(row["mean_diff"], sign=True)
    if _finite(row["ci_low"]) and _finite(row["ci_high"]):
        text += f" [{fmt_num(row['ci_low'], sign=True)}, {fmt_num(row['ci_high'], sign=True)}]"
    return text + sig_mark(row["p_holm"])


def fmt_delta(row) -> str:
    if row is None or not _finite(row["mean_diff"]):
        return DASH
    return fmt_num(row["mean_diff"], sign=True) + sig_mark(row["p_holm"])


# ------------------------------------------------------------------------------------------------- lookups
def _stat(summary: pd.DataFrame, metric: str, arm: str, column: str) -> float:
    hit = summary[(summary["metric"] == metric) & (summary["arm"] == arm)]
    return float(hit[column].iloc[0]) if len(hit) else float("nan")


def _test_row(tests: pd.DataFrame, metric: str, arm: str):
    hit = tests[(tests["metric"] == metric) & (tests["arm"] == arm)]
    return hit.iloc[0] if len(hit) else None


def _family(tests: pd.DataFrame, metric: str) -> int:
    """Holm family size used for ``metric`` (every planned non-baseline arm)."""
    sizes = tests.loc[tests["metric"] == metric, "holm_family"]
    return int(sizes.max()) if len(sizes) else 0


def _best_arms(values: dict[str, float], higher_is_better: bool, digits: int = 2) -> list[str]:
    """Arms whose value, as displayed, equals the best one (ties all bold)."""
    shown = {a: round(v, digits) for a, v in values.items() if _finite(v)}
    if not shown:
        return []
    target = max(shown.values()) if higher_is_better else min(shown.values())
    return [a for a, v in shown.items() if v == target]


def _arms_label(arms: list[str], baseline: str) -> list[str]:
    return [f"{a} (baseline)" if a == baseline else a for a in arms]


# ---------------------------------------------------------------------------------------------- the tables
def _test_caption(baseline: str, family: int, metric_text: str) -> str:
    return (f"{metric_text} on the test split, mean ± sd over seeds. Δ = arm − baseline ({baseline}) in "
            f"percentage points, paired by seed, with its 95 % t confidence interval; p: two-sided paired "
            f"t-test (scipy ttest_rel); p_Holm: Holm-adjusted over the family of {family} planned arms (every "
            f"non-baseline arm of the config; an arm without a paired t-test counts with p = 1); "
            f"{SIG_MARK}: p_Holm < {ALPHA:g}. Best value of each column in bold.")


def table_overall(summary, tests, arms, baseline, n_runs, notes) -> Table:
    """Table 1: macro F1 (primary) with the paired test, plus macro precision/recall and accuracy."""
    cols = ["Arm", "Runs", "Macro F1 (%)", "Δ macro F1 (pp) [95 % CI]", "p", "p_Holm", "d_z",
            "Macro precision (%)", "Macro recall (%)", "Accuracy (%)", "n_pairs"]
    cells, numbers = [], []
    for arm, label in zip(arms, _arms_label(arms, baseline)):
        t = _test_row(tests, "macro_f1", arm)
        cells.append([label, n_runs[arm],
                      fmt_mean_sd(_stat(summary, "macro_f1", arm, "mean"), _stat(summary, "macro_f1", arm, "sd")),
                      fmt_delta_ci(t), fmt_p(None if t is None else t["p"]),
                      fmt_p(None if t is None else t["p_holm"]), fmt_num(None if t is None else t["d_z"]),
                      *[fmt_mean_sd(_stat(summary, m, arm, "mean"), _stat(summary, m, arm, "sd"))
                        for m in ("macro_precision", "macro_recall", "accuracy")],
                      DASH if t is None else str(int(t["n_pairs"]))])
        rec = {"arm": arm, "runs": n_runs[arm]}
        for m in ("macro_f1", "macro_precision", "macro_recall", "accuracy"):
            rec[f"{m}_mean"] = _stat(summary, m, arm, "mean")
            rec[f"{m}_sd"] = _stat(summary, m, arm, "sd")
        for c in ("n_pairs", "mean_diff", "ci_low", "ci_high", "t", "p", "p_holm", "d_z", "d_av", "wilcoxon_p",
                  "wins", "ties", "losses", "seeds_for_power", "wilcoxon_method", "sd_diff", "holm_family",
                  "seeds_for_power_holm"):
            rec[c] = np.nan if t is None else t[c]
        numbers.append(rec)
    best = {"Macro F1 (%)": _best_arms({a: _stat(summary, "macro_f1", a, "mean") for a in arms}, True),
            "Δ macro F1 (pp) [95 % CI]": _best_arms(
                {a: (np.nan if (t := _test_row(tests, "macro_f1", a)) is None else t["mean_diff"])
                 for a in arms if a != baseline}, True)}
    for m, col in (("macro_precision", "Macro precision (%)"), ("macro_recall", "Macro recall (%)"),
                   ("accuracy", "Accuracy (%)")):
        best[col] = _best_arms({a: _stat(summary, m, a, "mean") for a in arms}, True)
    return Table("table1_overall", "Table 1. Overall test performance",
                 _test_caption(baseline, _family(tests, "macro_f1"), "Macro F1 (primary metric), macro "
                               "precision, macro recall and accuracy") + " d_z = mean Δ / sd Δ.",
                 pd.DataFrame(cells, columns=cols), pd.DataFrame(numbers), _label_best(best, arms, baseline),
                 list(notes))


def table_per_class(summary, tests, arms, baseline, n_runs, notes) -> Table:
    """Table 2: per-class F1 (SPLIT, RECT, AB) with Δ and p_Holm for each class."""
    cols = ["Arm", "Runs"]
    for c in STAGE2_CLASSES:
        cols += [f"{c} F1 (%)", f"Δ {c} (pp)", f"p_Holm {c}"]
    cols.append("n_pairs")
    cells, numbers, best = [], [], {}
    for arm, label in zip(arms, _arms_label(arms, baseline)):
        row, rec = [label, n_runs[arm]], {"arm": arm, "runs": n_runs[arm]}
        n_pairs = None
        for c in STAGE2_CLASSES:
            m = f"f1_{c}"
            t = _test_row(tests, m, arm)
            row += [fmt_mean_sd(_stat(summary, m, arm, "mean"), _stat(summary, m, arm, "sd")), fmt_delta(t),
                    fmt_p(None if t is None else t["p_holm"])]
            rec.update({f"{m}_mean": _stat(summary, m, arm, "mean"), f"{m}_sd": _stat(summary, m, arm, "sd")})
            for k in ("mean_diff", "ci_low", "ci_high", "p", "p_holm", "d_z", "wilcoxon_p", "wilcoxon_method"):
                rec[f"{m}_{k}"] = np.nan if t is None else t[k]
            if t is not None:
                n_pairs = int(t["n_pairs"])
        row.append(DASH if n_pairs is None else str(n_pairs))
        rec["n_pairs"] = np.nan if n_pairs is None else n_pairs
        cells.append(row)
        numbers.append(rec)
    for c in STAGE2_CLASSES:
        m = f"f1_{c}"
        best[f"{c} F1 (%)"] = _best_arms({a: _stat(summary, m, a, "mean") for a in arms}, True)
        best[f"Δ {c} (pp)"] = _best_arms(
            {a: (np.nan if (t := _test_row(tests, m, a)) is None else t["mean_diff"]) for a in arms if a != baseline},
            True)
    return Table("table2_per_class", "Table 2. Per-class test F1",
                 _test_caption(baseline, _family(tests, "f1_AB"), "Per-class F1 (SPLIT, RECT, AB)")
                 + " Holm is applied separately within each class.",
                 pd.DataFrame(cells, columns=cols), pd.DataFrame(numbers), _label_best(best, arms, baseline),
                 list(notes))


def table_calibration(summary, tests, arms, baseline, n_runs, notes, n_bins: int = 15) -> Table:
    """Table 3: ECE (with the paired test; lower is better) and MCE."""
    cols = ["Arm", "Runs", "ECE (%)", "Δ ECE (pp) [95 % CI]", "p_Holm", "MCE (%)", "n_pairs"]
    cells, numbers = [], []
    for arm, label in zip(arms, _arms_label(arms, baseline)):
        t = _test_row(tests, "ece", arm)
        cells.append([label, n_runs[arm], fmt_mean_sd(_stat(summary, "ece", arm, "mean"),
                                                      _stat(summary, "ece", arm, "sd")),
                      fmt_delta_ci(t), fmt_p(None if t is None else t["p_holm"]),
                      fmt_mean_sd(_stat(summary, "mce", arm, "mean"), _stat(summary, "mce", arm, "sd")),
                      DASH if t is None else str(int(t["n_pairs"]))])
        rec = {"arm": arm, "runs": n_runs[arm]}
        for m in ("ece", "mce"):
            rec[f"{m}_mean"] = _stat(summary, m, arm, "mean")
            rec[f"{m}_sd"] = _stat(summary, m, arm, "sd")
        for c in ("n_pairs", "mean_diff", "ci_low", "ci_high", "t", "p", "p_holm", "d_z", "wilcoxon_p",
                  "wilcoxon_method"):
            rec[f"ece_{c}" if c != "n_pairs" else c] = np.nan if t is None else t[c]
        numbers.append(rec)
    best = {"ECE (%)": _best_arms({a: _stat(summary, "ece", a, "mean") for a in arms}, False),
            "MCE (%)": _best_arms({a: _stat(summary, "mce", a, "mean") for a in arms}, False),
            "Δ ECE (pp) [95 % CI]": _best_arms(
                {a: (np.nan if (t := _test_row(tests, "ece", a)) is None else t["mean_diff"])
                 for a in arms if a != baseline}, False)}
    caption = (_test_caption(baseline, _family(tests, "ece"), f"Top-label calibration: expected (ECE) and "
                             f"maximum (MCE) calibration error, {n_bins} equal-width bins,")
               .replace("Best value of each column in bold.", "Lower is better; best value of each column in bold."))
    return Table("table3_calibration", "Table 3. Calibration on the test split", caption,
                 pd.DataFrame(cells, columns=cols), pd.DataFrame(numbers), _label_best(best, arms, baseline),
                 list(notes))


def table_deltas(stem: str, title: str, what: str, metrics: dict[str, str], tests, arms, baseline, n_runs,
                 notes) -> Table:
    """A table of paired differences only: per metric (name -> label) Δ [95 % CI] and p_Holm, one row per arm."""
    cols = ["Arm", "Runs"]
    for label in metrics.values():
        cols += [f"Δ {label} (pp) [95 % CI]", f"p_Holm {label}"]
    cols.append("n_pairs")
    cells, numbers = [], []
    for arm, label in zip(arms, _arms_label(arms, baseline)):
        row, rec, n_pairs = [label, n_runs[arm]], {"arm": arm, "runs": n_runs[arm]}, None
        for m in metrics:
            t = _test_row(tests, m, arm)
            row += [fmt_delta_ci(t), fmt_p(None if t is None else t["p_holm"])]
            for k in ("mean_diff", "ci_low", "ci_high", "p", "p_holm", "d_z", "holm_family"):
                rec[f"{m}_{k}"] = np.nan if t is None else t[k]
            n_pairs = n_pairs if t is None else int(t["n_pairs"])
        row.append(DASH if n_pairs is None else str(n_pairs))
        rec["n_pairs"] = np.nan if n_pairs is None else n_pairs
        cells.append(row)
        numbers.append(rec)
    family = _family(tests, next(iter(metrics)))
    return Table(stem, title, _test_caption(baseline, family, what).replace(
        ", mean ± sd over seeds.", ".").replace(" Best value of each column in bold.", " Holm is applied "
                                                "separately for each metric."),
        pd.DataFrame(cells, columns=cols), pd.DataFrame(numbers), {}, list(notes))


def _label_best(best: dict[str, list[str]], arms: list[str], baseline: str) -> dict[str, list[str]]:
    """Translate arm names to the displayed labels (the baseline row carries a suffix)."""
    labels = dict(zip(arms, _arms_label(arms, baseline)))
    return {col: [labels[a] for a in winners] for col, winners in best.items()}


# ------------------------------------------------------------------------------------------------- writers
def _bold_mask(table: Table) -> pd.DataFrame:
    mask = pd.DataFrame(False, index=table.cells.index, columns=table.cells.columns)
    for col, labels in table.best.items():
        mask.loc[table.cells["Arm"].isin(labels), col] = True
    return mask


def to_markdown(table: Table) -> str:
    """GitHub-flavoured Markdown: title + caption, the table (best cells in **bold**), then the notes."""
    mask = _bold_mask(table)

    def cell(text, bold):
        text = str(text).replace("|", "\\|")
        return f"**{text}**" if bold and text != DASH else text

    header = "| " + " | ".join(table.cells.columns) + " |"
    rule = "|" + "|".join(["---"] + ["---:"] * (table.cells.shape[1] - 1)) + "|"
    body = ["| " + " | ".join(cell(v, mask.iat[i, j]) for j, v in enumerate(row)) + " |"
            for i, row in enumerate(table.cells.itertuples(index=False))]
    lines = [f"**{table.title}.** {table.caption}", "", header, rule, *body]
    if table.notes:
        lines += ["", *[f"Note: {n}" for n in table.notes]]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_UNICODE = {"±": r"$\pm$", SIG_MARK: r"$^{\dagger}$", "Δ": r"$\Delta$", "−": r"$-$", DASH: "--",
                  "<": r"$<$", ">": r"$>$", "≥": r"$\geq$", "≤": r"$\leq$", "×": r"$\times$"}


def latex_escape(text: str) -> str:
    """Escape LaTeX specials, then map the few Unicode symbols the tables use to math-mode commands."""
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))
    return "".join(_LATEX_UNICODE.get(ch, ch) for ch in out)


def to_latex(table: Table) -> str:
    """booktabs table via pandas Styler; bold best cells (\\textbf), notes appended to the caption."""
    mask = _bold_mask(table)
    shown = table.cells.map(latex_escape)
    shown.columns = [latex_escape(c) for c in table.cells.columns]
    mask.columns = shown.columns
    styler = shown.style.hide(axis="index")
    styler = styler.apply(lambda _: mask.map(lambda b: "textbf:--rwrap;" if b else ""), axis=None)
    caption = latex_escape(f"{table.title}. {table.caption}" + "".join(f" Note: {n}" for n in table.notes))
    return styler.to_latex(hrules=True, caption=caption, label=f"tab:{table.stem}", position_float="centering",
                           column_format="l" + "r" * (shown.shape[1] - 1))


def to_html(table: Table) -> str:
    """Standalone HTML (for the Snakemake report)."""
    mask = _bold_mask(table)
    # a fixed uuid: Styler otherwise draws a random table id, and reruns would not give identical files
    styler = table.cells.style.hide(axis="index").set_uuid(table.stem)
    styler = styler.apply(lambda _: mask.map(lambda b: "font-weight: bold" if b else ""), axis=None)
    styler = styler.set_caption(f"<b>{table.title}.</b> {table.caption}")
    notes = "".join(f"<p>Note: {n}</p>" for n in table.notes)
    return f"<html><body>{styler.to_html()}{notes}</body></html>\n"


TABLE_SUFFIXES = ("md", "csv", "tex", "html")


def render_table(table: Table) -> dict[str, str]:
    """``{"<stem>.md": text, ".csv", ".tex", ".html"}``: every format of one table, nothing written."""
    texts = {"md": to_markdown(table), "csv": table.numbers.to_csv(index=False, float_format="%.10g"),
             "tex": to_latex(table), "html": to_html(table)}
    return {f"{table.stem}.{suffix}": texts[suffix] for suffix in TABLE_SUFFIXES}


def write_table(table: Table, out_dir: str | Path) -> list[Path]:
    """Write ``<stem>.md/.csv/.tex/.html`` atomically; return the paths."""
    paths = []
    for name, text in render_table(table).items():
        atomic_write_text(Path(out_dir) / name, text)
        paths.append(Path(out_dir) / name)
    return paths
