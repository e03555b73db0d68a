"""Entry points of the ``model-summary``, ``train-stage1`` and ``train`` subcommands (called by cli.py)."""

from __future__ import annotations

import json
import logging
import sys

from lossablation.errors import LossAblationError
from lossablation.io import ensure_writable_dir


def _setup_logging() -> None:
    """One line per event on stderr (the job log), unless the caller configured logging already."""
    root = logging.getLogger("lossablation")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False


def model_summary_main(stage1: str | None, as_json: bool, reduction: int = 4) -> int:
    """Print total / trainable / backbone / adapter / head parameter counts of the Stage-2 model."""
    from lossablation.model.networks import build_stage2_model, parameter_summary

    if reduction < 1:
        raise LossAblationError(f"--reduction: must be >= 1, got {reduction}")
    summary = parameter_summary(build_stage2_model(stage1, reduction))
    summary["adapter_reduction"] = reduction
    summary["stage1_checkpoint"] = stage1
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"Stage-2 model (adapter reduction {reduction}"
              + (f", backbone from {stage1}" if stage1 else ", random backbone") + ")")
        rows = [("total", summary["total"]), ("trainable", summary["trainable"]),
                ("backbone (frozen)", summary["backbone"]), ("adapters", summary["adapters"]),
                ("  layer3", summary["adapter_layer3"]), ("  layer4", summary["adapter_layer4"]),
                ("head", summary["head"])]
        for name, value in rows:
            print(f"  {name:<18} {value:>12,}")
        print(f"  trainable fraction {100 * summary['trainable_fraction']:>11.2f} %")
    return 0


def train_stage1_main(config_path: str, out_dir: str) -> int:
    from lossablation.config import load_config
    from lossablation.train.trainer import train_stage1

    _setup_logging()
    cfg = load_config(config_path)
    ensure_writable_dir(out_dir, "Stage-1 folder")
    metrics = train_stage1(cfg, out_dir)
    val = metrics["val"]["macro_f1"] if metrics["val"] else float("nan")
    logging.getLogger("lossablation").info("stage1: %s, selected epoch %s, val macro F1 %.4f -> %s",
                                           metrics["status"], metrics["selected_epoch"], val, out_dir)
    return 0


def train_main(config_path: str, arm: str, seed: int, stage1_path: str, out_dir: str) -> int:
    from lossablation.config import load_config
    from lossablation.train.trainer import train_stage2

    _setup_logging()
    cfg = load_config(config_path)
    ensure_writable_dir(out_dir, "run folder")
    metrics = train_stage2(cfg, arm, int(seed), stage1_path, out_dir)
    val = metrics["val"]["macro_f1"] if metrics["val"] else float("nan")
    test = metrics["test"]["macro_f1"] if metrics["test"] else float("nan")
    logging.getLogger("lossablation").info("%s/seed%s: %s, selected epoch %s, val macro F1 %.4f, test %.4f -> %s",
                                           arm, seed, metrics["status"], metrics["selected_epoch"], val, test,
                                           out_dir)
    return 0
