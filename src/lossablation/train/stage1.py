"""Stage 1: backbone + binary head (NONE vs partitioned), trained from scratch, in four steps: build, fit,
evaluate, write.

Its output is the v7-layout ``stage1_model_best.pt`` (written at every new best epoch, so it always holds the
selected weights) that every Stage-2 run loads, plus ``metrics.json`` and ``history.csv``. The data lives on the
training device; ``stage1.max_train_blocks`` caps the training blocks with a seeded subset. The epoch loop, its
resume and selection are ``lossablation.train.loop``'s.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from lossablation.classes import STAGE1_CLASSES
from lossablation.data.splits import make_splits
from lossablation.data.targets import stage1_targets
from lossablation.io import atomic_write_json, atomic_write_with, sha256_file, sha256_json
from lossablation.model.networks import Stage1Model, stage1_checkpoint_dict
from lossablation.train.environment import (seed_everything, set_cpu_threads, set_determinism, torch_device,
                                            use_cuda_graph)
from lossablation.train.evaluation import Predictor, evaluate_splits, validation_score
from lossablation.train.loop import LoopResult, LoopSpec, plateau_scheduler, progress_bar, run_epochs, write_history
from lossablation.train.provenance import run_provenance
from lossablation.train.steps import StepRunner, batch_slices, learning_rate, make_adamw

HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_macro_f1", "lr", "seconds")
CHECKPOINT_NAME = "stage1_model_best.pt"


@dataclass(kw_only=True)
class Stage1Run:
    """What ``build_stage1`` sets up; the later steps read it."""

    cfg: Mapping[str, Any]
    out: Path
    device: torch.device
    channels_last: bool                  # on CUDA only: measured no gain on CPU at 16x16 (docs/performance.md)
    split_info: Mapping[str, Any]
    data: dict[str, tuple[torch.Tensor, torch.Tensor]]    # side -> (blocks, NONE-vs-partitioned targets)
    model: Stage1Model

    @property
    def checkpoint(self) -> Path:
        return self.out / CHECKPOINT_NAME

    @property
    def prepare(self):
        return (lambda xb: xb.contiguous(memory_format=torch.channels_last)) if self.channels_last else None

    @property
    def predictor(self) -> Predictor:
        return Predictor(module=self.model, forward=self.model, n_classes=len(STAGE1_CLASSES),
                         loss_sum=lambda logits, y: F.cross_entropy(logits, y, reduction="sum").double(),
                         batch_size=self.cfg["train"]["eval_batch_size"], bf16=self.cfg["train"]["bf16"],
                         prepare=self.prepare)


def train_stage1(cfg: Mapping[str, Any], out_dir: str | os.PathLike, splits: Any = None) -> dict[str, Any]:
    """Train backbone + binary head into ``out_dir``: the v7-layout ``stage1_model_best.pt`` plus ``metrics.json``
    and ``history.csv``. ``cfg`` is a validated config; ``splits`` may be given (tests). Returns the metrics."""
    t_start = time.perf_counter()
    run = build_stage1(cfg, out_dir=out_dir, splits=splits)
    result = fit_stage1(run)
    evaluation = evaluate_stage1(run, result)
    return write_stage1(run, result, evaluation=evaluation, t_start=t_start)


def subsample(n: int, cap: int | None, seed: int) -> torch.Tensor | None:
    """Indices of a seeded random subset of size ``cap`` (sorted), or None when no cap applies."""
    if cap is None or cap >= n:
        return None
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:cap].sort().values


def build_stage1(cfg: Mapping[str, Any], *, out_dir: str | os.PathLike, splits: Any) -> Stage1Run:
    """Device and threads, the split's blocks with binary targets (training blocks capped), the seeded model."""
    scfg, tcfg = cfg["stage1"], cfg["train"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch_device(cfg)
    set_determinism(tcfg["deterministic"])
    set_cpu_threads(cfg["resources"]["stage1_cpus"])
    splits = make_splits(cfg) if splits is None else splits
    x_train, y_train = splits.train.x, stage1_targets(splits.train.partition)
    keep = subsample(x_train.shape[0], scfg["max_train_blocks"], scfg["seed"])
    if keep is not None:
        x_train, y_train = x_train[keep], y_train[keep]
    data = {"train": (x_train.to(device), y_train.to(device))}
    for side in ("val", "test"):
        split = getattr(splits, side)
        data[side] = (split.x.to(device), stage1_targets(split.partition).to(device))
    channels_last = device.type == "cuda"
    seed_everything(scfg["seed"])
    model = Stage1Model().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return Stage1Run(cfg=cfg, out=out, device=device, channels_last=channels_last, split_info=splits.info,
                     data=data, model=model)


def fit_stage1(run: Stage1Run) -> LoopResult:
    """AdamW, the plateau scheduler and the epoch loop; each new best epoch rewrites the checkpoint."""
    scfg, tcfg = run.cfg["stage1"], run.cfg["train"]
    model, device = run.model, run.device
    graphed = use_cuda_graph(device, tcfg)
    optimizer = make_adamw(model.parameters(), scfg["weight_decay"], device, lr=scfg["lr"], cuda_graph=graphed)
    scheduler = plateau_scheduler(optimizer, scfg)
    order_gen = torch.Generator().manual_seed(scfg["seed"])
    x_train, y_train = run.data["train"]
    n_train = x_train.shape[0]
    steps = StepRunner(forward=torch.compile(model) if tcfg["compile"] else model, loss_fn=F.cross_entropy,
                       optimizer=optimizer, inputs=x_train, targets=y_train, device=device, bf16=tcfg["bf16"],
                       prepare=run.prepare, cuda_graph=graphed)
    predict, (x_val, y_val) = run.predictor, run.data["val"]

    def train_epoch(epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        model.train()
        batches = batch_slices(torch.randperm(n_train, generator=order_gen).to(device), scfg["batch_size"])
        return steps.epoch(batches, on_batch=lambda i, n: progress_bar("stage1", epoch, i, n))

    def on_new_best(epoch: int, f1: float, history: list[dict]) -> None:
        _write_checkpoint(run, optimizer=optimizer, scheduler=scheduler, epoch=epoch, best_f1=f1, history=history)

    identity = {"stage": 1, "config_hash": sha256_json({k: run.cfg[k] for k in ("stage1", "split", "dataset")}),
                "dataset_fingerprint": run.split_info.get("fingerprint"), "n_train": int(n_train)}
    spec = LoopSpec(
        name="stage1", train_epoch=train_epoch, validate=lambda: validation_score(predict, x_val, y_val),
        trainable_state=lambda: {k: v.detach().clone() for k, v in model.state_dict().items()},
        load_trainable_state=model.load_state_dict, lrs=lambda: {"lr": learning_rate(optimizer.param_groups[0])},
        optimizer=optimizer, scheduler=scheduler, order_gen=order_gen, max_epochs=scfg["max_epochs"],
        patience=scfg["patience"], state_path=run.out / "state.pt", identity=identity, on_new_best=on_new_best)
    return run_epochs(spec)


def _write_checkpoint(run: Stage1Run, *, optimizer: torch.optim.Optimizer | None, scheduler: Any, epoch: int,
                      best_f1: float, history: list[dict]) -> None:
    ckpt = stage1_checkpoint_dict(run.model, optimizer, scheduler, epoch, best_f1, history)
    atomic_write_with(run.checkpoint, lambda p: torch.save(ckpt, p))


def evaluate_stage1(run: Stage1Run, result: LoopResult) -> dict[str, dict | None]:
    """Val and test METRICS of the selected weights (None when no epoch finished)."""
    if result.best_state is None:
        return {"val": None, "test": None}
    run.model.load_state_dict(result.best_state)
    if not run.checkpoint.exists():  # e.g. resumed from a state written after the best epoch's checkpoint
        _write_checkpoint(run, optimizer=None, scheduler=None, epoch=result.best_epoch, best_f1=result.best_f1,
                          history=result.history)
    sides = {side: run.data[side] for side in ("val", "test")}
    metrics, _ = evaluate_splits(run.predictor, sides, class_names=STAGE1_CLASSES, bins=run.cfg["calibration_bins"])
    return metrics


def write_stage1(run: Stage1Run, result: LoopResult, *, evaluation: Mapping[str, dict | None],
                 t_start: float) -> dict[str, Any]:
    """history.csv, then metrics.json; drop state.pt."""
    scfg, tcfg = run.cfg["stage1"], run.cfg["train"]
    write_history(run.out / "history.csv", result.history, HISTORY_COLUMNS)
    metrics = {
        "stage": 1, "status": result.status, "selected_epoch": result.best_epoch, "epochs_run": result.epochs_run,
        "wall_time_s": time.perf_counter() - t_start, "val": evaluation["val"], "test": evaluation["test"],
        "n_train_blocks": int(run.data["train"][0].shape[0]),
        "checkpoint_sha256": sha256_file(run.checkpoint) if run.checkpoint.exists() else None,
        "hyperparameters": {**scfg, "device": str(run.device), "optimizer": "AdamW", "loss": "cross_entropy",
                            "scheduler": f"ReduceLROnPlateau(mode=max, factor={scfg['scheduler_factor']}, "
                                         f"patience={scfg['scheduler_patience']}) on val macro F1",
                            "eval_batch_size": tcfg["eval_batch_size"], "channels_last": run.channels_last,
                            "bf16": tcfg["bf16"]},
        "provenance": run_provenance(cfg=run.cfg, device=run.device, split_info=run.split_info,
                                     resumed_from=result.resumed_from),
    }
    atomic_write_json(run.out / "metrics.json", metrics)
    (run.out / "state.pt").unlink(missing_ok=True)
    return metrics
