"""The epoch loop both stages share: train, validate, keep the best epoch, stop early, save a resumable state.

An epoch: one pass of optimizer steps (the stage's ``train_epoch``; its loss stays on the device and is read
once, which is also where finiteness is checked), validation (loss and macro F1), a scheduler step on the
validation macro F1, the history row, and the run state written atomically (``lossablation.train.state``).
Selection: the epoch with the best validation macro F1, the earliest on ties. A non-finite training or
validation loss ends the run with status ``diverged``; the epochs before it stand.

Resume: a rerun of a killed job restores weights, optimizer, scheduler, every RNG stream and the loop's
bookkeeping from ``state.pt`` and continues after the last completed epoch; it ends with the same results as
an uninterrupted run (bit-identical on CPU).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from lossablation.errors import LossAblationError
from lossablation.io import atomic_write_text, remove_stale_tmp
from lossablation.train.environment import rng_state, set_rng_state
from lossablation.train.state import load_state, save_state

log = logging.getLogger("lossablation.train.loop")


@dataclass(kw_only=True)
class LoopSpec:
    """What the epoch loop needs from a stage."""

    name: str                                                          # for log lines, e.g. "poly/seed2"
    train_epoch: Callable[[int], tuple[torch.Tensor, torch.Tensor]]   # -> (mean loss, all-finite flag) on device
    validate: Callable[[], tuple[float, float]]                        # -> (val loss, val macro F1)
    trainable_state: Callable[[], dict[str, torch.Tensor]]             # weights to keep for the best epoch
    load_trainable_state: Callable[[dict[str, torch.Tensor]], None]
    lrs: Callable[[], dict[str, float]]                                # history columns for learning rates
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    order_gen: torch.Generator
    max_epochs: int
    patience: int
    state_path: Path
    identity: dict[str, Any]                                           # whose state ``state_path`` may hold
    on_new_best: Callable[[int, float, list[dict]], None] | None = None


@dataclass(kw_only=True)
class LoopResult:
    status: str                      # completed | diverged
    history: list[dict]
    best_epoch: int | None
    best_f1: float | None
    best_state: dict[str, torch.Tensor] | None
    epochs_run: int
    resumed_from: int = 0


@dataclass
class _Progress:
    """The loop's bookkeeping after ``epoch`` (0: nothing done yet); what the run state carries besides weights."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_f1: float | None = None
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0
    epoch: int = 0
    finished: bool = False


def plateau_scheduler(optimizer: torch.optim.Optimizer,
                      section: Mapping[str, Any]) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """The scheduler of both stages: halve (``scheduler_factor``) the learning rates when the validation macro F1
    has not improved for ``scheduler_patience`` epochs (``section``: ``cfg["stage1"]`` or ``cfg["train"]``)."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=section["scheduler_factor"], patience=section["scheduler_patience"])


def run_epochs(spec: LoopSpec) -> LoopResult:
    """Train until max epochs, early stopping or divergence; resumable from ``spec.state_path``."""
    progress = _resume(spec)
    resumed_from = progress.epoch
    if progress.finished:
        return _result(progress, status="completed", epochs_run=progress.epoch, resumed_from=resumed_from)
    status = "completed"
    epoch = progress.epoch
    for epoch in range(progress.epoch + 1, spec.max_epochs + 1):
        if not _run_epoch(spec, progress, epoch):
            status, epoch = "diverged", epoch - 1
            break
        if progress.bad_epochs >= spec.patience:
            log.info("%s: early stopping after epoch %d (no improvement for %d epochs)", spec.name, epoch,
                     progress.bad_epochs)
            break
    return _result(progress, status=status, epochs_run=max(epoch, resumed_from), resumed_from=resumed_from)


def _result(progress: _Progress, *, status: str, epochs_run: int, resumed_from: int) -> LoopResult:
    return LoopResult(status=status, history=progress.history, best_epoch=progress.best_epoch,
                      best_f1=progress.best_f1, best_state=progress.best_state, epochs_run=epochs_run,
                      resumed_from=resumed_from)


def _run_epoch(spec: LoopSpec, progress: _Progress, epoch: int) -> bool:
    """One epoch: train, validate, select, log, save the state. False (and nothing recorded) when it diverged."""
    t0 = time.perf_counter()
    lrs = spec.lrs()
    loss_t, finite_t = spec.train_epoch(epoch)
    train_loss, finite = float(loss_t.item()), bool(finite_t.item())   # the one host sync of the epoch
    if not finite or not math.isfinite(train_loss):
        log.warning("%s: epoch %d: non-finite training loss; stopping (status diverged)", spec.name, epoch)
        return False
    val_loss, val_f1 = spec.validate()
    if not (math.isfinite(val_loss) and math.isfinite(val_f1)):
        log.warning("%s: epoch %d: non-finite validation loss; stopping (status diverged)", spec.name, epoch)
        return False
    spec.scheduler.step(val_f1)
    seconds = time.perf_counter() - t0
    progress.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_macro_f1": val_f1,
                             **lrs, "seconds": seconds})
    if progress.best_f1 is None or val_f1 > progress.best_f1:        # strict: the earliest epoch wins ties
        progress.best_epoch, progress.best_f1, progress.bad_epochs = epoch, val_f1, 0
        progress.best_state = spec.trainable_state()
        if spec.on_new_best is not None:
            spec.on_new_best(epoch, val_f1, progress.history)
    else:
        progress.bad_epochs += 1
    lr_text = " ".join(f"{k}={v:.3g}" for k, v in lrs.items())
    log.info("%s epoch %d: train_loss=%.5f val_loss=%.5f val_macro_f1=%.4f %s %.1fs%s", spec.name, epoch,
             train_loss, val_loss, val_f1, lr_text, seconds, " *" if progress.best_epoch == epoch else "")
    progress.epoch = epoch
    progress.finished = progress.bad_epochs >= spec.patience or epoch == spec.max_epochs
    _save(spec, progress)
    return True


def _save(spec: LoopSpec, progress: _Progress) -> None:
    save_state(spec.state_path, {
        "identity": spec.identity, "epoch": progress.epoch, "model": spec.trainable_state(),
        "optimizer": spec.optimizer.state_dict(), "scheduler": spec.scheduler.state_dict(),
        "rng": rng_state(spec.order_gen), "history": progress.history, "best_epoch": progress.best_epoch,
        "best_f1": progress.best_f1, "best_state": progress.best_state, "bad_epochs": progress.bad_epochs,
        "finished": progress.finished, "status": "completed",
    })


def _resume(spec: LoopSpec) -> _Progress:
    """Clean up after a killed write, then restore the run state of ``spec`` if there is one (see state.py)."""
    for tmp in remove_stale_tmp(spec.state_path):
        log.info("%s: removed %s, left by a killed write", spec.name, tmp.name)
    state = load_state(spec.state_path, spec.identity)
    if state is None:
        return _Progress()
    try:
        spec.load_trainable_state(state["model"])
        spec.optimizer.load_state_dict(state["optimizer"])
        spec.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"], spec.order_gen)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise LossAblationError(f"{spec.state_path}: resume state does not fit this run "
                                f"({type(exc).__name__}: {first[:160]}); delete it to start the run fresh") from None
    log.info("%s: resuming after epoch %d (best epoch %s)", spec.name, state["epoch"], state["best_epoch"])
    return _Progress(history=state["history"], best_epoch=state["best_epoch"], best_f1=state["best_f1"],
                     best_state=state["best_state"], bad_epochs=state["bad_epochs"], epoch=state["epoch"],
                     finished=bool(state["finished"]))


def progress_bar(name: str, epoch: int, i: int, n: int) -> None:
    """A progress bar on a terminal only (batch counter; no host sync)."""
    if n and sys.stderr.isatty() and (i == n or i % max(1, n // 50) == 0):
        filled = int(30 * i / n)
        sys.stderr.write(f"\r{name} epoch {epoch} [{'#' * filled}{'.' * (30 - filled)}] {i}/{n}")
        if i == n:
            sys.stderr.write("\r" + " " * 72 + "\r")
        sys.stderr.flush()


def write_history(path: Path, history: list[dict], columns: tuple[str, ...]) -> None:
    """``history.csv``: one row per completed epoch, floats written exactly (``repr``)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())
