"""Synthetic run folders following docs/design.md exactly (metrics.json, predictions.npz, history.csv)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lossablation.classes import STAGE2_CLASSES as CLASSES

# Reference §3 oracle (percent), seeds 1..5; arms named as in config/config.yaml
ORACLE = {
    "baseline": [58.2, 58.5, 58.1, 58.9, 58.4],
    "focal_gamma3": [58.4, 58.3, 58.6, 59.0, 58.5],     # 4A
    "poly": [59.0, 59.4, 58.6, 59.9, 59.1],             # 4B
    "asymmetric": [57.9, 58.8, 58.0, 58.7, 58.1],       # 4C
    "focal_smoothing": [58.6, 58.9, 58.3, 59.4, 58.9],  # 4D
}
SEEDS = [1, 2, 3, 4, 5]


def cfg_for(arms, seeds, baseline="baseline", bins=15) -> dict:
    return {"seeds": list(seeds), "baseline": baseline, "calibration_bins": bins,
            "losses": {a: {"kind": "focal", "params": {"gamma": 2.0}, "weighting": "class_balanced"} for a in arms}}


def metrics_block(macro_f1: float, ab_f1: float, n: int = 300) -> dict:
    """METRICS with macro_f1 (fraction) exact; SPLIT/RECT F1 chosen so the macro is their mean."""
    split_f1 = 0.70
    rect_f1 = 3 * macro_f1 - split_f1 - ab_f1
    per_class = {c: {"f1": f, "precision": f + 0.01, "recall": f - 0.01, "support": s}
                 for c, f, s in zip(CLASSES, (split_f1, rect_f1, ab_f1), (100, 170, 30))}
    cm = [[0.7, 0.25, 0.05], [0.15, 0.8, 0.05], [0.2, 0.5, 0.3]]
    return {"n": n, "loss": 0.5, "macro_f1": macro_f1, "macro_precision": macro_f1 + 0.01,
            "macro_recall": macro_f1 - 0.01, "accuracy": macro_f1 + 0.1, "ece": 0.05 + macro_f1 / 100,
            "mce": 0.2, "per_class": per_class, "confusion_matrix": cm}


def write_run(root: Path, arm: str, seed: int, macro_f1: float | None, ab_f1: float = 0.15,
              status: str = "completed", block_level: bool = False, n_epochs: int = 4,
              nan_loss_epoch: int | None = None, qp: np.ndarray | None = None) -> Path:
    """One run folder; ``nan_loss_epoch``: that epoch's train_loss in history.csv is written as nan; ``qp``: the
    300 test blocks' QP levels, written as predictions.npz ``test_qp`` (absent when None)."""
    folder = Path(root) / arm / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    block = None if macro_f1 is None else metrics_block(macro_f1, ab_f1)
    data = {"arm": arm, "seed": seed, "status": status, "selected_epoch": None if block is None else n_epochs,
            "epochs_run": n_epochs, "wall_time_s": 1.0, "val": block, "test": block,
            "train_class_counts": {"SPLIT": 1000, "RECT": 1700, "AB": 300}, "class_weights": [0.6, 0.3, 2.1],
            "hyperparameters": {"lr_adapter": 1e-3}, "loss": {"kind": "focal", "params": {"gamma": 2.0},
                                                             "weighting": "class_balanced"},
            "provenance": {"config_hash": "x", "code_version": "1.0.0", "packages": {}, "device": "cpu",
                           "dataset_fingerprint": "f", "block_level_split": block_level}}
    (folder / "metrics.json").write_text(json.dumps(data))
    if block is not None:
        rng = np.random.default_rng(seed * 7 + len(arm))
        logits = rng.normal(size=(300, 3))
        labels = rng.integers(0, 3, size=300)
        logits[np.arange(300), labels] += 1.0
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        extra = {} if qp is None else {"test_qp": np.asarray(qp, dtype=np.int64)}
        np.savez(folder / "predictions.npz", val_probs=probs, val_labels=labels, test_probs=probs,
                 test_labels=labels, **extra)
        lines = ["epoch,train_loss,val_loss,val_macro_f1,lr_adapter,lr_head,seconds"]
        lines += [f"{e},{'nan' if e == nan_loss_epoch else f'{1 / e:.4f}'},{1.1 / e:.4f},"
                  f"{macro_f1 * (0.8 + 0.05 * e):.6f},0.001,0.0001,1.0" for e in range(1, n_epochs + 1)]
        (folder / "history.csv").write_text("\n".join(lines) + "\n")
    return folder


def write_sweep(root: Path, values: dict[str, list[float]], seeds=SEEDS, ab: dict[str, float] | None = None,
                skip=(), diverged=(), block_level=False, nan_loss=(), qp: np.ndarray | None = None) -> Path:
    """values in percent per arm and seed; ``skip``/``diverged``/``nan_loss``: (arm, seed) pairs (``nan_loss``:
    a completed run whose history.csv has a nan training loss at epoch 2); ``qp``: every run's test_qp."""
    ab = ab or {}
    for arm, per_seed in values.items():
        for seed, v in zip(seeds, per_seed):
            if (arm, seed) in skip:
                continue
            if (arm, seed) in diverged:
                write_run(root, arm, seed, None, status="diverged", block_level=block_level)
            else:
                write_run(root, arm, seed, v / 100.0, ab_f1=ab.get(arm, 0.15) + 0.001 * seed,
                          block_level=block_level, nan_loss_epoch=2 if (arm, seed) in nan_loss else None, qp=qp)
    return Path(root)
