"""The commands: one typed function per ``lossablation`` subcommand and per Snakemake job.

Two callers, one layer: ``cli.py`` turns argparse options into keyword arguments, and each script under
``workflow/scripts/`` passes ``snakemake.input`` / ``output`` / ``params`` / ``threads`` / ``config`` explicitly
through :func:`lossablation.jobs.run_job`. A command returns 0 or raises :class:`LossAblationError`; both callers
print that as one line (:func:`error_line`) and exit with ``LossAblationError.exit_code`` (2).

``config`` is a sweep config file or an already loaded mapping (the workflow passes its validated ``config``).
This module is the one place that imports the library functions the commands call (lazily, so ``describe-data``
does not pay for torch or plotting libraries): a moved function is one import to fix here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from lossablation.errors import LossAblationError, safe_text

ConfigArg = str | os.PathLike | Mapping[str, Any]
PathArg = str | os.PathLike
log = logging.getLogger("lossablation.commands")


# ---------------------------------------------------------------------------------------------- output
@contextlib.contextmanager
def logging_to_stderr() -> Iterator[None]:
    """The one logging setup, for the duration of a command: ``HH:MM:SS LEVEL message`` lines on the current
    stderr (the job's log in a job); the package's INFO lines and every library's warnings."""
    root, package = logging.getLogger(), logging.getLogger("lossablation")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    level = package.level
    root.addHandler(handler)
    package.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        package.setLevel(level)


def error_line(prefix: str, exc: BaseException | str) -> str:
    """``prefix`` + the message as one printable line: control characters escaped, no prefix said twice.

    A message wrapped by several layers can repeat its culprit (``config: config: seeds: ...``); consecutive
    equal ``": "``-separated segments are said once.
    """
    segments = safe_text(f"{prefix}{exc}").split(": ")
    kept = [seg for i, seg in enumerate(segments) if i == 0 or seg != segments[i - 1]]
    return ": ".join(kept)


# ---------------------------------------------------------------------------------------------- config and data
def check_config(config: ConfigArg) -> int:
    """Validate a sweep config (schema + semantics + paths) and print a one-line summary."""
    from lossablation.config import load_config

    cfg = load_config(config)
    print(safe_text(f"{config}: ok ({len(cfg['losses'])} arms x {len(cfg['seeds'])} seeds)"))
    return 0


def workflow_config(config: Mapping[str, Any], *, files: Sequence[PathArg] = (),
                    command_line: Mapping[str, Any] | None = None) -> dict:
    """Snakefile: Snakemake's merged ``config`` validated and completed, or one line and exit status 2.

    ``files`` (the config files Snakemake merged) are re-read strictly and named in messages; ``command_line``
    are Snakemake's ``--config`` values (see :func:`lossablation.config.load_config`).
    """
    from lossablation.config import load_config

    try:
        return load_config(config, files=files, command_line=command_line)
    except LossAblationError as exc:
        print(error_line("lossablation: error: ", exc), file=sys.stderr, flush=True)
        sys.exit(LossAblationError.exit_code)


def describe_data(path: PathArg, as_json: bool = False) -> int:
    """Print a short table (or one JSON object) describing a v7 folder or an npz dataset."""
    from lossablation.data.describe import describe, format_description

    info = describe(path)
    print(json.dumps(info) if as_json else format_description(info))
    return 0


def make_dataset(*, inputs: Sequence[str], out: PathArg, cq: Sequence[int] | None = None,
                 cpu_used: int | None = None, cache: PathArg | None = None, max_frames: int | None = None,
                 variants: Sequence[str] | None = None, jobs: int | None = None) -> int:
    """Encode the inputs with aomenc, label 16x16 nodes from libaom's block sizes, write one npz.

    Options left ``None`` take the defaults of :func:`lossablation.data.make_dataset.make_dataset`.
    """
    from lossablation.data.make_dataset import make_dataset as encode_and_label

    chosen = {"cq_levels": None if cq is None else [int(q) for q in cq], "cpu_used": cpu_used, "cache": cache,
              "variants": None if variants is None else list(variants)}
    summary = encode_and_label(inputs=list(inputs), out=out, max_frames=max_frames, jobs=jobs,
                               **{key: value for key, value in chosen.items() if value is not None})
    counts = ", ".join(f"{name} {n}" for name, n in summary["partition_counts"].items())
    print(f"{summary['out']}: {summary['n_blocks']} blocks, {summary['n_sources']} sources ({counts})",
          file=sys.stderr)
    return 0


def split(config: ConfigArg, out: PathArg) -> int:
    """Write the sweep's train/val/test split for audit: ``split.json`` and ``split_indices.npz`` in ``out``."""
    from lossablation.config import load_config
    from lossablation.data.splits import write_split_audit

    write_split_audit(load_config(config), out)
    return 0


# ---------------------------------------------------------------------------------------------- models and training
def model_summary(stage1: PathArg | None = None, as_json: bool = False, reduction: int = 4) -> int:
    """Print total / trainable / backbone / adapter / head parameter counts of the Stage-2 model."""
    from lossablation.model.networks import build_stage2_model, parameter_summary

    if reduction < 1:
        raise LossAblationError(f"--reduction: must be >= 1, got {reduction}")
    summary = parameter_summary(build_stage2_model(stage1, reduction))
    summary["adapter_reduction"] = reduction
    summary["stage1_checkpoint"] = stage1
    rows = [("total", summary["total"]), ("trainable", summary["trainable"]),
            ("backbone (frozen)", summary["backbone"]), ("adapters", summary["adapters"]),
            ("  layer3", summary["adapter_layer3"]), ("  layer4", summary["adapter_layer4"]),
            ("head", summary["head"])]
    text = "\n".join([f"Stage-2 model (adapter reduction {reduction}"
                      + (f", backbone from {stage1})" if stage1 else ", random backbone)")]
                     + [f"  {name:<18} {value:>12,}" for name, value in rows]
                     + [f"  trainable fraction {100 * summary['trainable_fraction']:>11.2f} %"])
    print(json.dumps(summary, indent=2) if as_json else text)
    return 0


def train_stage1(config: ConfigArg, out: PathArg) -> int:
    """Train backbone + binary head (partitioned vs NONE) into ``out``."""
    from lossablation.config import load_config
    from lossablation.io import ensure_writable_dir
    from lossablation.train.stage1 import train_stage1 as fit_stage1

    cfg = load_config(config)
    ensure_writable_dir(out, "Stage-1 folder")
    metrics = fit_stage1(cfg, out_dir=out)
    val = metrics["val"]["macro_f1"] if metrics["val"] else float("nan")
    log.info("stage1: %s, selected epoch %s, val macro F1 %.4f -> %s", metrics["status"], metrics["selected_epoch"],
             val, out)
    return 0


def features(config: ConfigArg, stage1: PathArg, out: PathArg) -> int:
    """Compute the frozen-prefix features (h3) of every Stage-2 block of the split into the file ``out``."""
    from lossablation.config import load_config
    from lossablation.train.environment import set_cpu_threads, set_determinism, torch_device
    from lossablation.train.features import compute_features, save_features

    cfg = load_config(config)
    device = torch_device(cfg)
    set_determinism(cfg["train"]["deterministic"])
    set_cpu_threads(cfg["resources"]["stage1_cpus"])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    feats = compute_features(cfg, stage1, device)
    save_features(out, feats)
    sizes = ", ".join(f"{side} {f.y.shape[0]}" for side, f in feats.sides.items())
    log.info("features: h3 of the Stage-2 blocks (%s) -> %s", sizes, out)
    return 0


def train(config: ConfigArg, arm: str, seed: int | Sequence[int], stage1: PathArg, out: PathArg | Sequence[PathArg],
          features: PathArg | None = None) -> int:
    """Train the (arm, seed) Stage-2 run into the run folder ``out`` (resuming from its ``state.pt``); with several
    seeds and as many folders, train them together as one pack (``lossablation.train.pack``). ``features``: the
    frozen-prefix features file (rule features); without it they are computed here."""
    from lossablation.config import load_config
    from lossablation.io import ensure_writable_dir
    from lossablation.train.pack import train_stage2_pack

    seeds = [int(seed)] if isinstance(seed, (int, str)) else [int(s) for s in seed]
    outs = [out] if isinstance(out, (str, os.PathLike)) else list(out)
    if len(outs) != len(seeds) or len(set(seeds)) != len(seeds):
        raise LossAblationError(f"--out: one run folder per --seed and distinct seeds (got {len(seeds)} seeds, "
                                f"{len(outs)} folders)")
    cfg = load_config(config)
    if len(seeds) > cfg["train"]["runs_per_job"]:   # the pack size is part of each run's protocol (config hash)
        raise LossAblationError(f"--seed: {len(seeds)} seeds in one job, but train.runs_per_job is "
                                f"{cfg['train']['runs_per_job']}; set it to {len(seeds)} or more")
    for folder in outs:
        ensure_writable_dir(folder, "run folder")
    all_metrics = train_stage2_pack(cfg, arm, seeds, stage1, outs, features_path=features)
    for seed_, folder, metrics in zip(seeds, outs, all_metrics):
        val = metrics["val"]["macro_f1"] if metrics["val"] else float("nan")
        test = metrics["test"]["macro_f1"] if metrics["test"] else float("nan")
        log.info("%s/seed%s: %s, selected epoch %s, val macro F1 %.4f, test %.4f -> %s", arm, seed_,
                 metrics["status"], metrics["selected_epoch"], val, test, folder)
    return 0


# ---------------------------------------------------------------------------------------------- analysis
def aggregate(config: ConfigArg, runs: PathArg, out: PathArg, make_figures: bool = True) -> int:
    """Paired statistics, tables, verdicts (and figures) over every run under ``runs``; missing runs tolerated."""
    from lossablation.analysis.aggregate import aggregate as aggregate_runs
    from lossablation.config import load_config

    cfg = load_config(config, check_paths=False)  # the dataset is not read here
    aggregate_runs(cfg, runs, out, make_figures=make_figures)
    return 0


def figures(config: ConfigArg, runs: PathArg, out: PathArg) -> int:
    """Only the figures (the workflow draws them in their own rule, after the tables)."""
    from lossablation.analysis.aggregate import draw_sweep_figures
    from lossablation.config import load_config

    draw_sweep_figures(load_config(config, check_paths=False), runs, out)
    return 0


# ---------------------------------------------------------------------------------------------- one sweep per results
def lock_results(results: PathArg) -> None:
    """Snakefile ``onstart:``: take the results folder's sweep lock, or print one line and exit with status 2."""
    from lossablation import sweeplock

    try:
        stale = sweeplock.acquire(results)
    except LossAblationError as exc:
        print(error_line("lossablation: error: ", exc), file=sys.stderr, flush=True)
        sys.exit(LossAblationError.exit_code)
    if stale is not None:
        print(error_line("lossablation: ", f"removed the stale lock of a sweep that is gone: {stale.describe()}"),
              file=sys.stderr, flush=True)


def release_results(results: PathArg) -> None:
    """Snakefile ``onsuccess:`` / ``onerror:``: give the sweep lock back (only if this process holds it)."""
    from lossablation import sweeplock

    sweeplock.release(results)


def unlock(results: PathArg) -> int:
    """Remove the sweep lock of ``results`` left by a sweep that is gone (refused while it runs on this host)."""
    from lossablation import sweeplock

    removed = sweeplock.unlock(results)
    where = Path(results) / sweeplock.LOCK_NAME
    print(safe_text(f"{where}: removed the lock of {removed}" if removed else f"{where}: no lock, nothing to do"))
    return 0
