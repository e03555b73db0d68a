"""Running one command as a Snakemake job (used by the thin scripts in workflow/scripts/).

A job's stdout and stderr go to its ``log:`` file, a user error becomes one clear line in that log and exit
status 2 (the CLI's), an unexpected failure one line plus its traceback and status 1, and a CUDA job on a
multi-GPU workstation is pinned to a free GPU slot first. The scripts pass the command's arguments explicitly.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from lossablation.commands import error_line, logging_to_stderr
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


def _gpu_slot(snakemake, gpu: bool):
    """A free local GPU slot when the rule requested one (``resources: gpu``) and no SLURM allocation set
    CUDA_VISIBLE_DEVICES already. The decision must not touch CUDA: once CUDA is initialised,
    CUDA_VISIBLE_DEVICES no longer has any effect."""
    if not gpu or int(snakemake.resources.get("gpu", 0)) <= 0:
        return contextlib.nullcontext()
    from lossablation.gpuslots import acquire_gpu_slot

    return acquire_gpu_slot(runs_per_gpu=int(snakemake.config["resources"]["runs_per_gpu"]))


def run_job(snakemake, command: Callable[..., object], *, gpu: bool = False, **arguments: Any) -> None:
    """Run ``command(**arguments)`` with the job's log attached (and a GPU slot if ``gpu``); exit non-zero on failure.

    ``snakemake`` supplies only the job's surroundings (``log``, ``resources``, ``config["resources"]``); what the
    command works on comes in ``arguments``.
    """
    log_path = snakemake.log[0] if len(snakemake.log) else None
    with _log_to(log_path), logging_to_stderr():
        try:
            with _gpu_slot(snakemake, gpu):
                command(**arguments)
        except LossAblationError as exc:
            print(error_line("error: ", exc), file=sys.stderr, flush=True)
            sys.exit(LossAblationError.exit_code)
        except Exception as exc:  # an unexpected failure (e.g. out of memory): say what, keep the trace
            print(error_line("error: job failed: ", f"{type(exc).__name__}: {exc}"), file=sys.stderr, flush=True)
            traceback.print_exc()
            sys.exit(1)
