"""The frozen-prefix features of a sweep: h3 = SE3(layer3(...)) of every Stage-2 block, computed once.

In Stage 2 the backbone is frozen, so everything up to the first adapter (conv1 .. layer3 + SE3) is the same
function of the same blocks for every (arm, seed) of a sweep. Rule ``features`` computes it once per (dataset,
split, Stage-1 checkpoint) into ``<results>/features/stage2_features.pt``; training jobs read that file instead
of the dataset (no dataset load, no prefix pass, a small memory footprint per job). A run given no file (the
``lossablation train`` command, tests) computes the same features in its own process with the same function,
so both ways give bit-identical inputs.

File format: ``torch.save`` of tensors and plain data only, read with ``torch.load(weights_only=True)`` (no code
runs on reading) and checked field by field; every refusal is one line naming the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from lossablation.classes import STAGE2_CLASSES
from lossablation.data.splits import SIDES, make_splits
from lossablation.data.targets import stage2_targets
from lossablation.errors import LossAblationError
from lossablation.io import atomic_write_with, sha256_file
from lossablation.model.fastpath import prefix_features
from lossablation.model.networks import load_stage1_model

FORMAT = "lossablation-stage2-features-1"
H3_WIDTH = 256


@dataclass(frozen=True)
class SideFeatures:
    """One side's Stage-2 blocks: h3 (N, 256) float32, targets (N,) int64, QP level (N,) int64 (-1 unknown)."""

    h3: torch.Tensor
    y: torch.Tensor
    qp: torch.Tensor


@dataclass(frozen=True)
class Stage2Features:
    """The frozen-prefix features of train / val / test, and where they came from."""

    sides: dict[str, SideFeatures]
    stage1_sha256: str
    split_info: dict[str, Any]

    def resident(self, device: torch.device) -> dict[str, SideFeatures]:
        """Every side's features on the training ``device`` (QP levels stay on the CPU: only reports read them)."""
        return {side: SideFeatures(h3=f.h3.to(device), y=f.y.to(device), qp=f.qp) for side, f in self.sides.items()}

    @property
    def train_counts(self) -> torch.Tensor:
        return torch.bincount(self.sides["train"].y, minlength=len(STAGE2_CLASSES))


def stage2_blocks(split: Any, groups: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, y, qp) of one side's Stage-2 blocks (NONE and ungrouped blocks removed); qp -1 when unknown."""
    y = stage2_targets(split.partition, groups)
    keep = y >= 0
    n = int(keep.sum())
    qp = getattr(split, "qp", None)
    qp = (torch.full((n,), -1, dtype=torch.int64) if qp is None
          else torch.from_numpy(np.asarray(qp, dtype=np.int64)[keep.cpu().numpy()]))
    return split.x[keep], y[keep], qp


def compute_features(cfg: Mapping[str, Any], stage1_path: str | os.PathLike, device: torch.device,
                     splits: Any = None) -> Stage2Features:
    """h3 of every Stage-2 block of the split of ``cfg`` (``splits`` if given, else ``make_splits(cfg)``) through
    the frozen Stage-1 backbone, on ``device``, in batches of ``train.eval_batch_size``; results on the CPU."""
    splits = make_splits(cfg) if splits is None else splits
    backbone = load_stage1_model(stage1_path).backbone.to(device)
    sides = {}
    for side in SIDES:
        x, y, qp = stage2_blocks(getattr(splits, side), cfg["classes"])
        h3 = prefix_features(backbone, x.to(device), cfg["train"]["eval_batch_size"])
        sides[side] = SideFeatures(h3=h3.cpu(), y=y.cpu(), qp=qp)
    return Stage2Features(sides=sides, stage1_sha256=sha256_file(stage1_path), split_info=dict(splits.info))


def save_features(path: str | os.PathLike, features: Stage2Features) -> None:
    payload = {"format": FORMAT, "stage1_sha256": features.stage1_sha256, "split_info": features.split_info,
               "sides": {side: {"h3": f.h3.contiguous(), "y": f.y, "qp": f.qp} for side, f in features.sides.items()}}
    atomic_write_with(Path(path), lambda tmp: torch.save(payload, tmp))


def load_features(path: str | os.PathLike, *, stage1_sha256: str | None = None) -> Stage2Features:
    """Read and check a features file; with ``stage1_sha256``, refuse features of another Stage-1 checkpoint."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise LossAblationError(f"{path}: features file not found") from None
    except Exception as exc:  # noqa: BLE001 - whatever fails here, the file is not a features file
        raise LossAblationError(f"{path}: not a Stage-2 features file ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise LossAblationError(f"{path}: not a Stage-2 features file (format is not {FORMAT!r})")
    if stage1_sha256 is not None and payload.get("stage1_sha256") != stage1_sha256:
        raise LossAblationError(f"{path}: features of another Stage-1 checkpoint (sha256 differs); "
                                "rerun rule features")
    if not isinstance(payload.get("split_info"), dict) or not isinstance(payload.get("sides"), dict):
        raise LossAblationError(f"{path}: Stage-2 features file without split_info / sides")
    sides = {side: _check_side(path, side, payload["sides"].get(side)) for side in SIDES}
    return Stage2Features(sides=sides, stage1_sha256=str(payload["stage1_sha256"]),
                          split_info=payload["split_info"])


def _check_side(path: Path, side: str, fields: Any) -> SideFeatures:
    def bad(why: str) -> LossAblationError:
        return LossAblationError(f"{path}: sides.{side}: {why}")

    if not isinstance(fields, dict):
        raise bad("missing")
    tensors = {}
    for name, dtype in (("h3", torch.float32), ("y", torch.int64), ("qp", torch.int64)):
        value = fields.get(name)
        if not isinstance(value, torch.Tensor) or value.layout != torch.strided or value.dtype != dtype:
            raise bad(f"{name}: expected a dense {dtype} tensor")
        tensors[name] = value
    n = tensors["y"].shape[0]
    if tensors["h3"].shape != (n, H3_WIDTH) or tensors["y"].dim() != 1 or tensors["qp"].shape != (n,):
        raise bad(f"shapes h3 {tuple(tensors['h3'].shape)}, y {tuple(tensors['y'].shape)}, "
                  f"qp {tuple(tensors['qp'].shape)} do not fit (N, {H3_WIDTH}), (N,), (N,)")
    if n and (int(tensors["y"].min()) < 0 or int(tensors["y"].max()) >= len(STAGE2_CLASSES)):
        raise bad(f"y: targets outside 0..{len(STAGE2_CLASSES) - 1}")
    if not bool(torch.isfinite(tensors["h3"]).all()):
        raise bad("h3: non-finite values")
    return SideFeatures(**tensors)


def stage2_features(cfg: Mapping[str, Any], stage1_path: str | os.PathLike, device: torch.device, *,
                    features_path: str | os.PathLike | None = None, splits: Any = None) -> Stage2Features:
    """A run's features: read from ``features_path`` (the workflow's file) or computed here."""
    if features_path is not None:
        return load_features(features_path, stage1_sha256=sha256_file(stage1_path))
    return compute_features(cfg, stage1_path, device, splits=splits)
