"""Predicting a split and scoring it, the same way for both stages: per-epoch validation (loss and macro F1,
for selection) and the final val / test metrics of the selected weights (the METRICS blocks of metrics.json).

Evaluation runs in large batches under ``torch.inference_mode`` (and bf16 autocast when training uses it); the
loss of a split is the stage's training loss summed in float64 and divided by the number of samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from lossablation.train.metrics import classification_metrics, macro_f1
from lossablation.train.steps import autocast

Batch = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class Predictor:
    """How a stage predicts: ``module`` (put in eval mode), its ``forward`` on a batch of inputs (after
    ``prepare``), and ``loss_sum(float32 logits, targets)`` -> the batch's summed loss as a float64 0-d tensor."""

    module: nn.Module
    forward: Batch
    loss_sum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    n_classes: int
    batch_size: int
    bf16: bool = False
    prepare: Batch | None = None

    @torch.inference_mode()
    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[np.ndarray, float]:
        """Softmax probabilities (N, C) float64 and the mean loss over the N samples."""
        self.module.eval()
        device = inputs.device
        probs, loss_sum = [], torch.zeros((), dtype=torch.float64, device=device)
        for i in range(0, inputs.shape[0], self.batch_size):
            batch = inputs[i:i + self.batch_size]
            if self.prepare is not None:
                batch = self.prepare(batch)
            with autocast(device, self.bf16):
                logits = self.forward(batch)
            logits = logits.float()
            loss_sum += self.loss_sum(logits, targets[i:i + self.batch_size])
            probs.append(torch.softmax(logits, dim=1))
        p = torch.cat(probs).double().cpu().numpy() if probs else np.zeros((0, self.n_classes))
        return p, float(loss_sum.item()) / max(1, inputs.shape[0])


def validation_score(predict: Predictor, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """(loss, macro F1) of one split for model selection; NaN for both when a prediction is not finite."""
    probs, loss = predict(inputs, targets)
    if not np.isfinite(probs).all():
        return float("nan"), float("nan")
    return loss, macro_f1(targets.cpu().numpy(), probs.argmax(axis=1), predict.n_classes)


def evaluate_splits(predict: Predictor, splits: Mapping[str, tuple[torch.Tensor, torch.Tensor]], *,
                    class_names: Sequence[str], bins: int) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """The METRICS block of each split in ``splits`` ({side: (inputs, targets)}) and the arrays behind them
    (``<side>_probs``, ``<side>_labels``: the contents of predictions.npz)."""
    metrics, arrays = {}, {}
    for side, (inputs, targets) in splits.items():
        probs, loss = predict(inputs, targets)
        labels = targets.cpu().numpy()
        arrays[f"{side}_probs"], arrays[f"{side}_labels"] = probs, labels
        metrics[side] = classification_metrics(labels, probs, bins, loss, class_names)
    return metrics, arrays
