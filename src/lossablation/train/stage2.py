"""Stage 2: one (arm, seed) run of the ablation, in four steps: build, fit, evaluate, write.

The frozen Stage-1 backbone, trainable conv adapters and the 3-class head (SPLIT / RECT / AB); only the loss
differs between arms. Performance choices (docs/performance.md): the data lives on the training device as
tensors (no DataLoader); the frozen prefix (conv1 .. layer3 + SE3) is computed once per split and each step
runs the exact matrix-product path of ``lossablation.model.fastpath``; each epoch's order comes from a seeded
``torch.Generator``. The epoch loop, its resume and selection are ``lossablation.train.loop``'s; every reported
metric is recomputed from the selected epoch's weights.

Run folder: ``metrics.json``, ``history.csv``, ``predictions.npz``, ``model.pt`` (and ``state.pt`` while it runs).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn as nn

from lossablation.classes import STAGE2_CLASSES
from lossablation.errors import LossAblationError
from lossablation.io import atomic_write_json, atomic_write_with, sha256_json
from lossablation.model.fastpath import FastStage2
from lossablation.model.networks import Stage2Model, build_stage2_model
from lossablation.train.environment import (seed_everything, set_cpu_threads, set_determinism, torch_device,
                                            use_cuda_graph)
from lossablation.train.features import SideFeatures, Stage2Features, stage2_features
from lossablation.train.evaluation import Predictor, evaluate_splits, validation_score
from lossablation.train.loop import LoopResult, LoopSpec, plateau_scheduler, progress_bar, run_epochs, write_history
from lossablation.train.losses import ClassWeightedLoss, build_arm_loss, resolve_rebalance
from lossablation.train.provenance import run_protocol, run_provenance
from lossablation.train.steps import StepRunner, batch_slices, learning_rate, make_adamw

HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_macro_f1", "lr_adapter", "lr_head", "seconds")


@dataclass(kw_only=True)
class Stage2Run:
    """What ``build_stage2`` sets up for one run; the later steps read it."""

    cfg: Mapping[str, Any]
    arm: str
    seed: int
    out: Path
    device: torch.device
    stage1_sha256: str
    split_info: Mapping[str, Any]
    model: Stage2Model
    fast: FastStage2
    loss_fn: ClassWeightedLoss
    data: dict[str, SideFeatures]        # train / val / test, h3 and targets on the device
    train_counts: torch.Tensor           # (3,) int64, CPU
    qp: dict[str, np.ndarray] = field(default_factory=dict)   # val / test: each block's QP level, -1 unknown

    @property
    def name(self) -> str:
        return f"{self.arm}/seed{self.seed}"

    @property
    def predictor(self) -> Predictor:
        return Predictor(module=self.model, forward=self.fast, n_classes=len(STAGE2_CLASSES),
                         loss_sum=lambda logits, y: self.loss_fn.per_sample(logits, y).double().sum(),
                         batch_size=self.cfg["train"]["eval_batch_size"], bf16=self.cfg["train"]["bf16"])


def train_stage2(cfg: Mapping[str, Any], arm: str, seed: int, stage1_path: str | os.PathLike,
                 out_dir: str | os.PathLike, splits: Any = None,
                 model_hook: Callable[[Stage2Model], None] | None = None,
                 features_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train one (arm, seed) Stage-2 run into ``out_dir``; returns its metrics.json dict.

    ``cfg`` is a validated config (``load_config``). The run's inputs are the frozen-prefix features
    (``lossablation.train.features``): read from ``features_path`` (the workflow's file), else computed here from
    ``splits`` (tests) or ``make_splits(cfg)``. ``model_hook`` receives the trained model (selected weights
    loaded) at the end.
    """
    t_start = time.perf_counter()
    device = prepare_process(cfg)
    features = stage2_features(cfg, stage1_path, device, features_path=features_path, splits=splits)
    run = build_stage2(cfg, arm=arm, seed=seed, stage1_path=stage1_path, out_dir=out_dir, features=features,
                       device=device)
    result = fit_stage2(run)
    evaluation, arrays = evaluate_stage2(run, result)
    metrics = write_stage2(run, result, evaluation=evaluation, arrays=arrays, t_start=t_start)
    if model_hook is not None:
        model_hook(run.model)
    return metrics


def prepare_process(cfg: Mapping[str, Any]) -> torch.device:
    """The training device, determinism and CPU threads of a Stage-2 job."""
    device = torch_device(cfg)
    set_determinism(cfg["train"]["deterministic"])
    set_cpu_threads(cfg["resources"]["train_cpus"])
    return device


def build_stage2(cfg: Mapping[str, Any], *, arm: str, seed: int, stage1_path: str | os.PathLike,
                 out_dir: str | os.PathLike, features: Stage2Features, device: torch.device,
                 backbone: nn.Module | None = None, resident: dict[str, SideFeatures] | None = None) -> Stage2Run:
    """The arm's loss and the model on the Stage-1 backbone (its adapters and head drawn from ``seed``) over the
    features on ``device``. Runs of one job may share the frozen ``backbone`` and the ``resident`` data."""
    if arm not in cfg["losses"]:
        raise LossAblationError(f"losses: no arm named {arm!r} (arms: {', '.join(cfg['losses'])})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tcfg = cfg["train"]
    train_counts = features.train_counts
    loss_fn = build_arm_loss(cfg["losses"][arm], train_counts.tolist(), tcfg["cb_beta"], tcfg["rebalance"])
    seed_everything(seed)                    # the adapters' and head's initial weights come from the seed
    if backbone is None:
        model = build_stage2_model(stage1_path, cfg["model"]["adapter_reduction"], cfg["model"]["head_dropout"])
    else:                                    # same draws as build_stage2_model, then the shared frozen weights
        model = Stage2Model(cfg["model"]["adapter_reduction"], cfg["model"]["head_dropout"])
        model.backbone = backbone
        model.freeze_backbone()
    model.to(device)
    if resident is None:
        resident = features.resident(device)
    return Stage2Run(cfg=cfg, arm=arm, seed=seed, out=out, device=device, stage1_sha256=features.stage1_sha256,
                     split_info=features.split_info, model=model, fast=FastStage2(model).to(device),
                     loss_fn=loss_fn.to(device), data=resident, train_counts=train_counts,
                     qp={side: features.sides[side].qp.numpy() for side in ("val", "test")})


def fit_stage2(run: Stage2Run) -> LoopResult:
    """AdamW on adapters (``lr_adapter``) and head (``lr_head``), the plateau scheduler, the epoch loop."""
    tcfg = run.cfg["train"]
    device = run.device
    graphed = use_cuda_graph(device, tcfg)
    optimizer = run_optimizer(run, cuda_graph=graphed)
    seed_everything(run.seed)                # dropout stream starts from the seed, independent of model building
    order_gen = torch.Generator().manual_seed(run.seed)
    train = run.data["train"]
    next_order = order_sampler(run, order_gen)
    steps = StepRunner(forward=torch.compile(run.fast) if tcfg["compile"] else run.fast, loss_fn=run.loss_fn,
                       optimizer=optimizer, inputs=train.h3, targets=train.y, device=device, bf16=tcfg["bf16"],
                       cuda_graph=graphed)

    def train_epoch(epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        run.model.train()
        batches = batch_slices(next_order().to(device), tcfg["batch_size"])
        return steps.epoch(batches, on_batch=lambda i, n: progress_bar(run.name, epoch, i, n))

    return run_epochs(loop_spec(run, optimizer, order_gen, train_epoch=train_epoch))


def run_optimizer(run: Stage2Run, cuda_graph: bool = False) -> torch.optim.AdamW:
    """AdamW with two groups: the adapters at ``train.lr_adapter``, the head at ``train.lr_head``."""
    tcfg = run.cfg["train"]
    return make_adamw([{"params": list(run.model.adapters.parameters()), "lr": tcfg["lr_adapter"]},
                       {"params": list(run.model.head.parameters()), "lr": tcfg["lr_head"]}],
                      tcfg["weight_decay"], run.device, cuda_graph=cuda_graph)


def loop_spec(run: Stage2Run, optimizer: torch.optim.Optimizer, order_gen: torch.Generator, *,
              train_epoch: Callable[[int], tuple[torch.Tensor, torch.Tensor]] | None = None,
              dropout_gen: torch.Generator | None = None, pack: list[int] | None = None) -> LoopSpec:
    """The epoch loop's view of one run: validation, weights, optimizer, plateau scheduler, state and identity
    (a pack member's identity also names its pack: its state is not resumed in another pack)."""
    tcfg = run.cfg["train"]
    model, val = run.model, run.data["val"]
    predict = run.predictor
    identity = {"arm": run.arm, "seed": run.seed, "stage1_sha256": run.stage1_sha256,
                "config_hash": sha256_json(run_protocol(run.cfg, run.arm)),
                "dataset_fingerprint": run.split_info.get("fingerprint"),
                "n_train": int(run.data["train"].y.shape[0])}
    if pack is not None:
        identity["pack"] = list(pack)
    return LoopSpec(
        name=run.name, train_epoch=train_epoch, validate=lambda: validation_score(predict, val.h3, val.y),
        trainable_state=model.trainable_state_dict,
        load_trainable_state=lambda state: model.load_state_dict(state, strict=False),
        lrs=lambda: {"lr_adapter": learning_rate(optimizer.param_groups[0]),
                     "lr_head": learning_rate(optimizer.param_groups[1])},
        optimizer=optimizer, scheduler=plateau_scheduler(optimizer, tcfg), order_gen=order_gen,
        max_epochs=tcfg["max_epochs"], patience=tcfg["patience"], state_path=run.out / "state.pt",
        identity=identity, dropout_gen=dropout_gen)


def order_sampler(run: Stage2Run, order_gen: torch.Generator) -> Callable[[], torch.Tensor]:
    """Each epoch's order of the run's training samples (:func:`_order_sampler`)."""
    return _order_sampler(run.data["train"].y.cpu(), run.train_counts, run.cfg["train"]["rebalance"], order_gen)


def _order_sampler(y_train: torch.Tensor, train_counts: torch.Tensor, rebalance: str,
                   order_gen: torch.Generator) -> Callable[[], torch.Tensor]:
    """Each epoch's order of the training samples: a permutation, or (when ``train.rebalance`` asks for the
    sampler) N class-balanced draws with replacement, as a WeightedRandomSampler would make them."""
    n_train = y_train.shape[0]
    _, use_sampler = resolve_rebalance(rebalance)
    if not use_sampler:
        return lambda: torch.randperm(n_train, generator=order_gen)
    sample_weight = (1.0 / train_counts.double().clamp(min=1))[y_train]
    return lambda: torch.multinomial(sample_weight, n_train, replacement=True, generator=order_gen)


def evaluate_stage2(run: Stage2Run, result: LoopResult) -> tuple[dict[str, dict | None], dict[str, np.ndarray]]:
    """Val and test METRICS of the selected weights, and the predictions behind them. A run that diverged
    before any finite epoch has no metrics and empty predictions (so every declared output still exists)."""
    if result.best_state is None:
        empty = {"probs": np.zeros((0, len(STAGE2_CLASSES)), dtype=np.float32), "labels": np.zeros((0,), np.int64),
                 "qp": np.zeros((0,), np.int64)}
        return ({"val": None, "test": None},
                {f"{side}_{kind}": array for side in ("val", "test") for kind, array in empty.items()})
    run.model.load_state_dict(result.best_state, strict=False)
    sides = {side: (run.data[side].h3, run.data[side].y) for side in ("val", "test")}
    metrics, arrays = evaluate_splits(run.predictor, sides, class_names=STAGE2_CLASSES,
                                      bins=run.cfg["calibration_bins"])
    arrays.update({f"{side}_qp": qp for side, qp in run.qp.items()})   # per-block QP for the QP table
    return metrics, arrays


def write_stage2(run: Stage2Run, result: LoopResult, *, evaluation: Mapping[str, dict | None],
                 arrays: Mapping[str, np.ndarray], t_start: float, pack: list[int] | None = None) -> dict[str, Any]:
    """predictions.npz, model.pt, history.csv, then metrics.json (last: it marks the run done); drop state.pt.
    ``pack``: the seeds of the job's pack when the run was trained with others (recorded in its provenance)."""
    cfg, arm_cfg = run.cfg, run.cfg["losses"][run.arm]
    atomic_write_with(run.out / "predictions.npz", lambda p: _save_npz(p, arrays))
    atomic_write_with(run.out / "model.pt", lambda p: torch.save({
        "model_state_dict": result.best_state, "stage1_sha256": run.stage1_sha256, "arm": run.arm, "seed": run.seed,
        "selected_epoch": result.best_epoch, "model": dict(cfg["model"])}, p))
    write_history(run.out / "history.csv", result.history, HISTORY_COLUMNS)
    metrics = {
        "arm": run.arm, "seed": run.seed, "status": result.status, "selected_epoch": result.best_epoch,
        "epochs_run": result.epochs_run, "wall_time_s": time.perf_counter() - t_start,
        "val": evaluation["val"], "test": evaluation["test"],
        "train_class_counts": dict(zip(STAGE2_CLASSES, (int(c) for c in run.train_counts))),
        "class_weights": [float(w) for w in run.loss_fn.weight.tolist()],
        "hyperparameters": hyperparameters_stage2(cfg, run.seed, run.device),
        "loss": {"kind": arm_cfg["kind"], "params": dict(run.loss_fn.params), "weighting": arm_cfg["weighting"]},
        "provenance": run_provenance(cfg=cfg, device=run.device, split_info=run.split_info,
                                     resumed_from=result.resumed_from, stage1_sha256=run.stage1_sha256,
                                     arm=run.arm, pack=pack),
    }
    atomic_write_json(run.out / "metrics.json", metrics)
    (run.out / "state.pt").unlink(missing_ok=True)
    return metrics


def _save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    with open(path, "wb") as handle:   # a handle: numpy would append ".npz" to the tmp name
        np.savez(handle, **arrays)


def hyperparameters_stage2(cfg: Mapping[str, Any], seed: int, device: torch.device) -> dict[str, Any]:
    """Everything that shapes a Stage-2 run, as recorded in metrics.json."""
    return {"seed": seed, "device": str(device), **dict(cfg["train"]), "model": dict(cfg["model"]),
            "split": dict(cfg["split"]), "classes": {k: list(v) for k, v in cfg["classes"].items()},
            "calibration_bins": cfg["calibration_bins"], "optimizer": "AdamW",
            "scheduler": "ReduceLROnPlateau(mode=max, on val macro F1)", "selection": "best val macro F1, earliest",
            "threads": torch.get_num_threads()}
