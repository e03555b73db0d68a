"""Several (arm, seed) runs of one arm trained in one process as one batched model: a pack.

A sweep's training job trains the seeds of its pack (``train.runs_per_job`` consecutive seeds of one arm) together.
Every member is a complete run as if alone: its own model (adapters and head drawn from its seed), data order
(its seed's generator), dropout masks (its own generator, seeded like a solo run's global one), loss (the arm's,
with the split's class weights), optimizer, learning-rate schedule, early stopping, best-epoch selection,
resume state and run folder with the same files as a solo run. What the members share: the frozen backbone,
the resident features, and each training step, whose matrix products run for all members at once
(``lossablation.model.packed``). A member that stops (early stopping, max epochs, divergence) leaves the pack and
the others go on. A pack of one member is a solo run (``train_stage2``), bit for bit.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Mapping, Sequence

import torch

from lossablation.model.networks import load_stage1_model
from lossablation.model.packed import PackedStage2
from lossablation.train.features import stage2_features
from lossablation.train.loop import LoopResult, run_packed_epochs
from lossablation.train.stage2 import (Stage2Run, build_stage2, evaluate_stage2, loop_spec,
                                       order_sampler, prepare_process, run_optimizer, train_stage2, write_stage2)
from lossablation.train.steps import autocast, batch_slices


def train_stage2_pack(cfg: Mapping[str, Any], arm: str, seeds: Sequence[int], stage1_path: str | os.PathLike,
                      out_dirs: Sequence[str | os.PathLike], *, features_path: str | os.PathLike | None = None,
                      splits: Any = None) -> list[dict[str, Any]]:
    """Train the runs (``arm``, each of ``seeds``) into ``out_dirs`` together; returns their metrics.json dicts."""
    seeds = [int(s) for s in seeds]
    if len(seeds) != len(out_dirs) or len(set(seeds)) != len(seeds) or not seeds:
        raise ValueError("train_stage2_pack: one output folder per seed, seeds distinct")
    if len(seeds) == 1:
        return [train_stage2(cfg, arm, seeds[0], stage1_path, out_dirs[0], splits=splits,
                             features_path=features_path)]
    t_start = time.perf_counter()
    device = prepare_process(cfg)
    features = stage2_features(cfg, stage1_path, device, features_path=features_path, splits=splits)
    backbone = load_stage1_model(stage1_path).backbone.to(device)
    resident = features.resident(device)
    runs = [build_stage2(cfg, arm=arm, seed=seed, stage1_path=stage1_path, out_dir=out, features=features,
                         device=device, backbone=backbone, resident=resident) for seed, out in zip(seeds, out_dirs)]
    results = fit_pack(runs)
    metrics = []
    for run, result in zip(runs, results):
        evaluation, arrays = evaluate_stage2(run, result)
        metrics.append(write_stage2(run, result, evaluation=evaluation, arrays=arrays, t_start=t_start,
                                    pack=seeds))
    return metrics


def fit_pack(runs: list[Stage2Run]) -> list[LoopResult]:
    """Each member's optimizer, scheduler, generators and loop view; one shared pass of steps per epoch."""
    tcfg = runs[0].cfg["train"]
    device, loss_fn, train = runs[0].device, runs[0].loss_fn, runs[0].data["train"]
    seeds = [run.seed for run in runs]
    optimizers = [run_optimizer(run) for run in runs]
    # a solo run seeds torch's global generator with its seed right before training and only dropout draws from
    # it; each member's own generator, seeded the same way, draws the same masks
    dropout_gens = [torch.Generator(device).manual_seed(run.seed) for run in runs]
    order_gens = [torch.Generator().manual_seed(run.seed) for run in runs]
    next_orders = [order_sampler(run, gen) for run, gen in zip(runs, order_gens)]
    specs = [loop_spec(run, opt, gen, dropout_gen=dgen, pack=seeds)
             for run, opt, gen, dgen in zip(runs, optimizers, order_gens, dropout_gens)]
    steps = PackSteps(PackedStage2(runs[0].fast, [run.model for run in runs], dropout_gens), loss_fn=loss_fn,
                      optimizers=optimizers, inputs=train.h3, targets=train.y, bf16=tcfg["bf16"])

    def train_members(epoch: int, members: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        for k in members:
            runs[k].model.train()
        return steps.epoch([batch_slices(next_orders[k]().to(device), tcfg["batch_size"]) for k in members], members)

    return run_packed_epochs(specs, train_members)


class PackSteps:
    """Optimizer steps of a pack over resident ``inputs`` / ``targets``: each step one batched forward of the
    members' batches, one backward, each member's own optimizer step; no host sync (cf. ``StepRunner``)."""

    def __init__(self, packed: PackedStage2, *, loss_fn: Callable, optimizers: list[torch.optim.Optimizer],
                 inputs: torch.Tensor, targets: torch.Tensor, bf16: bool = False) -> None:
        self.packed, self.loss_fn, self.optimizers = packed, loss_fn, optimizers
        self.inputs, self.targets, self.bf16 = inputs, targets, bf16

    def step(self, idx: torch.Tensor, members: list[int]) -> torch.Tensor:
        """One optimizer step of each member on its batch ``idx[i]`` (K', B); returns each member's batch loss."""
        with autocast(self.inputs.device, self.bf16):
            logits = self.packed(self.inputs[idx], members)
        per_sample = self.loss_fn.per_sample(logits.float().reshape(-1, logits.shape[-1]),
                                             self.targets[idx].reshape(-1))
        losses = per_sample.view(len(members), -1).sum(dim=1) / idx.shape[1]   # each member's mean, as alone
        for k in members:
            self.optimizers[k].zero_grad(set_to_none=True)
        losses.sum().backward()          # members' parameters are disjoint: each gets its own gradient
        for k in members:
            self.optimizers[k].step()
        return losses.detach()

    def epoch(self, batches: list[list[torch.Tensor]], members: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A pass over each member's batches (``batches[i]``: member ``members[i]``'s, all the same count and
        sizes); returns each member's mean batch loss and all-finite flag, on the device."""
        device = self.inputs.device
        loss_sum = torch.zeros(len(members), device=device)
        finite = torch.ones(len(members), dtype=torch.bool, device=device)
        for i in range(len(batches[0])):
            losses = self.step(torch.stack([b[i] for b in batches]), members)
            loss_sum += losses
            finite &= torch.isfinite(losses)
        return loss_sum / max(1, len(batches[0])), finite
