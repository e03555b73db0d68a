"""Where a run's numbers came from: the ``provenance`` block of metrics.json, one function for both stages."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from lossablation import __version__
from lossablation.io import sha256_json
from lossablation.train.environment import device_description


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


def run_provenance(*, cfg: Mapping[str, Any], device: torch.device, split_info: Mapping[str, Any],
                   resumed_from: int, stage1_sha256: str | None = None) -> dict[str, Any]:
    """Config hash, code version, packages, device, dataset fingerprint, whether the split is block-level,
    the Stage-1 checkpoint (Stage 2 only) and the epoch a resumed run continued after (0: not resumed)."""
    block = {"config_hash": sha256_json(cfg), "code_version": code_version(), "packages": package_versions(),
             "device": device_description(device), "dataset_fingerprint": split_info.get("fingerprint"),
             "block_level_split": bool(split_info.get("block_level"))}
    if stage1_sha256 is not None:
        block["stage1_sha256"] = stage1_sha256
    block["resumed_from_epoch"] = resumed_from
    return block
