"""Where a run's numbers came from: the ``provenance`` block of metrics.json, one function for both stages.

A Stage-2 run also records ``hashes`` of what its numbers depend on (:func:`run_hashes`): its arm's loss, the
shared protocol, the split, the dataset fingerprint and the Stage-1 checkpoint, so that the aggregation can refuse
to pool runs of different configurations (:func:`lossablation.analysis.pooling.check_poolable`).
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from lossablation import __version__
from lossablation.io import sha256_json
from lossablation.train.environment import device_description, gpu_requested_but_cpu_used

# Keys of an arm that describe it for the report (plan hypotheses), not how it trains: never in a run's protocol.
NOT_PROTOCOL = ("hypothesis",)
# The config sections every Stage-2 run of a sweep shares and its numbers depend on (with the arm's loss).
PROTOCOL_SECTIONS = ("train", "model", "split", "classes", "dataset", "calibration_bins", "device")


def package_versions() -> dict[str, str]:
    import sklearn
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "scikit-learn": sklearn.__version__, "lossablation": __version__}


def code_version() -> str:
    """Package version plus the git commit of the source tree when there is one."""
    root = Path(__file__).resolve().parents[3]   # <root>/src/lossablation/train/provenance.py
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        commit = out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


def run_protocol(cfg: Mapping[str, Any], arm: str) -> dict[str, Any]:
    """The part of the config a Stage-2 run's numbers depend on: its arm's loss (without the report-only keys,
    :data:`NOT_PROTOCOL`) and the shared :data:`PROTOCOL_SECTIONS`. Not the other arms, the seed list or
    ``resources``. Rule train's ``params`` (so a change of it, and only of it, retrains the run) and the source of
    the run's hashes. (Kept importable without the trainer: the Snakefile calls it while it plans.)"""
    loss = {key: value for key, value in cfg["losses"][arm].items() if key not in NOT_PROTOCOL}
    return {"loss": loss, **{key: cfg[key] for key in PROTOCOL_SECTIONS}}


def run_hashes(cfg: Mapping[str, Any], arm: str, *, dataset_fingerprint: str | None,
               stage1_sha256: str | None) -> dict[str, Any]:
    """What a Stage-2 run's numbers depend on, as hashes a sweep's runs must share (all but ``loss``, which
    runs of one arm share): the shared protocol, the arm's loss, the split, the dataset, the Stage-1 weights."""
    protocol = run_protocol(cfg, arm)
    return {"protocol": sha256_json({key: value for key, value in protocol.items() if key != "loss"}),
            "loss": sha256_json(protocol["loss"]),
            "split": sha256_json({"split": cfg["split"], "classes": cfg["classes"]}),
            "dataset_fingerprint": dataset_fingerprint, "stage1_sha256": stage1_sha256}


def _single_arm(cfg: Mapping[str, Any]) -> str | None:
    """The arm of a one-arm config (a workflow job's, ``lossablation.jobs.stage2_config``), else None."""
    arms = list(cfg.get("losses", {}))
    return arms[0] if len(arms) == 1 else None


def run_provenance(*, cfg: Mapping[str, Any], device: torch.device, split_info: Mapping[str, Any],
                   resumed_from: int, stage1_sha256: str | None = None, arm: str | None = None,
                   pack: list[int] | None = None) -> dict[str, Any]:
    """Config hash, code version, packages, device (and whether a GPU given to the job went unused), dataset
    fingerprint, whether the split is block-level, the Stage-1 checkpoint (Stage 2 only), the epoch a resumed
    run continued after (0: not resumed), for a Stage-2 run (``arm``, or the only arm of ``cfg``) its hashes, and
    for a run trained in a pack (``train.runs_per_job`` > 1) the seeds of its pack."""
    block = {"config_hash": sha256_json(cfg), "code_version": code_version(), "packages": package_versions(),
             "device": device_description(device),
             "gpu_requested_but_cpu_used": gpu_requested_but_cpu_used(cfg, device),
             "dataset_fingerprint": split_info.get("fingerprint"),
             "block_level_split": bool(split_info.get("block_level"))}
    if stage1_sha256 is not None:
        block["stage1_sha256"] = stage1_sha256
        arm = arm or _single_arm(cfg)
        if arm is not None:
            block["hashes"] = run_hashes(cfg, arm, dataset_fingerprint=split_info.get("fingerprint"),
                                         stage1_sha256=stage1_sha256)
    block["resumed_from_epoch"] = resumed_from
    if pack is not None:
        block["pack"] = {"seeds": [int(s) for s in pack], "runs_per_job": cfg["train"]["runs_per_job"]}
    return block
