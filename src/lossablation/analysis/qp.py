"""Performance by quantizer level (QP): test macro F1 and AB F1 per QP level per arm, with the paired Δ vs the
baseline (Table 5, Figure 7).

Each run's predictions.npz carries ``test_qp`` (the block's npz ``cq``, else ``qindex``; -1 unknown), scored per
level by :func:`lossablation.analysis.runs.qp_scores`. The paired tests are those of the main tables
(:func:`lossablation.analysis.stats.paired_comparison`), one family per (QP level, metric): Holm over the planned
arms within a level. With fewer than two known levels (v7 folders: their ``qps`` is constant 80 and not read;
npz without ``cq``/``qindex``) the table holds only a note saying why, and the figure says so: the declared files
exist either way.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from lossablation.analysis import figures, stats
from lossablation.analysis.runs import Run
from lossablation.analysis.tables import DASH, Table, fmt_delta_ci, fmt_mean_sd, fmt_p

TABLE_STEM, FIGURE_STEM = "table5_qp", "fig7_qp"
QP_METRICS = {"macro_f1": "Macro F1", "f1_AB": "AB F1"}


def qp_values(runs: list[Run]) -> pd.DataFrame:
    """Tidy qp, metric, arm, seed, value (percent), n over the usable runs that carry per-QP scores."""
    frames = []
    for run in runs:
        if run.usable and run.qp_scores is not None and len(run.qp_scores):
            long = run.qp_scores.melt(id_vars=["qp", "n"], value_vars=list(QP_METRICS), var_name="metric")
            frames.append(long.assign(arm=run.arm, seed=run.seed))
    columns = ["qp", "n", "metric", "value", "arm", "seed"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def skip_reason(values: pd.DataFrame, runs: list[Run]) -> str | None:
    """Why there is no QP table (None: there is one)."""
    levels = sorted(values["qp"].unique()) if len(values) else []
    if len(levels) >= 2:
        return None
    if levels:
        return (f"Skipped: every test block has the same QP level ({int(levels[0])}), so performance cannot be "
                "broken down by QP.")
    if any(r.usable and r.test_qp is not None for r in runs):
        return ("Skipped: the dataset carries no QP level per block (no npz cq/qindex; a v7 folder's qps, "
                "constant 80 in the users' files, is not read), so performance cannot be broken down by QP.")
    return "Skipped: the runs' predictions.npz carry no test_qp (made by an older version), so no QP breakdown."


def qp_tests(values: pd.DataFrame, arms: list[str], baseline: str, min_effect: float = 1.0) -> pd.DataFrame:
    """Paired tests vs the baseline per (QP level, metric): qp, metric + stats.COLUMNS."""
    out = []
    for (level, metric), sel in values.groupby(["qp", "metric"], sort=True):
        res = stats.paired_comparison(sel[["arm", "seed", "value"]], baseline, arms=arms, min_effect=min_effect)
        out.append(res.assign(qp=int(level), metric=metric))
    columns = ["qp", "metric", *stats.COLUMNS]
    return pd.concat(out, ignore_index=True)[columns] if out else pd.DataFrame(columns=columns)


def _describe(values: pd.DataFrame, level: int, metric: str, arm: str) -> tuple[float, float, int]:
    v = values[(values["qp"] == level) & (values["metric"] == metric) & (values["arm"] == arm)]
    x = v["value"].astype(float).to_numpy()
    blocks = int(v["n"].iloc[0]) if len(v) else 0
    return (float(x.mean()) if x.size else np.nan, float(x.std(ddof=1)) if x.size > 1 else np.nan, blocks)


def table_qp(values: pd.DataFrame, tests: pd.DataFrame, arms: list[str], baseline: str, notes: list[str],
             reason: str | None) -> Table:
    """Table 5: one row per (QP level, arm); or, when skipped, no rows and the reason as a note."""
    cols = ["QP", "Arm", "Blocks"]
    for label in QP_METRICS.values():
        cols += [f"{label} (%)", f"Δ {label} (pp) [95 % CI]", f"p_Holm {label}"]
    cols.append("n_pairs")
    cells, numbers = [], []
    levels = [] if reason else sorted(int(q) for q in values["qp"].unique())
    for level in levels:
        for arm in arms:
            row, rec = [str(level), f"{arm} (baseline)" if arm == baseline else arm, DASH], {"qp": level, "arm": arm}
            n_pairs = DASH
            for metric, label in QP_METRICS.items():
                mean, sd, blocks = _describe(values, level, metric, arm)
                hit = tests[(tests["qp"] == level) & (tests["metric"] == metric) & (tests["arm"] == arm)]
                t = hit.iloc[0] if len(hit) else None
                row[2] = str(blocks)
                row += [fmt_mean_sd(mean, sd), fmt_delta_ci(t), fmt_p(None if t is None else t["p_holm"])]
                rec.update({"blocks": blocks, f"{metric}_mean": mean, f"{metric}_sd": sd})
                for k in ("mean_diff", "ci_low", "ci_high", "p", "p_holm", "d_z", "holm_family"):
                    rec[f"{metric}_{k}"] = np.nan if t is None else t[k]
                if t is not None:
                    n_pairs = str(int(t["n_pairs"]))
            row.append(n_pairs)
            cells.append(row)
            numbers.append(rec)
    family = max(len(arms) - 1, 1)
    caption = (f"Test macro F1 and AB F1 on the blocks of each QP level (npz cq, else qindex), mean ± sd over "
               f"seeds; Δ = arm − baseline ({baseline}) in percentage points, paired by seed, with its 95 % t "
               f"confidence interval; p_Holm: paired t-test, Holm over the {family} planned arms within each QP "
               f"level and metric; †: p_Holm < {stats.ALPHA:g}. Blocks = test blocks at that level.")
    return Table(TABLE_STEM, "Table 5. Performance by QP level", caption, pd.DataFrame(cells, columns=cols),
                 pd.DataFrame(numbers), {}, ([reason] if reason else []) + list(notes))


def figure_qp(values: pd.DataFrame, tests: pd.DataFrame, arms: list[str], baseline: str,
              reason: str | None) -> dict[str, bytes]:
    """Figure 7: per metric, mean per QP level per arm (top) and the paired Δ with its 95 % CI (bottom)."""
    figures._theme()
    fig, axes = plt.subplots(2, len(QP_METRICS), figsize=(10, 6.5), squeeze=False, constrained_layout=True)
    if reason:
        for ax in axes.ravel():
            figures._empty(ax, "no QP breakdown")
        fig.suptitle(reason, fontsize="small", wrap=True)
        return figures._render(fig, FIGURE_STEM)
    palette = dict(zip(arms, plt.get_cmap("tab10").colors))
    others = [a for a in arms if a != baseline]
    dodge = {a: 0.5 * (i - (len(others) - 1) / 2) for i, a in enumerate(others)}   # keep the CIs apart
    for col, (metric, label) in enumerate(QP_METRICS.items()):
        top, bottom = axes[0, col], axes[1, col]
        sel = values[values["metric"] == metric]
        for arm in arms:
            means = sel[sel["arm"] == arm].groupby("qp")["value"].mean()
            top.plot(means.index, means.to_numpy(), marker="o", label=arm, color=palette[arm])
            t = tests[(tests["metric"] == metric) & (tests["arm"] == arm)].sort_values("qp")
            if arm != baseline and len(t):
                err = np.vstack([t["mean_diff"] - t["ci_low"], t["ci_high"] - t["mean_diff"]]).astype(float)
                bottom.errorbar(t["qp"] + dodge[arm], t["mean_diff"], yerr=np.nan_to_num(err), marker="o", capsize=3,
                                label=arm, color=palette[arm])
        bottom.axhline(0.0, color="black", linewidth=0.8)
        top.set(title=f"test {label} by QP", xlabel="QP level", ylabel=f"{label} (%)")
        bottom.set(title=f"Δ {label} vs {baseline} (95 % CI)", xlabel="QP level", ylabel="Δ (pp)")
    axes[0, 0].legend(fontsize="small")
    return figures._render(fig, FIGURE_STEM)


def qp_analysis(runs: list[Run], arms: list[str], baseline: str, *, min_effect: float = 1.0
                ) -> tuple[pd.DataFrame, pd.DataFrame, str | None]:
    """(per-QP values, their paired tests, skip reason or None) from the runs."""
    values = qp_values(runs)
    reason = skip_reason(values, runs)
    if reason is not None:
        values = values.iloc[:0]
    return values, qp_tests(values, arms, baseline, min_effect), reason
