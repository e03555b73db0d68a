"""The process a training job runs in: device, determinism, CPU threads, seeding and the RNG states of a run.

``rng_state`` / ``set_rng_state`` capture and restore every random stream a run draws from (torch, numpy,
python, the data-order generator, CUDA when present) as tensors and plain Python values, so the run state
(``lossablation.train.state``) loads with ``torch.load(weights_only=True)``.

Device (docs/cluster.md, "GPUs"): ``device: auto`` is resolved here, inside the job, on the machine that trains.
When a GPU was given to the job (SLURM's ``--gpus``/``--gres`` or the local slot allocator set
``CUDA_VISIBLE_DEVICES``) but CUDA cannot use it, ``auto`` trains on CPU with a WARNING line in the job's log and
``gpu_requested_but_cpu_used`` in the run's provenance; ``device: cuda`` fails with one line instead.
"""

from __future__ import annotations

import logging
import os
import platform
import random
import warnings
from typing import Any, Mapping

import numpy as np
import torch

from lossablation.config import training_device
from lossablation.errors import LossAblationError

log = logging.getLogger(__name__)
# Set by SLURM for a job allocated GPUs (--gpus / --gres=gpu), or by lossablation.gpuslots for a local slot.
GPU_ALLOCATION_ENV = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS")
NO_GPU_VALUES = ("", "-1", "NoDevFiles")   # how CUDA_VISIBLE_DEVICES (and SLURM) say "no device"


def gpu_allocation() -> str | None:
    """``NAME=value`` of the first variable saying a GPU was given to this process, or None."""
    for name in GPU_ALLOCATION_ENV:
        value = os.environ.get(name, "").strip()
        if value not in NO_GPU_VALUES:
            return f"{name}={value}"
    return None


def gpu_requested_but_cpu_used(cfg: Mapping[str, Any], device: torch.device) -> bool:
    """``device: auto`` trained on CPU although a GPU was given to the job (recorded in the provenance)."""
    return cfg["device"] == "auto" and device.type == "cpu" and gpu_allocation() is not None


def torch_device(cfg: Mapping[str, Any]) -> torch.device:
    """The training device of ``cfg`` (``device: auto`` resolved by ``config.training_device``, here, on the
    machine that trains); a CUDA device on a machine without one is a config error. ``auto`` on a job given a
    GPU that CUDA cannot use trains on CPU, saying so in a WARNING line."""
    name = training_device(cfg)
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LossAblationError(f"device: {name!r} requested but no CUDA device is available")
    device = torch.device(name)
    if gpu_requested_but_cpu_used(cfg, device):
        log.warning("device: auto: a GPU was allocated to this job (%s) but CUDA cannot use it; training on CPU "
                    "(recorded as gpu_requested_but_cpu_used; `device: cuda` makes this an error, `device: cpu` "
                    "requests no GPU)", gpu_allocation())
    return device


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
    return device.type == "cuda" and bool(tcfg["cuda_graphs"]) and not tcfg["compile"]


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


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu ({torch.get_num_threads()} threads, {platform.machine()})"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def rng_state(order_gen: torch.Generator, torch_gen: torch.Generator | None = None) -> dict[str, Any]:
    """Every random stream of the run, as tensors and plain ints / floats / strings. ``torch_gen``: the run's own
    generator standing for torch's global one (a member of a pack draws its dropout masks from it)."""
    name, keys, pos, has_gauss, cached_gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state() if torch_gen is None else torch_gen.get_state(),
        "numpy": (str(name), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached_gauss)),
        "python": random.getstate(),
        "order": order_gen.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any], order_gen: torch.Generator,
                  torch_gen: torch.Generator | None = None) -> None:
    if torch_gen is None:
        torch.set_rng_state(state["torch"])
    else:
        torch_gen.set_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(_as_tuple(state["python"]))
    order_gen.set_state(state["order"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(obj: Any) -> Any:
    return tuple(_as_tuple(o) for o in obj) if isinstance(obj, (list, tuple)) else obj
