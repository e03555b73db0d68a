"""Stage-1 and Stage-2 trainers: resident data, resumable epochs, divergence handling, run-folder writing.

Performance choices (docs/performance.md): the data lives on the training device as tensors (no DataLoader);
each epoch's order comes from a seeded ``torch.Generator``; the per-batch loss is accumulated on the device
and read once per epoch (one host sync per epoch, which is also where finiteness is checked); evaluation
runs in large batches under ``torch.inference_mode``. In Stage 2 the frozen prefix (conv1 .. layer3 + SE3)
is computed once per split and each step runs the exact matrix-product path of ``lossablation.model.fastpath``.

Resume: at every epoch end the full training state (trainable weights, optimizer, scheduler, RNG states of
torch / numpy / python and the data-order generator, best epoch so far with its weights, history) is
written atomically to ``state.pt`` with an embedded sha256. A rerun of a killed job continues after the
last completed epoch and ends with the same metrics as an uninterrupted run (bit-identical on CPU).
An unreadable, corrupt or foreign state file is ignored with a log line (the run starts fresh).

Selection: the epoch with the best validation macro F1 (earliest on ties); every reported metric of the
run is recomputed from that epoch's weights.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import os
import platform
import random
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lossablation import __version__
from lossablation.classes import STAGE1_CLASSES, STAGE2_CLASSES
from lossablation.errors import LossAblationError
from lossablation.model.fastpath import FastStage2, compute_h3
from lossablation.io import atomic_write_json, atomic_write_text, atomic_write_with, sha256_file, \
    sha256_json
from lossablation.train.metrics import classification_metrics, macro_f1
from lossablation.model.networks import Stage1Model, Stage2Model, build_stage2_model, stage1_checkpoint_dict
from lossablation.train.steps import StepRunner, autocast, batch_slices, learning_rate, make_adamw

log = logging.getLogger("lossablation.train.trainer")

HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_macro_f1", "lr_adapter", "lr_head", "seconds")
STAGE1_HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_macro_f1", "lr", "seconds")

STATE_MAGIC = b"LOSSABLATION-STATE-1 "
KILL_AFTER_EPOCH_ENV = "LOSSABLATION_TEST_KILL_AFTER_EPOCH"      # test hook: SIGKILL after state k is written
KILL_DURING_WRITE_ENV = "LOSSABLATION_TEST_KILL_DURING_STATE_WRITE"  # test hook: SIGKILL before state k's rename
INJECT_OOM_ENV = "LOSSABLATION_INJECT_OOM"  # test hook: "arm/seed" raises out-of-memory when training starts


def inject_oom_fault(arm: str, seed: int) -> None:
    """Fault injection for the reliability tests: behave as a CUDA out-of-memory at the first step."""
    if os.environ.get(INJECT_OOM_ENV) == f"{arm}/{seed}":
        raise torch.OutOfMemoryError(f"simulated out of memory ({INJECT_OOM_ENV}={arm}/{seed})")


# --------------------------------------------------------------------------------------------- environment

def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when present, else cpu; an unavailable cuda device is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LossAblationError(f"device: {name!r} requested but no CUDA device is available")
    return torch.device(name)


def set_determinism(enabled: bool) -> None:
    """Deterministic algorithms (and the cuBLAS workspace setting they need) when ``enabled``.

    ``warn_only``: a few CUDA kernels have no deterministic version (the backward of the adaptive average
    pooling in Stage 1's ResNet and SE blocks); they warn once instead of stopping the run.
    """
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        warnings.filterwarnings("once", message=".*does not have a deterministic implementation.*")
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.benchmark = not enabled
    torch.backends.cudnn.deterministic = enabled


def use_cuda_graph(device: torch.device, tcfg: Mapping[str, Any]) -> bool:
    """Graph the training step on CUDA (``train.cuda_graphs``), unless ``torch.compile`` already does the step."""
    return device.type == "cuda" and bool(tcfg.get("cuda_graphs", True)) and not tcfg.get("compile", False)


def set_cpu_threads(threads: int | None) -> None:
    """Use the job's requested cores (``resources.train_cpus``) as torch's intra-op threads, at most the cores
    this process may run on (Snakemake caps a rule's threads at ``--cores`` the same way).

    More threads than free cores makes torch's spinning worker threads collapse (measured 10x slower on a
    busy 2-core machine, docs/performance.md); the Stage-2 step is small enough that 1-2 threads suffice.
    GPU jobs get the same cap: their CPU-side work (split, metrics) must leave the cores of the runs packed
    beside them (``resources.runs_per_gpu``) alone, instead of torch's default of one thread per core.
    """
    if threads:
        torch.set_num_threads(max(1, min(int(threads), len(os.sched_getaffinity(0)))))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def rng_state(order_gen: torch.Generator) -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "python": random.getstate(),
        "order": order_gen.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any], order_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(_as_tuple(state["python"]))
    order_gen.set_state(state["order"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(obj: Any) -> Any:
    return tuple(_as_tuple(o) for o in obj) if isinstance(obj, (list, tuple)) else obj


def package_versions() -> dict[str, str]:
    import sklearn
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "scikit-learn": sklearn.__version__, "lossablation": __version__}


def code_version() -> str:
    """Package version plus the git commit of the source tree when there is one."""
    root = Path(__file__).resolve().parents[3]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        commit = out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu ({torch.get_num_threads()} threads, {platform.machine()})"


# --------------------------------------------------------------------------------------------- state files

def save_state(path: Path, state: dict[str, Any], epoch: int) -> None:
    """Atomically write ``state`` with an embedded sha256 of the payload (see ``load_state``)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    header = STATE_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n"

    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            handle.write(header)
            handle.write(payload)
        if os.environ.get(KILL_DURING_WRITE_ENV) == str(epoch):  # test hook: die with the tmp file written
            os.kill(os.getpid(), signal.SIGKILL)

    atomic_write_with(path, writer)
    if os.environ.get(KILL_AFTER_EPOCH_ENV) == str(epoch):  # test hook: die right after state k is in place
        os.kill(os.getpid(), signal.SIGKILL)


def load_state(path: Path) -> dict[str, Any] | None:
    """The state in ``path``, or None (with a log line) when it is missing, torn, corrupt or unreadable."""
    if not path.exists():
        return None
    try:
        data = path.read_bytes()
        header, _, payload = data.partition(b"\n")
        if not header.startswith(STATE_MAGIC):
            raise ValueError("no state header")
        if hashlib.sha256(payload).hexdigest().encode() != header[len(STATE_MAGIC):]:
            raise ValueError("sha256 mismatch")
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - never crash on a bad state file: start fresh
        log.warning("%s: ignoring unusable resume state (%s: %s); starting fresh", path, type(exc).__name__, exc)
        return None


def remove_stale_tmp(folder: Path, name: str) -> None:
    """Delete temporary files a killed atomic write of ``name`` left behind."""
    for tmp in folder.glob(f".{name}.*.tmp"):
        try:
            tmp.unlink()
        except OSError:
            pass


# --------------------------------------------------------------------------------------------- epoch loop

@dataclass
class LoopSpec:
    """What the generic epoch loop needs from a stage."""

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
    identity: dict[str, Any]                                           # a state from another run is ignored
    name: str
    on_new_best: Callable[[int, float, list[dict]], None] | None = None


@dataclass
class LoopResult:
    status: str                      # completed | diverged
    history: list[dict]
    best_epoch: int | None
    best_f1: float | None
    best_state: dict[str, torch.Tensor] | None
    epochs_run: int
    resumed_from: int = 0
    extra: dict = field(default_factory=dict)


def run_epochs(spec: LoopSpec) -> LoopResult:
    """Train until max epochs, early stopping or divergence; resumable from ``spec.state_path``."""
    history: list[dict] = []
    best_epoch, best_f1, best_state, bad_epochs, start = None, None, None, 0, 1
    remove_stale_tmp(spec.state_path.parent, spec.state_path.name)
    state = load_state(spec.state_path)
    if state is not None and state.get("identity") != spec.identity:
        log.warning("%s: resume state belongs to another run configuration; starting fresh", spec.state_path)
        state = None
    if state is not None:
        spec.load_trainable_state(state["model"])
        spec.optimizer.load_state_dict(state["optimizer"])
        spec.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"], spec.order_gen)
        history, best_epoch, best_f1 = state["history"], state["best_epoch"], state["best_f1"]
        best_state, bad_epochs, start = state["best_state"], state["bad_epochs"], state["epoch"] + 1
        log.info("%s: resuming after epoch %d (best epoch %s)", spec.name, state["epoch"], best_epoch)
        if state.get("finished"):
            return LoopResult(state["status"], history, best_epoch, best_f1, best_state, state["epoch"], state["epoch"])
    resumed_from = start - 1
    status = "completed"
    epoch = start - 1
    for epoch in range(start, spec.max_epochs + 1):
        t0 = time.perf_counter()
        lrs = spec.lrs()
        loss_t, finite_t = spec.train_epoch(epoch)
        train_loss, finite = float(loss_t.item()), bool(finite_t.item())   # the one host sync of the epoch
        if not finite or not math.isfinite(train_loss):
            log.warning("%s: epoch %d: non-finite training loss; stopping (status diverged)", spec.name, epoch)
            status, epoch = "diverged", epoch - 1
            break
        val_loss, val_f1 = spec.validate()
        if not (math.isfinite(val_loss) and math.isfinite(val_f1)):
            log.warning("%s: epoch %d: non-finite validation loss; stopping (status diverged)", spec.name, epoch)
            status, epoch = "diverged", epoch - 1
            break
        spec.scheduler.step(val_f1)
        seconds = time.perf_counter() - t0
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_macro_f1": val_f1,
                        **lrs, "seconds": seconds})
        if best_f1 is None or val_f1 > best_f1:        # strict: the earliest epoch wins ties
            best_epoch, best_f1, best_state, bad_epochs = epoch, val_f1, spec.trainable_state(), 0
            if spec.on_new_best is not None:
                spec.on_new_best(epoch, val_f1, history)
        else:
            bad_epochs += 1
        lr_text = " ".join(f"{k}={v:.3g}" for k, v in lrs.items())
        log.info("%s epoch %d: train_loss=%.5f val_loss=%.5f val_macro_f1=%.4f %s %.1fs%s", spec.name, epoch,
                 train_loss, val_loss, val_f1, lr_text, seconds, " *" if best_epoch == epoch else "")
        stop = bad_epochs >= spec.patience
        save_state(spec.state_path, {
            "identity": spec.identity, "epoch": epoch, "model": spec.trainable_state(),
            "optimizer": spec.optimizer.state_dict(), "scheduler": spec.scheduler.state_dict(),
            "rng": rng_state(spec.order_gen), "history": history, "best_epoch": best_epoch, "best_f1": best_f1,
            "best_state": best_state, "bad_epochs": bad_epochs,
            "finished": stop or epoch == spec.max_epochs, "status": "completed",
        }, epoch)
        if stop:
            log.info("%s: early stopping after epoch %d (no improvement for %d epochs)", spec.name, epoch, bad_epochs)
            break
    return LoopResult(status, history, best_epoch, best_f1, best_state, max(epoch, resumed_from), resumed_from)


def progress(name: str, epoch: int, i: int, n: int) -> None:
    """A progress bar on a terminal only (batch counter; no host sync)."""
    if n and sys.stderr.isatty() and (i == n or i % max(1, n // 50) == 0):
        filled = int(30 * i / n)
        sys.stderr.write(f"\r{name} epoch {epoch} [{'#' * filled}{'.' * (30 - filled)}] {i}/{n}")
        if i == n:
            sys.stderr.write("\r" + " " * 72 + "\r")
        sys.stderr.flush()


def write_history(path: Path, history: list[dict], columns: tuple[str, ...]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


# --------------------------------------------------------------------------------------------- Stage 2

@dataclass
class Stage2Data:
    """One split restricted to Stage-2 blocks, resident on the device: h3 (N, 256) and targets (N,)."""

    h3: torch.Tensor
    y: torch.Tensor


def stage2_tensors(splits: Any, groups: Mapping[str, Any] | None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) per side with NONE (and ungrouped) blocks removed."""
    from lossablation.data.blocks import stage2_targets

    out = {}
    for side in ("train", "val", "test"):
        split = getattr(splits, side)
        y = stage2_targets(split.partition, groups)
        keep = y >= 0
        out[side] = (split.x[keep], y[keep])
    return out


@torch.inference_mode()
def predict_stage2(fast: FastStage2, data: Stage2Data, loss_fn: nn.Module, batch_size: int,
                   bf16: bool = False) -> tuple[np.ndarray, float]:
    """Softmax probabilities (N, 3) float64 and the mean loss (the training loss on this split)."""
    fast.model.eval()
    device = data.h3.device
    probs, loss_sum = [], torch.zeros((), dtype=torch.float64, device=device)
    for i in range(0, data.h3.shape[0], batch_size):
        with autocast(device, bf16):
            logits = fast(data.h3[i:i + batch_size])
        logits = logits.float()
        loss_sum += loss_fn.per_sample(logits, data.y[i:i + batch_size]).double().sum()
        probs.append(torch.softmax(logits, dim=1))
    n = max(1, data.h3.shape[0])
    p = torch.cat(probs).double().cpu().numpy() if probs else np.zeros((0, 3))
    return p, float(loss_sum.item()) / n


def train_stage2(cfg: Mapping[str, Any], arm: str, seed: int, stage1_path: str | os.PathLike,
                 out_dir: str | os.PathLike, splits: Any = None,
                 model_hook: Callable[[Stage2Model], None] | None = None) -> dict[str, Any]:
    """Train one (arm, seed) Stage-2 run into ``out_dir``; returns its metrics.json dict.

    ``splits`` may be given (tests); otherwise ``lossablation.data.blocks.make_splits(cfg)``. ``model_hook`` receives
    the trained model (selected weights loaded) at the end, for inspection.
    """
    from lossablation.train.losses import build_arm_loss

    t_start = time.perf_counter()
    if arm not in cfg["losses"]:
        raise LossAblationError(f"losses: no arm named {arm!r} (arms: {', '.join(cfg['losses'])})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tcfg = dict(cfg["train"])
    device = resolve_device(cfg.get("device", "auto"))
    set_determinism(bool(tcfg.get("deterministic", True)))
    set_cpu_threads((cfg.get("resources") or {}).get("train_cpus"))
    bf16 = bool(tcfg.get("bf16", False))
    stage1_sha = sha256_file(stage1_path)

    if splits is None:
        from lossablation.data.blocks import make_splits

        splits = make_splits(cfg)
    tensors = stage2_tensors(splits, cfg.get("classes"))
    train_counts = torch.bincount(tensors["train"][1], minlength=3)
    loss_fn = build_arm_loss(cfg["losses"][arm], train_counts.tolist(), tcfg["cb_beta"], tcfg["rebalance"],
                             key=f"losses.{arm}").to(device)

    seed_everything(seed)
    mcfg = cfg.get("model", {})
    model = build_stage2_model(stage1_path, mcfg.get("adapter_reduction", 4), mcfg.get("head_dropout", [0.4, 0.4]))
    model.to(device)
    fast = FastStage2(model).to(device)
    data = {side: Stage2Data(compute_h3(model, x.to(device), tcfg["eval_batch_size"]), y.to(device))
            for side, (x, y) in tensors.items()}
    step_forward = torch.compile(fast) if tcfg.get("compile", False) else fast
    graphed = use_cuda_graph(device, tcfg)
    optimizer = make_adamw(
        [{"params": list(model.adapters.parameters()), "lr": tcfg["lr_adapter"]},
         {"params": list(model.head.parameters()), "lr": tcfg["lr_head"]}],
        tcfg["weight_decay"], device, cuda_graph=graphed)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=tcfg["scheduler_factor"], patience=tcfg["scheduler_patience"])
    seed_everything(seed)                    # dropout stream starts from the seed, independent of model building
    order_gen = torch.Generator().manual_seed(seed)
    y_train_cpu = tensors["train"][1]
    use_sampler = tcfg["rebalance"] in ("sampler", "both")
    sample_weight = (1.0 / train_counts.double().clamp(min=1))[y_train_cpu] if use_sampler else None
    n_train = y_train_cpu.shape[0]
    train = data["train"]
    steps = StepRunner(step_forward, loss_fn, optimizer, train.h3, train.y, device, bf16, cuda_graph=graphed)

    def train_epoch(epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        model.train()
        if sample_weight is not None:        # class-balanced sampling with replacement (WeightedRandomSampler)
            order = torch.multinomial(sample_weight, n_train, replacement=True, generator=order_gen)
        else:
            order = torch.randperm(n_train, generator=order_gen)
        batches = batch_slices(order.to(device), tcfg["batch_size"])
        return steps.epoch(batches, on_batch=lambda i, n: progress(f"{arm}/seed{seed}", epoch, i, n))

    def validate() -> tuple[float, float]:
        probs, loss = predict_stage2(fast, data["val"], loss_fn, tcfg["eval_batch_size"], bf16)
        if not np.isfinite(probs).all():
            return float("nan"), float("nan")
        return loss, macro_f1(data["val"].y.cpu().numpy(), probs.argmax(axis=1), 3)

    def load_trainable(state: dict[str, torch.Tensor]) -> None:
        model.load_state_dict(state, strict=False)

    def lrs() -> dict[str, float]:
        return {"lr_adapter": learning_rate(optimizer.param_groups[0]),
                "lr_head": learning_rate(optimizer.param_groups[1])}

    hyper = hyperparameters_stage2(cfg, seed, device)
    identity = {"arm": arm, "seed": seed, "stage1_sha256": stage1_sha, "config_hash": sha256_json(cfg),
                "dataset_fingerprint": splits.info.get("fingerprint"), "n_train": int(n_train)}
    spec = LoopSpec(train_epoch, validate, model.trainable_state_dict, load_trainable, lrs, optimizer, scheduler,
                    order_gen, tcfg["max_epochs"], tcfg["patience"], out / "state.pt", identity, f"{arm}/seed{seed}")
    inject_oom_fault(arm, seed)
    result = run_epochs(spec)

    metrics: dict[str, Any] = {"arm": arm, "seed": seed, "status": result.status,
                               "selected_epoch": result.best_epoch, "epochs_run": result.epochs_run}
    val_m = test_m = None
    arrays = {}
    if result.best_state is not None:
        model.load_state_dict(result.best_state, strict=False)
        for side in ("val", "test"):
            probs, loss = predict_stage2(fast, data[side], loss_fn, tcfg["eval_batch_size"], bf16)
            labels = data[side].y.cpu().numpy()
            arrays[f"{side}_probs"], arrays[f"{side}_labels"] = probs, labels
            m = classification_metrics(labels, probs, cfg.get("calibration_bins", 15), loss, STAGE2_CLASSES)
            if side == "val":
                val_m = m
            else:
                test_m = m
    else:  # diverged before any finite epoch: empty predictions and no weights, so every declared output exists
        n_classes = len(STAGE2_CLASSES)
        for side in ("val", "test"):
            arrays[f"{side}_probs"] = np.zeros((0, n_classes), dtype=np.float32)
            arrays[f"{side}_labels"] = np.zeros((0,), dtype=np.int64)
    atomic_write_with(out / "predictions.npz", lambda p: _save_npz(p, arrays))
    atomic_write_with(out / "model.pt", lambda p: torch.save({
        "model_state_dict": result.best_state, "stage1_sha256": stage1_sha, "arm": arm, "seed": seed,
        "selected_epoch": result.best_epoch, "model": dict(mcfg)}, p))
    write_history(out / "history.csv", result.history, HISTORY_COLUMNS)
    metrics.update({
        "wall_time_s": time.perf_counter() - t_start,
        "val": val_m, "test": test_m,
        "train_class_counts": dict(zip(STAGE2_CLASSES, (int(c) for c in train_counts))),
        "class_weights": [float(w) for w in loss_fn.weight.tolist()],
        "hyperparameters": hyper,
        "loss": {"kind": cfg["losses"][arm]["kind"], "params": dict(loss_fn.params),
                 "weighting": cfg["losses"][arm].get("weighting", "class_balanced")},
        "provenance": {"config_hash": sha256_json(cfg), "code_version": code_version(),
                       "packages": package_versions(), "device": device_description(device),
                       "dataset_fingerprint": splits.info.get("fingerprint"),
                       "block_level_split": bool(splits.info.get("block_level")),
                       "stage1_sha256": stage1_sha, "resumed_from_epoch": result.resumed_from},
    })
    atomic_write_json(out / "metrics.json", metrics)
    (out / "state.pt").unlink(missing_ok=True)
    if model_hook is not None:
        model_hook(model)
    return metrics


def _save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    with open(path, "wb") as handle:   # a handle: numpy would append ".npz" to the tmp name
        np.savez(handle, **arrays)


def hyperparameters_stage2(cfg: Mapping[str, Any], seed: int, device: torch.device) -> dict[str, Any]:
    """Everything that shapes a Stage-2 run, as recorded in metrics.json."""
    return {"seed": seed, "device": str(device), **dict(cfg["train"]), "model": dict(cfg.get("model", {})),
            "split": dict(cfg.get("split", {})), "classes": {k: list(v) for k, v in (cfg.get("classes") or {}).items()},
            "calibration_bins": cfg.get("calibration_bins", 15), "optimizer": "AdamW",
            "scheduler": "ReduceLROnPlateau(mode=max, on val macro F1)", "selection": "best val macro F1, earliest",
            "threads": torch.get_num_threads()}


# --------------------------------------------------------------------------------------------- Stage 1

@torch.inference_mode()
def predict_stage1(model: Stage1Model, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                   channels_last: bool = False, bf16: bool = False) -> tuple[np.ndarray, float]:
    model.eval()
    device = x.device
    probs, loss_sum = [], torch.zeros((), dtype=torch.float64, device=device)
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size]
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast(device, bf16):
            logits = model(xb)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y[i:i + batch_size], reduction="sum").double()
        probs.append(torch.softmax(logits, dim=1))
    p = torch.cat(probs).double().cpu().numpy() if probs else np.zeros((0, 2))
    return p, float(loss_sum.item()) / max(1, x.shape[0])


def subsample(n: int, cap: int | None, seed: int) -> torch.Tensor | None:
    """Indices of a seeded random subset of size ``cap`` (sorted), or None when no cap applies."""
    if cap is None or cap >= n:
        return None
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:cap].sort().values


def train_stage1(cfg: Mapping[str, Any], out_dir: str | os.PathLike, splits: Any = None) -> dict[str, Any]:
    """Train backbone + binary head (NONE vs partitioned) into ``out_dir``: the v7-layout
    ``stage1_model_best.pt`` plus ``metrics.json`` and ``history.csv``. Returns the metrics dict."""
    from lossablation.data.blocks import stage1_targets

    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scfg = dict(cfg["stage1"])
    tcfg = cfg.get("train", {})
    device = resolve_device(cfg.get("device", "auto"))
    set_determinism(bool(tcfg.get("deterministic", True)))
    res = cfg.get("resources") or {}
    set_cpu_threads(res.get("stage1_cpus", res.get("train_cpus")))
    bf16 = bool(tcfg.get("bf16", False))
    channels_last = device.type == "cuda"   # measured: no gain on CPU at 16x16 (docs/performance.md)
    eval_bs = int(tcfg.get("eval_batch_size", 8192))
    seed = int(scfg.get("seed", 42))
    if splits is None:
        from lossablation.data.blocks import make_splits

        splits = make_splits(cfg)
    x_train, y_train = splits.train.x, stage1_targets(splits.train.partition)
    keep = subsample(x_train.shape[0], scfg.get("max_train_blocks"), seed)
    if keep is not None:
        x_train, y_train = x_train[keep], y_train[keep]
    x_train, y_train = x_train.to(device), y_train.to(device)
    x_val, y_val = splits.val.x.to(device), stage1_targets(splits.val.partition).to(device)
    x_test, y_test = splits.test.x.to(device), stage1_targets(splits.test.partition).to(device)

    seed_everything(seed)
    model = Stage1Model().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    graphed = use_cuda_graph(device, tcfg)
    optimizer = make_adamw(model.parameters(), scfg["weight_decay"], device, lr=scfg["lr"], cuda_graph=graphed)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=scfg["scheduler_factor"], patience=scfg["scheduler_patience"])
    order_gen = torch.Generator().manual_seed(seed)
    step_model = torch.compile(model) if tcfg.get("compile", False) else model
    n_train = x_train.shape[0]
    prepare = (lambda xb: xb.contiguous(memory_format=torch.channels_last)) if channels_last else None
    steps = StepRunner(step_model, F.cross_entropy, optimizer, x_train, y_train, device, bf16, prepare,
                       cuda_graph=graphed)
    ckpt_path = out / "stage1_model_best.pt"

    def train_epoch(epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        model.train()
        batches = batch_slices(torch.randperm(n_train, generator=order_gen).to(device), scfg["batch_size"])
        return steps.epoch(batches, on_batch=lambda i, n: progress("stage1", epoch, i, n))

    def validate() -> tuple[float, float]:
        probs, loss = predict_stage1(model, x_val, y_val, eval_bs, channels_last, bf16)
        if not np.isfinite(probs).all():
            return float("nan"), float("nan")
        return loss, macro_f1(y_val.cpu().numpy(), probs.argmax(axis=1), 2)

    def trainable_state() -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def on_new_best(epoch: int, f1: float, history: list[dict]) -> None:
        ckpt = stage1_checkpoint_dict(model, optimizer, scheduler, epoch, f1, history)
        atomic_write_with(ckpt_path, lambda p: torch.save(ckpt, p))

    identity = {"stage": 1, "config_hash": sha256_json({k: cfg.get(k) for k in ("stage1", "split", "dataset")}),
                "dataset_fingerprint": splits.info.get("fingerprint"), "n_train": int(n_train)}
    spec = LoopSpec(train_epoch, validate, trainable_state, lambda s: model.load_state_dict(s),
                    lambda: {"lr": learning_rate(optimizer.param_groups[0])}, optimizer, scheduler, order_gen,
                    scfg["max_epochs"], scfg["patience"], out / "state.pt", identity, "stage1", on_new_best)
    result = run_epochs(spec)

    val_m = test_m = None
    if result.best_state is not None:
        model.load_state_dict(result.best_state)
        if not ckpt_path.exists():  # e.g. resumed from a state written after the best epoch's checkpoint
            ckpt = stage1_checkpoint_dict(model, None, None, result.best_epoch, result.best_f1, result.history)
            atomic_write_with(ckpt_path, lambda p: torch.save(ckpt, p))
        bins = cfg.get("calibration_bins", 15)
        for side, (x, y) in {"val": (x_val, y_val), "test": (x_test, y_test)}.items():
            probs, loss = predict_stage1(model, x, y, eval_bs, channels_last, bf16)
            m = classification_metrics(y.cpu().numpy(), probs, bins, loss, STAGE1_CLASSES)
            val_m, test_m = (m, test_m) if side == "val" else (val_m, m)
    write_history(out / "history.csv", result.history, STAGE1_HISTORY_COLUMNS)
    metrics = {
        "stage": 1, "status": result.status, "selected_epoch": result.best_epoch, "epochs_run": result.epochs_run,
        "wall_time_s": time.perf_counter() - t_start, "val": val_m, "test": test_m,
        "n_train_blocks": int(n_train), "checkpoint_sha256": sha256_file(ckpt_path) if ckpt_path.exists() else None,
        "hyperparameters": {**scfg, "device": str(device), "optimizer": "AdamW", "loss": "cross_entropy",
                            "scheduler": f"ReduceLROnPlateau(mode=max, factor={scfg['scheduler_factor']}, "
                                         f"patience={scfg['scheduler_patience']}) on val macro F1",
                            "eval_batch_size": eval_bs, "channels_last": channels_last, "bf16": bf16},
        "provenance": {"config_hash": sha256_json(cfg), "code_version": code_version(),
                       "packages": package_versions(), "device": device_description(device),
                       "dataset_fingerprint": splits.info.get("fingerprint"),
                       "block_level_split": bool(splits.info.get("block_level")),
                       "resumed_from_epoch": result.resumed_from},
    }
    atomic_write_json(out / "metrics.json", metrics)
    (out / "state.pt").unlink(missing_ok=True)
    return metrics
