"""Lock-based GPU slot allocator for local multi-GPU sweeps.

Snakemake's ``--resources gpu=N`` only *counts* GPUs: it lets N training jobs run at once but does not tell each
job which GPU to use, so all of them would land on GPU 0. ``acquire_gpu_slot`` closes that gap: each job takes
the first free slot by locking ``<lock_dir>/gpu<ID>.lock`` with ``fcntl.flock`` and sets
``CUDA_VISIBLE_DEVICES=<ID>`` for as long as it holds the lock.

Why fcntl locks: the kernel drops them when the holding process exits for any reason (crash, SIGKILL, OOM
kill), so a dead job never leaves a slot blocked and no stale-lock cleanup is needed. The lock files stay on
disk; their presence means nothing, only the lock does.

Under SLURM (``SLURM_JOB_ID`` set) the allocator does nothing: SLURM already set ``CUDA_VISIBLE_DEVICES`` for
the job's ``--gpus`` allocation. With no GPUs it does nothing either.

It must run before CUDA is initialised in the process: the CUDA runtime reads ``CUDA_VISIBLE_DEVICES`` once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sys
import time
from pathlib import Path
from typing import Iterator

from lossablation.errors import LossAblationError

ENV_LOCK_DIR = "LOSSABLATION_GPU_LOCK_DIR"
DEFAULT_LOCK_DIR = "results/.gpu_locks"
CUDA_ENV = "CUDA_VISIBLE_DEVICES"


def device_count() -> int:
    """Number of GPUs this process may use (torch's count).

    torch's count already honours a pre-set ``CUDA_VISIBLE_DEVICES`` and does not initialise CUDA.
    """
    import torch

    return torch.cuda.device_count()


def slot_device_ids(n_devices: int) -> list[str]:
    """Device ids the slots map to: ``0..n-1``, or the first n entries of a pre-set ``CUDA_VISIBLE_DEVICES``.

    With ``CUDA_VISIBLE_DEVICES=3,5`` slot 0 is device ``3`` and slot 1 is device ``5``, so a job never escapes
    the devices its parent was given.
    """
    preset = os.environ.get(CUDA_ENV)
    if preset is None or preset.strip() == "":
        return [str(i) for i in range(n_devices)]
    ids = [part.strip() for part in preset.split(",") if part.strip()]
    return ids[:n_devices]


def _try_lock(path: Path) -> int | None:
    """Open and exclusively flock ``path`` without blocking; return the fd, or None if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    # the pid is only for humans inspecting the folder; the lock itself is what counts
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _slot_lock_names(device_ids: list[str], runs_per_gpu: int) -> list[tuple[str, str]]:
    """(device id, lock file name) per slot, spread over the GPUs first: gpu0, gpu1, gpu0.1, gpu1.1, ..."""
    return [(d, f"gpu{d}.lock" if k == 0 else f"gpu{d}.{k}.lock") for k in range(runs_per_gpu) for d in device_ids]


def _claim_first_free(slots: list[tuple[str, str]], lock_dir: Path) -> tuple[str, int] | None:
    for device_id, name in slots:
        fd = _try_lock(lock_dir / name)
        if fd is not None:
            return device_id, fd
    return None


@contextlib.contextmanager
def acquire_gpu_slot(
    n_devices: int | None = None,
    *,
    lock_dir: str | os.PathLike | None = None,
    timeout: float | None = None,
    poll_s: float = 0.5,
    runs_per_gpu: int = 1,
) -> Iterator[str | None]:
    """Hold the first free GPU slot for the duration of the ``with`` block.

    Yields the device id written to ``CUDA_VISIBLE_DEVICES`` (e.g. ``"1"``), or None when nothing was done
    (under SLURM, or no GPUs). Waits, polling every ``poll_s`` seconds, while all slots are taken; after
    ``timeout`` seconds (None: wait forever) raises LossAblationError. On exit — normal or by exception — the
    lock is released and the previous ``CUDA_VISIBLE_DEVICES`` restored.

    ``n_devices`` defaults to :func:`device_count`; ``lock_dir`` to ``$LOSSABLATION_GPU_LOCK_DIR`` or
    ``results/.gpu_locks``. All processes sharing GPUs must use the same lock folder.

    ``runs_per_gpu`` > 1 packs several runs on one GPU (a Stage-2 run at batch 128 leaves most of a large GPU
    idle): there are ``n_devices * runs_per_gpu`` slots, filled across the GPUs first. Run Snakemake with
    ``--resources gpu=<n_devices * runs_per_gpu>`` so that many training jobs (each ``gpu=1``) run at once.
    """
    if runs_per_gpu < 1:
        raise ValueError(f"runs_per_gpu must be >= 1, got {runs_per_gpu}")  # the config's value is checked on load
    if os.environ.get("SLURM_JOB_ID"):
        yield None
        return
    if n_devices is None:
        n_devices = device_count()
    device_ids = slot_device_ids(n_devices)
    if not device_ids:
        yield None
        return
    _refuse_if_cuda_initialised()
    folder = Path(lock_dir or os.environ.get(ENV_LOCK_DIR) or DEFAULT_LOCK_DIR)
    folder.mkdir(parents=True, exist_ok=True)

    deadline = None if timeout is None else time.monotonic() + timeout
    slots = _slot_lock_names(device_ids, runs_per_gpu)
    while (claim := _claim_first_free(slots, folder)) is None:
        if deadline is not None and time.monotonic() >= deadline:
            raise LossAblationError(
                f"{folder}: no free GPU slot among devices {','.join(device_ids)} "
                f"({runs_per_gpu} per device) after {timeout:g} s"
            )
        time.sleep(poll_s)

    device_id, fd = claim
    previous = os.environ.get(CUDA_ENV)
    os.environ[CUDA_ENV] = device_id
    try:
        yield device_id
    finally:
        if previous is None:
            os.environ.pop(CUDA_ENV, None)
        else:
            os.environ[CUDA_ENV] = previous
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _refuse_if_cuda_initialised() -> None:
    """Setting CUDA_VISIBLE_DEVICES after CUDA initialisation silently has no effect; fail loudly instead."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise RuntimeError("acquire_gpu_slot must be entered before CUDA is initialised in this process")
