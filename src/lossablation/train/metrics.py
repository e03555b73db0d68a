"""Classification metrics of one split from (labels, probabilities): the METRICS dict of docs/design.md.

Macro / per-class precision, recall and F1 and the confusion matrix come from scikit-learn with
``labels=[0, 1, 2]`` and ``zero_division=0`` (an absent class counts as F1 0 instead of dropping out).
Calibration is top-label: confidence = max p, equal-width bins, ECE = sum_m |B_m|/N |acc_m - conf_m|,
MCE = max over non-empty bins (the same binning as torchmetrics).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from lossablation.classes import STAGE2_CLASSES


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> pd.DataFrame:
    """Top-label reliability bins: one row per equal-width bin, ``lo, hi, count, confidence, accuracy``.

    Bin m is [m/M, (m+1)/M), the last one closed at 1: a confidence on an edge goes to the bin it opens, as in
    torchmetrics. The index is floor(conf * M), not a search in ``linspace`` edges, whose rounding (0.6 ->
    0.6000000000000001) would move a confidence of exactly 0.6 into the bin below. Empty bins have NaN
    confidence and accuracy. The one binning used by the metrics and the figures.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    conf = probs.max(axis=1) if len(probs) else np.zeros(0)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64) if len(probs) else np.zeros(0)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.minimum(np.floor(conf * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(index, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(index, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(index, weights=correct, minlength=n_bins) / count
    return pd.DataFrame({"lo": edges[:-1], "hi": edges[1:], "count": count, "confidence": confidence,
                         "accuracy": accuracy})


def calibration_errors(labels: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> tuple[float, float]:
    """(ECE, MCE) of the top-label confidence with ``n_bins`` equal-width bins over [0, 1]."""
    bins = reliability_bins(probs, labels, n_bins)
    bins = bins[bins["count"] > 0]
    if bins.empty:
        return 0.0, 0.0
    gaps = (bins["accuracy"] - bins["confidence"]).abs()
    ece = float((bins["count"] / bins["count"].sum() * gaps).sum())
    return ece, float(gaps.max())


def classification_metrics(labels: np.ndarray, probs: np.ndarray, n_bins: int = 15,
                           loss: float | None = None,
                           class_names: Sequence[str] = STAGE2_CLASSES) -> dict[str, Any]:
    """The METRICS dict of design.md for one split.

    ``confusion_matrix``: rows = true class, row-normalised (each non-empty row sums to 1; an absent class
    gives a zero row), so every value is a fraction in [0, 1]; counts are ``per_class[*]["support"]`` times it.
    """
    labels = np.asarray(labels).astype(np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    class_ids = list(range(len(class_names)))
    preds = probs.argmax(axis=1) if labels.shape[0] else np.zeros(0, dtype=np.int64)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, preds, labels=class_ids, average=None, zero_division=0)
    macro_p, macro_r, macro_f1, _ = precision_recall_fscore_support(
        labels, preds, labels=class_ids, average="macro", zero_division=0)
    ece, mce = calibration_errors(labels, probs, n_bins)
    cm = (confusion_matrix(labels, preds, labels=class_ids, normalize="true") if labels.shape[0]
          else np.zeros((len(class_ids), len(class_ids))))
    return {
        "n": int(labels.shape[0]),
        "loss": None if loss is None else float(loss),
        "macro_f1": float(macro_f1),
        "macro_precision": float(macro_p),
        "macro_recall": float(macro_r),
        "accuracy": float(accuracy_score(labels, preds)) if labels.shape[0] else 0.0,
        "ece": ece,
        "mce": mce,
        "per_class": {
            name: {"f1": float(f1[i]), "precision": float(precision[i]), "recall": float(recall[i]),
                   "support": int(support[i])}
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": np.nan_to_num(cm).astype(float).tolist(),
    }


def macro_f1(labels: np.ndarray, preds: np.ndarray, n_classes: int = 3) -> float:
    """Macro F1 over ``range(n_classes)`` (model selection; same sklearn call as the report)."""
    _, _, f1, _ = precision_recall_fscore_support(np.asarray(labels), np.asarray(preds),
                                                 labels=list(range(n_classes)), average="macro", zero_division=0)
    return float(f1)
