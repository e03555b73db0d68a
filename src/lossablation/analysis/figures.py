"""Seaborn figures of a sweep (PNG + PDF, Agg backend). Each function draws one figure and returns both files'
contents, ``{"<stem>.png": bytes, "<stem>.pdf": bytes}``: nothing is written here, so the aggregation can render
everything before it writes anything.

Inputs are tidy frames built by :mod:`lossablation.analysis.aggregate` (values in percent). A figure with no data still
gets drawn (an empty panel that says so) so the Snakemake rule's declared outputs always exist.
"""

from __future__ import annotations

import io
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from lossablation.classes import STAGE2_CLASSES
from lossablation.train.metrics import reliability_bins  # noqa: E402

FIG_SUFFIXES = ("png", "pdf")
DPI = 120


Rendered = dict[str, bytes]


def _render(fig, stem: str) -> Rendered:
    """The figure as PNG and PDF bytes, keyed by file name; closes the figure."""
    files = {}
    try:
        for suffix in FIG_SUFFIXES:
            buffer = io.BytesIO()
            fig.savefig(buffer, format=suffix, dpi=DPI, bbox_inches="tight")
            files[f"{stem}.{suffix}"] = buffer.getvalue()
    finally:
        plt.close(fig)
    return files


def _empty(ax, text: str = "no completed runs") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _theme() -> None:
    sns.set_theme(style="whitegrid", context="paper")


def per_seed_f1(values: pd.DataFrame, arms: Sequence[str], stem="fig1_per_seed_f1") -> Rendered:
    """Test macro F1 (%) of every run by arm; a line joins the runs sharing a seed; black bar = mean."""
    _theme()
    fig, ax = plt.subplots(figsize=(1.3 * len(arms) + 2, 3.6))
    if values.empty:
        _empty(ax)
    else:
        data = values.assign(arm=pd.Categorical(values["arm"], categories=list(arms), ordered=True),
                             seed=values["seed"].astype(str)).sort_values(["seed", "arm"])
        sns.lineplot(data=data, x="arm", y="value", hue="seed", marker="o", sort=False, ax=ax, alpha=0.8,
                     estimator=None, units="seed")
        means = data.groupby("arm", observed=False)["value"].mean()
        ax.scatter(range(len(arms)), means.reindex(list(arms)).to_numpy(), marker="_", s=600, color="black",
                   zorder=5, label="mean")
        ax.set_xticks(range(len(arms)), list(arms), rotation=20)
        ax.set_xlabel("arm")
        ax.set_ylabel("test macro F1 (%)")
        ax.legend(title="seed", fontsize="small", loc="best")
    return _render(fig, stem)


def paired_diffs(diffs: pd.DataFrame, tests: pd.DataFrame, arms: Sequence[str],
                 min_effect: float = 1.0, stem="fig2_paired_diffs") -> Rendered:
    """Per-seed differences arm − baseline (points) and their mean with the 95 % t CI (bars)."""
    _theme()
    fig, ax = plt.subplots(figsize=(1.3 * max(len(arms), 1) + 2, 3.6))
    if diffs.empty:
        _empty(ax, "no paired runs")
    else:
        order = list(arms)
        sns.stripplot(data=diffs, x="arm", y="diff", order=order, color="0.45", size=5, jitter=0.08, ax=ax)
        t = tests.set_index("arm").reindex(order)
        x = np.arange(len(order))
        lo = (t["mean_diff"] - t["ci_low"]).to_numpy(dtype=float)
        hi = (t["ci_high"] - t["mean_diff"]).to_numpy(dtype=float)
        ax.errorbar(x, t["mean_diff"].to_numpy(dtype=float), yerr=np.vstack([lo, hi]), fmt="o", color="C3",
                    capsize=5, lw=2, label="mean Δ, 95 % CI")
        ax.axhline(0, color="black", lw=0.8)
        ax.axhline(min_effect, color="C2", ls="--", lw=0.8, label=f"+{min_effect:g} pp")
        ax.set_xlabel("arm")
        ax.set_ylabel("Δ test macro F1 vs baseline (pp)")
        ax.legend(fontsize="small", loc="best")
        ax.tick_params(axis="x", rotation=20)
    return _render(fig, stem)


def confusion(matrix: np.ndarray | None, arm: str, n_runs: int, stem: str) -> Rendered:
    """Row-normalised confusion matrix (true class rows), averaged over the arm's usable seeds."""
    _theme()
    fig, ax = plt.subplots(figsize=(3.6, 3.1))
    if matrix is None:
        _empty(ax)
        ax.set_title(arm)
    else:
        sns.heatmap(pd.DataFrame(matrix, index=STAGE2_CLASSES, columns=STAGE2_CLASSES), annot=True, fmt=".2f", vmin=0, vmax=1,
                    cmap="Blues", cbar=False, square=True, ax=ax)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{arm} (mean of {n_runs} seed{'s' if n_runs != 1 else ''})")
    return _render(fig, stem)


def _pooled(predictions: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return (np.concatenate([p for p, _ in predictions]), np.concatenate([y for _, y in predictions]))


def _facets(n: int, width: float = 3.0, height: float = 3.0):
    cols = min(n, 5) if n else 1
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat


def reliability(predictions: Mapping[str, list], ece: Mapping[str, tuple[float, float]], arms: Sequence[str],
                n_bins: int = 15, stem="fig4_reliability") -> Rendered:
    """Reliability diagram per arm (test predictions pooled over seeds); ECE (mean ± sd over seeds) in the title."""
    _theme()
    fig, axes = _facets(len(arms))
    axes = list(axes)
    for ax, arm in zip(axes, arms):
        preds = predictions.get(arm) or []
        if not preds:
            _empty(ax)
            ax.set_title(arm)
            continue
        bins = reliability_bins(*_pooled(preds), n_bins=n_bins)
        width = 1.0 / n_bins
        ax.bar(bins["lo"], bins["accuracy"].fillna(0), width=width, align="edge", edgecolor="black",
               color="C0", alpha=0.8, label="accuracy")
        gap = bins["confidence"] - bins["accuracy"]
        ax.bar(bins["lo"], gap.fillna(0), bottom=bins["accuracy"].fillna(0), width=width, align="edge",
               color="C3", alpha=0.35, label="gap")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        mean, sd = ece.get(arm, (float("nan"), float("nan")))
        ece_text = f"{mean:.2f}" + (f" ± {sd:.2f}" if np.isfinite(sd) else "")
        ax.set_title(f"{arm}\nECE {ece_text} %", fontsize="small")
    drawn = [ax for ax, arm in zip(axes, arms) if predictions.get(arm)]
    if drawn:
        drawn[0].legend(fontsize="x-small", loc="upper left")
    fig.tight_layout()
    return _render(fig, stem)


def confidence_hist(predictions: Mapping[str, list], arms: Sequence[str],
                    stem="fig5_confidence") -> Rendered:
    """Histogram of the top-label confidence, correct vs wrong predictions, per arm (pooled seeds)."""
    _theme()
    fig, axes = _facets(len(arms), height=2.6)
    for ax, arm in zip(axes, arms):
        preds = predictions.get(arm) or []
        ax.set_title(arm, fontsize="small")
        if not preds:
            _empty(ax)
            continue
        probs, labels = _pooled(preds)
        frame = pd.DataFrame({"confidence": probs.max(axis=1),
                              "prediction": np.where(probs.argmax(axis=1) == labels, "correct", "wrong")})
        sns.histplot(data=frame, x="confidence", hue="prediction", hue_order=["correct", "wrong"],
                     bins=np.linspace(1 / 3, 1, 21), stat="density", common_norm=False, element="step", ax=ax)
    fig.tight_layout()
    return _render(fig, stem)


def learning_curves(history: pd.DataFrame, arms: Sequence[str],
                    stem="fig6_learning_curves") -> Rendered:
    """Validation macro F1 (%) per epoch, mean ± sd over seeds, one line per arm."""
    _theme()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if history.empty:
        _empty(ax, "no training history")
    else:
        sns.lineplot(data=history, x="epoch", y="val_macro_f1", hue="arm", hue_order=list(arms), errorbar="sd",
                     marker="o", markersize=3, ax=ax)
        ax.set_ylabel("validation macro F1 (%)")
        ax.legend(fontsize="small", loc="best")
    return _render(fig, stem)
