"""Running one package step as a Snakemake job (used by the thin scripts in workflow/scripts/).

A job's stdout and stderr go to its ``log:`` file, a user error becomes one clear line in that log and a
non-zero exit, and a CUDA job on a multi-GPU workstation is pinned to a free GPU slot first.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from pathlib import Path
from typing import Callable

from lossablation.errors import LossAblationError


def _log_to(path: str | None):
    if not path:
        return contextlib.nullcontext()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a", buffering=1, encoding="utf-8")
    stack = contextlib.ExitStack()
    stack.callback(handle.close)
    stack.enter_context(contextlib.redirect_stdout(handle))
    stack.enter_context(contextlib.redirect_stderr(handle))
    return stack


def run_job(snakemake, step: Callable[[], object], gpu: bool = False) -> None:
    """Run ``step()`` with the job's log attached; exit 1 with one line on failure.

    ``gpu=True`` pins the job to a free local GPU slot when its rule requested one (``resources: gpu``) and the
    job does not already run inside a SLURM allocation (SLURM sets CUDA_VISIBLE_DEVICES itself). The decision
    must not touch CUDA: once CUDA is initialised, CUDA_VISIBLE_DEVICES no longer has any effect.
    """
    log_path = snakemake.log[0] if len(snakemake.log) else None
    with _log_to(log_path):
        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s", force=True
        )
        try:
            if gpu and int(snakemake.resources.get("gpu", 0)) > 0:
                from lossablation.gpuslots import acquire_gpu_slot

                runs_per_gpu = int(snakemake.config.get("resources", {}).get("runs_per_gpu", 1))
                with acquire_gpu_slot(runs_per_gpu=runs_per_gpu):
                    step()
            else:
                step()
        except LossAblationError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            sys.exit(1)
        except Exception as exc:  # an unexpected failure (e.g. out of memory): say what, keep the trace
            print(f"error: job failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            traceback.print_exc()
            sys.exit(1)
