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
    dropout_gen: torch.Generator | None = None    # a pack member's own stream for torch's global generator


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
    status: str = "completed"        # "diverged" once an epoch's loss was not finite (then ``finished``)


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
    while not progress.finished:
        _run_epoch(spec, progress, progress.epoch + 1)
    return _result(progress, resumed_from=resumed_from)


def run_packed_epochs(specs: list[LoopSpec],
                      train_members: Callable[[int, list[int]], tuple[torch.Tensor, torch.Tensor]]
                      ) -> list[LoopResult]:
    """The epoch loop of several runs trained together (``lossablation.train.pack``): each epoch one shared
    pass of optimizer steps, ``train_members(epoch, members)`` -> (mean loss per member, all-finite flag per
    member) on the device, then each member's own validation, scheduler, selection, early stopping and state
    (the same bookkeeping as :func:`run_epochs`). A member that stops (early, at max epochs, or diverged) leaves
    the pack; the others go on. After a kill, each member resumes from its own state; a member whose state is
    an epoch behind the others (killed between two members' state writes) trains alone until it catches up."""
    progress = [_resume(spec) for spec in specs]
    resumed_from = [p.epoch for p in progress]
    while True:
        active = [k for k, p in enumerate(progress) if not p.finished]
        if not active:
            break
        epoch = min(progress[k].epoch for k in active) + 1
        members = [k for k in active if progress[k].epoch + 1 == epoch]
        t0 = time.perf_counter()
        lrs = [specs[k].lrs() for k in members]
        losses, finite = train_members(epoch, members)
        losses, finite = losses.tolist(), finite.tolist()    # the one host sync of the epoch
        train_seconds = time.perf_counter() - t0
        for i, k in enumerate(members):
            _finish_epoch(specs[k], progress[k], epoch, lrs=lrs[i], train_loss=losses[i], finite=finite[i],
                          t0=time.perf_counter() - train_seconds)
    return [_result(p, resumed_from=r) for p, r in zip(progress, resumed_from)]


def _result(progress: _Progress, *, resumed_from: int) -> LoopResult:
    return LoopResult(status=progress.status, history=progress.history, best_epoch=progress.best_epoch,
                      best_f1=progress.best_f1, best_state=progress.best_state,
                      epochs_run=max(progress.epoch, resumed_from), resumed_from=resumed_from)


def _run_epoch(spec: LoopSpec, progress: _Progress, epoch: int) -> None:
    """One epoch: train, then :func:`_finish_epoch`."""
    t0 = time.perf_counter()
    lrs = spec.lrs()
    loss_t, finite_t = spec.train_epoch(epoch)
    _finish_epoch(spec, progress, epoch, lrs=lrs, train_loss=float(loss_t.item()),   # the one host sync
                  finite=bool(finite_t.item()), t0=t0)


def _finish_epoch(spec: LoopSpec, progress: _Progress, epoch: int, *, lrs: dict[str, float], train_loss: float,
                  finite: bool, t0: float) -> None:
    """After an epoch's training pass: validate, step the scheduler, select, log, save the state. A non-finite
    training or validation loss ends the run as ``diverged`` (that epoch is not recorded; the state says so)."""
    if not finite or not math.isfinite(train_loss):
        log.warning("%s: epoch %d: non-finite training loss; stopping (status diverged)", spec.name, epoch)
        return _diverged(spec, progress)
    val_loss, val_f1 = spec.validate()
    if not (math.isfinite(val_loss) and math.isfinite(val_f1)):
        log.warning("%s: epoch %d: non-finite validation loss; stopping (status diverged)", spec.name, epoch)
        return _diverged(spec, progress)
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
    if progress.bad_epochs >= spec.patience:
        log.info("%s: early stopping after epoch %d (no improvement for %d epochs)", spec.name, epoch,
                 progress.bad_epochs)
    _save(spec, progress)


def _diverged(spec: LoopSpec, progress: _Progress) -> None:
    """The run ends as ``diverged``; the epochs before stand, and a rerun of the job does not train it again."""
    progress.status, progress.finished = "diverged", True
    _save(spec, progress)


def _save(spec: LoopSpec, progress: _Progress) -> None:
    save_state(spec.state_path, {
        "identity": spec.identity, "epoch": progress.epoch, "model": spec.trainable_state(),
        "optimizer": spec.optimizer.state_dict(), "scheduler": spec.scheduler.state_dict(),
        "rng": rng_state(spec.order_gen, spec.dropout_gen), "history": progress.history, "best_epoch": progress.best_epoch,
        "best_f1": progress.best_f1, "best_state": progress.best_state, "bad_epochs": progress.bad_epochs,
        "finished": progress.finished, "status": progress.status,
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
        set_rng_state(state["rng"], spec.order_gen, spec.dropout_gen)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise LossAblationError(f"{spec.state_path}: resume state does not fit this run "
                                f"({type(exc).__name__}: {first[:160]}); delete it to start the run fresh") from None
    log.info("%s: resuming after epoch %d (best epoch %s)", spec.name, state["epoch"], state["best_epoch"])
    return _Progress(history=state["history"], best_epoch=state["best_epoch"], best_f1=state["best_f1"],
                     best_state=state["best_state"], bad_epochs=state["bad_epochs"], epoch=state["epoch"],
                     finished=bool(state["finished"]), status=str(state["status"]))


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
