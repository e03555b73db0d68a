"""Reading a sweep's run folders, trusting nothing: ``RUNS/<arm>/seed<seed>/`` -> :class:`Run` -> runs.csv.

Every file of a run that exists is read and checked before any statistic is computed (docs/design.md has the
contracts): ``metrics.json`` (valid JSON, an object, a known status, the METRICS keys with numbers), ``history.csv``
(complete lines, numeric cells, epochs 1..k with k = ``epochs_run``) and ``predictions.npz`` (a readable archive
with ``test_probs`` (N, 3) and ``test_labels`` (N,), N = the test split's ``n``). A damaged file is a
:class:`LossAblationError` with one line naming it. An absent run folder is not an error (a failed job under
``--keep-going``): the run is ``missing``; but a runs folder holding no run of the config at all is (a mistyped
``--runs``). An absent history or predictions file is tolerated (that run is not drawn).

A run is *usable* when its status is ``completed`` and it has test metrics. Whether it saw a non-finite loss
(plan §7.3 "NaN losses") is recorded in :attr:`Run.nonfinite`: a non-finite ``loss`` in metrics.json, a
non-finite ``train_loss``/``val_loss`` in history.csv, or non-finite test probabilities.
"""

from __future__ import annotations

import csv
import io
import json
import math
import zipfile
import zlib
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from lossablation.classes import STAGE2_CLASSES
from lossablation.errors import LossAblationError

SPLITS = ("val", "test")
#: METRICS keys (docs/design.md) every split block must carry as numbers, and the per-class ones.
SCALAR_KEYS = ("n", "macro_f1", "macro_precision", "macro_recall", "accuracy", "ece", "mce")
PER_CLASS_KEYS = ("f1", "precision", "recall")
HISTORY_NUMBERS = ("epoch", "train_loss", "val_loss", "val_macro_f1")
LOSS_COLUMNS = ("train_loss", "val_loss")


@dataclass
class Run:
    arm: str
    seed: int
    status: str                      # completed | diverged | missing
    folder: Path
    metrics: dict | None = None      # the parsed metrics.json
    history: pd.DataFrame | None = None                          # history.csv, numeric columns
    predictions: tuple[np.ndarray, np.ndarray] | None = None     # (test_probs, test_labels)
    nonfinite: list[str] = field(default_factory=list)           # where a non-finite loss was seen
    test_qp: np.ndarray | None = None    # predictions.npz ``test_qp`` (each test block's QP level, -1 unknown)
    qp_scores: pd.DataFrame | None = None   # qp, n, macro_f1, f1_AB (percent) per known QP level (qp_scores())

    @property
    def usable(self) -> bool:
        return self.status == "completed" and bool(self.metrics) and self.metrics.get("test") is not None


def run_folder(runs_dir: str | Path, arm: str, seed: int) -> Path:
    return Path(runs_dir) / arm / f"seed{seed}"


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


# ------------------------------------------------------------------------------------------ metrics.json
def _check_block(path: Path, split: str, block: Any) -> None:
    """One split's METRICS: numbers where numbers belong, every class, a square confusion matrix."""
    if not isinstance(block, dict):
        raise LossAblationError(f"{path}: {split}: expected an object of metrics")
    for key in (*SCALAR_KEYS, "per_class", "confusion_matrix"):
        if key not in block:
            raise LossAblationError(f"{path}: {split}.{key}: missing")
    for key in SCALAR_KEYS:
        if not _is_number(block[key]):
            raise LossAblationError(f"{path}: {split}.{key}: expected a number, got {block[key]!r}")
    if block.get("loss") is not None and not _is_number(block["loss"]):
        raise LossAblationError(f"{path}: {split}.loss: expected a number or null, got {block['loss']!r}")
    per_class = block["per_class"]
    for cls in STAGE2_CLASSES:
        entry = per_class.get(cls) if isinstance(per_class, dict) else None
        if not isinstance(entry, dict) or not all(_is_number(entry.get(k)) for k in PER_CLASS_KEYS):
            raise LossAblationError(f"{path}: {split}.per_class.{cls}: expected numbers "
                                    f"{', '.join(PER_CLASS_KEYS)}")
    cm = block["confusion_matrix"]
    k = len(STAGE2_CLASSES)
    if not (isinstance(cm, list) and len(cm) == k
            and all(isinstance(r, list) and len(r) == k and all(map(_is_number, r)) for r in cm)):
        raise LossAblationError(f"{path}: {split}.confusion_matrix: expected {k}x{k} numbers")


def read_metrics(path: Path, arm: str, seed: int) -> dict:
    """The parsed, checked metrics.json of run (arm, seed)."""
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
    for key in ("epochs_run", "selected_epoch"):
        if data.get(key) is not None and not (isinstance(data[key], int) and not isinstance(data[key], bool)):
            raise LossAblationError(f"{path}: {key}: expected an integer, got {data[key]!r}")
    for split in SPLITS:
        block = data.get(split)
        if status == "completed" and not isinstance(block, dict):
            raise LossAblationError(f"{path}: {split}: a completed run needs its metrics")
        if block is not None:
            _check_block(path, split, block)
    return data


# ------------------------------------------------------------------------------------------ history.csv
def _history_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise LossAblationError(f"{path}: not UTF-8 text ({_one_line(exc)})") from None
    if not text.endswith("\n"):
        raise LossAblationError(f"{path}: truncated (empty, or the last line is incomplete)")
    rows = list(csv.reader(io.StringIO(text)))
    header = rows[0] if rows else []
    absent = [c for c in HISTORY_NUMBERS if c not in header]
    if absent:
        raise LossAblationError(f"{path}: needs columns {', '.join(HISTORY_NUMBERS)} (missing {', '.join(absent)})")
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise LossAblationError(f"{path}: line {line}: {len(row)} fields, the header has {len(header)} "
                                    "(truncated or damaged)")
    return header, rows[1:]


def _number(path: Path, line: int, name: str, text: str) -> float:
    try:
        return float(text)              # "nan"/"inf" parse: a non-finite loss is a finding, not damage
    except ValueError:
        raise LossAblationError(f"{path}: line {line}: {name}: not a number") from None


def read_history(path: Path, epochs_run: int | None) -> pd.DataFrame:
    """history.csv with its numeric columns as floats; epochs must be 1..k with k = ``epochs_run`` (if known)."""
    header, rows = _history_rows(path)
    frame = pd.DataFrame({name: [_number(path, line, name, row[header.index(name)])
                                 for line, row in enumerate(rows, start=2)] for name in HISTORY_NUMBERS},
                         columns=list(HISTORY_NUMBERS))
    if not np.array_equal(frame["epoch"].to_numpy(), np.arange(1, len(frame) + 1)):
        raise LossAblationError(f"{path}: epochs are not 1, 2, ..., {len(frame)}")
    if epochs_run is not None and len(frame) != epochs_run:
        raise LossAblationError(f"{path}: {len(frame)} epochs, but metrics.json has epochs_run = {epochs_run} "
                                "(truncated?)")
    return frame


# ------------------------------------------------------------------------------------------ predictions.npz
def read_predictions(path: Path, n_test: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(test_probs (N, C) float, test_labels (N,)) from a run's predictions.npz, checked against the test n."""
    unreadable = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError)
    try:
        data = np.load(path, allow_pickle=False)
    except unreadable as exc:
        raise LossAblationError(f"{path}: unreadable or truncated ({_one_line(exc)})") from None
    if not hasattr(data, "files"):
        raise LossAblationError(f"{path}: not an npz archive")
    try:
        with data:
            probs = np.asarray(data["test_probs"], dtype=float)
            labels = np.asarray(data["test_labels"])
    except KeyError as exc:
        raise LossAblationError(f"{path}: missing array {exc}") from None
    except unreadable as exc:
        raise LossAblationError(f"{path}: unreadable or truncated ({_one_line(exc)})") from None
    k = len(STAGE2_CLASSES)
    if probs.ndim != 2 or probs.shape[1] != k or labels.shape != (probs.shape[0],):
        raise LossAblationError(f"{path}: test_probs {probs.shape} / test_labels {labels.shape}: expected (N, {k}) "
                                "and (N,)")
    if labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= k):
        raise LossAblationError(f"{path}: test_labels: expected integers 0..{k - 1}")
    if n_test is not None and labels.size != n_test:
        raise LossAblationError(f"{path}: {labels.size} test predictions, but metrics.json has test.n = {n_test}")
    return probs, labels


def read_test_qp(path: Path, n_test: int) -> np.ndarray | None:
    """predictions.npz ``test_qp`` (int, one per test prediction), None when absent (runs of older versions)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "test_qp" not in data.files:
                return None
            qp = np.asarray(data["test_qp"])
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise LossAblationError(f"{path}: unreadable or truncated ({_one_line(exc)})") from None
    if qp.shape != (n_test,) or (qp.size and not np.issubdtype(qp.dtype, np.integer)):
        raise LossAblationError(f"{path}: test_qp {qp.shape} {qp.dtype}: expected ({n_test},) integers")
    return qp.astype(np.int64)


def qp_scores(predictions: tuple[np.ndarray, np.ndarray], qp: np.ndarray | None) -> pd.DataFrame | None:
    """Test macro F1 and AB F1 (percent) on the blocks of each known QP level (qp >= 0); the trainer's metrics."""
    from lossablation.train.metrics import classification_metrics

    probs, labels = predictions
    if qp is None or not np.isfinite(probs).all():
        return None
    rows = []
    for level in np.unique(qp[qp >= 0]):
        at = qp == level
        block = classification_metrics(labels[at], probs[at])
        rows.append({"qp": int(level), "n": int(at.sum()), "macro_f1": 100.0 * block["macro_f1"],
                     "f1_AB": 100.0 * block["per_class"]["AB"]["f1"]})
    return pd.DataFrame(rows, columns=["qp", "n", "macro_f1", "f1_AB"])


# ------------------------------------------------------------------------------------------ one run, all runs
def nonfinite_losses(metrics: Mapping[str, Any] | None, history: pd.DataFrame | None,
                     predictions: tuple[np.ndarray, np.ndarray] | None) -> list[str]:
    """Where this run recorded a non-finite loss (empty list: none)."""
    found = []
    for split in SPLITS:
        block = (metrics or {}).get(split)
        if isinstance(block, dict) and block.get("loss") is not None and not math.isfinite(block["loss"]):
            found.append(f"metrics.json {split}.loss")
    if history is not None:
        for col in LOSS_COLUMNS:
            bad = history.loc[~np.isfinite(history[col]), "epoch"].astype(int).tolist()
            if bad:
                found.append(f"history.csv {col} (epoch {', '.join(map(str, bad))})")
    if predictions is not None and not np.isfinite(predictions[0]).all():
        found.append("predictions.npz test_probs")
    return found


def read_run(runs_dir: str | Path, arm: str, seed: int, *, keep_predictions: bool = True) -> Run:
    """One run, every file checked; ``missing`` when metrics.json does not exist."""
    folder = run_folder(runs_dir, arm, seed)
    path = folder / "metrics.json"
    if not path.is_file():
        return Run(arm, seed, "missing", folder)
    metrics = read_metrics(path, arm, seed)
    history = predictions = test_qp = None
    if (folder / "history.csv").is_file():
        history = read_history(folder / "history.csv", metrics.get("epochs_run"))
    if (folder / "predictions.npz").is_file():
        test = metrics.get("test")
        predictions = read_predictions(folder / "predictions.npz", int(test["n"]) if test else None)
        test_qp = read_test_qp(folder / "predictions.npz", predictions[1].size)
    run = Run(arm, seed, metrics["status"], folder, metrics, history, predictions,
              nonfinite_losses(metrics, history, predictions), test_qp,
              None if predictions is None else qp_scores(predictions, test_qp))
    if not keep_predictions:
        run.predictions = None
    return run


def read_runs(cfg: Mapping[str, Any], runs_dir: str | Path, *, keep_predictions: bool = True) -> list[Run]:
    """Every (arm, seed) of the config; an error when ``runs_dir`` holds none of them."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise LossAblationError(f"{runs_dir}: runs folder does not exist")
    runs = [read_run(runs_dir, arm, int(seed), keep_predictions=keep_predictions)
            for arm in cfg["losses"] for seed in cfg["seeds"]]
    if all(r.status == "missing" for r in runs):
        example = run_folder(runs_dir, next(iter(cfg["losses"])), int(cfg["seeds"][0])) / "metrics.json"
        raise LossAblationError(f"{runs_dir}: no run of this config (no <arm>/seed<seed>/metrics.json, "
                                f"e.g. {example})")
    return runs


# ------------------------------------------------------------------------------------------ runs.csv
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
        blocks = [(s, run.metrics.get(s)) for s in SPLITS] if run.metrics else []
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
