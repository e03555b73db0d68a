"""Running one command as a Snakemake job (used by the thin scripts in workflow/scripts/), and what each job
reads from the sweep config.

A job's stdout and stderr go to its ``log:`` file, a user error becomes one clear line in that log and exit
status 2 (the CLI's), an unexpected failure one line plus its traceback and status 1, and a CUDA job on a
multi-GPU workstation is pinned to a free GPU slot first. The scripts pass the command's arguments explicitly.

Reruns: a job reads the config only through its rule's ``params:`` (:func:`stage1_protocol`,
:func:`lossablation.train.provenance.run_protocol`, the split's sections), and its script rebuilds a complete config from those alone
(:func:`job_config`). So Snakemake's default ``params`` trigger reruns a job exactly when something it reads
changed: a protocol key every run, one arm's loss that arm's runs, a seed or an arm only the new runs.
"""

from __future__ import annotations

import contextlib
import re
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from lossablation.commands import error_line, logging_to_stderr
from lossablation.errors import LossAblationError


# ---------------------------------------------------------------------------------------------- what a job reads
# The keys of ``train`` that Stage 1 reads (evaluation batch, precision, compilation, determinism): a change of
# the Stage-2 optimisation (``train.lr_head``...) must not retrain Stage 1.
STAGE1_TRAIN_KEYS = ("eval_batch_size", "bf16", "compile", "cuda_graphs", "deterministic")
# A job that trains no arm (split, Stage 1) still needs a valid config, and every config has an arm.
NO_ARM = {"no_arm": {"kind": "cross_entropy"}}


def gpus_per_job(cfg: Mapping[str, Any]) -> int:
    """GPUs a training job (and Stage 1) requests: one, unless the config says ``device: cpu``.

    ``device: auto`` requests one too: it is resolved inside the job, on the machine that trains
    (:func:`lossablation.train.environment.torch_device`), not on the host that plans the sweep.
    """
    return 0 if cfg["device"] == "cpu" else 1


def gpu_request(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The GPU resources of a GPU job (Stage 1, features, training): ``gpu=1`` (SLURM ``--gpus=1``, and the local
    ``--resources gpu=N`` count), or with ``resources.gpu_gres`` set, ``gres=<it>`` and ``gpu=0`` (SLURM
    ``--gres``, for clusters that refuse ``--gpus``; the plugin refuses both at once). None when ``device: cpu``."""
    gpus = gpus_per_job(cfg)
    gres = cfg["resources"]["gpu_gres"]
    return {"gpu": 0, "gres": gres} if gpus and gres else {"gpu": gpus}


def split_protocol(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What the split (and the dataset fingerprint) depends on."""
    return {"dataset": cfg["dataset"], "split": cfg["split"], "classes": cfg["classes"]}


def stage1_protocol(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Everything Stage 1's numbers depend on: rule stage1's ``params``."""
    return {**split_protocol(cfg), "stage1": cfg["stage1"], "calibration_bins": cfg["calibration_bins"],
            "device": cfg["device"], "train": {key: cfg["train"][key] for key in STAGE1_TRAIN_KEYS}}


def features_protocol(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Everything the frozen-prefix features depend on besides the Stage-1 checkpoint (an input): rule features'
    ``params``."""
    return {**split_protocol(cfg), "device": cfg["device"],
            "train": {key: cfg["train"][key] for key in ("eval_batch_size", "deterministic")}}


def seed_packs(seeds: Sequence[int], runs_per_job: int) -> list[list[int]]:
    """The seeds each training job of an arm trains together: consecutive chunks of ``runs_per_job`` seeds."""
    seeds = [int(seed) for seed in seeds]
    return [seeds[i:i + runs_per_job] for i in range(0, len(seeds), runs_per_job)]


def pack_label(pack: Sequence[int]) -> str:
    """``seed3`` for a one-run job, ``seed1+2+3`` for a pack: the job's log and benchmark file names."""
    return "seed" + "+".join(str(seed) for seed in pack)


def train_jobs(arms: Sequence[str], seeds: Sequence[int], runs_per_job: int) -> list[tuple[str, str, list[int]]]:
    """(rule name, arm, seeds) of every training job of the sweep. Names are ``train_<arm>_<seeds>`` made of
    word characters (Snakemake prints them in its job table), with a number appended should two arms' names
    differ only in other characters."""
    jobs, taken = [], set()
    for arm in arms:
        for pack in seed_packs(seeds, runs_per_job):
            name = re.sub(r"\W", "_", f"train_{arm}_{pack_label(pack)}")
            base, n = name, 1
            while name in taken:
                n += 1
                name = f"{base}_{n}"
            taken.add(name)
            jobs.append((name, arm, pack))
    return jobs


def job_config(protocol: Mapping[str, Any], **keys: Any) -> dict:
    """A complete config for one job from its rule's ``params`` (``protocol``) and ``keys`` (``losses``,
    ``resources``...); the schema's defaults fill the rest when the command loads it."""
    return {"losses": NO_ARM, "baseline": next(iter(NO_ARM)), **protocol, **keys}


def stage2_config(protocol: Mapping[str, Any], *, arm: str, seeds: Sequence[int], threads: int) -> dict:
    """The config of one training job from its rule's ``params.protocol``: its arm is the only arm, its seeds
    (its pack) the only seeds."""
    sections = {key: value for key, value in protocol.items() if key != "loss"}
    return job_config(sections, losses={arm: protocol["loss"]}, baseline=arm, seeds=[int(s) for s in seeds],
                      resources={"train_cpus": int(threads)})


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
