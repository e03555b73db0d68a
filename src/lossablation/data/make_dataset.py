"""make-dataset: real libaom partition decisions for 16x16 luma blocks, written as one npz.

Pipeline (the demo's settings and results: ``resources/demo/README.md``; the npz format: ``config/README.md``):

1. :func:`lossablation.data.aomtools.prepare_tools` provides ``aomenc`` and libaom's ``inspect`` (built once).
2. Every input becomes luma clips (:mod:`lossablation.data.clips`); each clip is encoded with ``aomenc`` at
   several cq levels and decoded by ``inspect -bs`` into a block-size map per frame.
3. :func:`lossablation.data.av1labels.derive_partition_labels` turns each map into 16x16 partition ids by the
   reference rules; a pattern outside those rules raises, it is never skipped.
4. Pixels come from the SOURCE luma (not the reconstruction); everything goes into one compressed npz, read back
   by :func:`lossablation.data.blocks.load_dataset`.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from lossablation.classes import PARTITION_NAMES
from lossablation.data.aomtools import Tools, prepare_tools, run_tool
from lossablation.data.av1labels import derive_partition_labels
from lossablation.data.blocks import BlockSet, save_npz
from lossablation.data.clips import Clip, load_clips, write_y4m
from lossablation.errors import LossAblationError


def encoder_args(cq: int, cpu_used: int) -> list[str]:
    """aomenc's arguments: one pass, constant quality ``cq``, no look-ahead, one thread (deterministic output)."""
    return ["--ivf", "--good", "--passes=1", "--end-usage=q", f"--cq-level={cq}", f"--cpu-used={cpu_used}",
            "--lag-in-frames=0", "--threads=1"]


def inspect_block_sizes(tools: Tools, ivf: Path, where: str) -> list[dict]:
    """Shown frames of ``inspect -bs``: dicts with ``blockSize`` (np array), ``baseQIndex``, ``frame``."""
    out = run_tool([tools.inspect, ivf, "-bs"], f"{where}: inspect")
    try:
        frames = [f for f in json.loads(out) if f is not None]
    except json.JSONDecodeError as exc:
        raise LossAblationError(f"{where}: inspect printed no valid JSON ({exc})") from None
    return [f for f in frames if f.get("showFrame", 1)]


def encode_and_label(tools: Tools, clip: Clip, *, cq: int, cpu_used: int, workdir: Path) -> dict[str, np.ndarray]:
    """Encode one clip at one cq level; return per-block arrays for every 16x16 node of every frame."""
    where = f"{clip.source}/{clip.variant}/cq{cq}"
    stem = f"{clip.source}-{clip.variant}-cq{cq}"
    y4m, ivf = workdir / f"{stem}.y4m", workdir / f"{stem}.ivf"
    write_y4m(y4m, clip.frames)
    t, h, w = clip.frames.shape
    run_tool([tools.aomenc, *encoder_args(cq, cpu_used), f"--limit={t}", "-o", ivf, y4m], f"{where}: aomenc")
    frames = inspect_block_sizes(tools, ivf, where)
    if len(frames) != t:
        raise LossAblationError(f"{where}: decoded {len(frames)} shown frames for {t} source frames")
    out: dict[str, list] = {k: [] for k in ("blocks", "partition", "qindex", "frame", "position")}
    for k, info in enumerate(frames):
        bsize = np.asarray(info["blockSize"], dtype=np.int64)
        if bsize.shape[0] < h // 4 or bsize.shape[1] < w // 4:
            raise LossAblationError(f"{where}: frame {k}: block-size map {bsize.shape} smaller than the frame")
        labels = derive_partition_labels(bsize[:h // 4, :w // 4], f"{where}: frame {k}")
        rows, cols = np.nonzero(labels >= 0)
        luma = clip.frames[k]
        tiles = luma.reshape(h // 16, 16, w // 16, 16).transpose(0, 2, 1, 3)
        out["blocks"].append(tiles[rows, cols][:, None])
        out["partition"].append(labels[rows, cols])
        out["qindex"].append(np.full(rows.shape[0], int(info["baseQIndex"])))
        out["frame"].append(np.full(rows.shape[0], k))
        out["position"].append(np.stack([rows * 16, cols * 16], axis=1))
    os.unlink(y4m)
    os.unlink(ivf)
    return {key: np.concatenate(val) for key, val in out.items()}


def _check_request(inputs: Sequence[str], out: str | os.PathLike, cq_levels: Sequence[int], cpu_used: int,
                   max_frames: int | None) -> None:
    """The command-line values, checked before any tool is prepared or any input read."""
    if not inputs:
        raise LossAblationError("make-dataset: no inputs")
    for cq in cq_levels:
        if not 0 <= int(cq) <= 63:
            raise LossAblationError(f"--cq: {cq} outside 0..63")
    if not -1 <= cpu_used <= 9:
        raise LossAblationError(f"--cpu-used: {cpu_used} outside 0..9")
    if max_frames is not None and max_frames < 1:
        raise LossAblationError(f"--max-frames: {max_frames} must be at least 1")
    if Path(out).suffix != ".npz":
        raise LossAblationError(f"{out}: the output must end in .npz")


def make_dataset(inputs: Sequence[str], out: str | os.PathLike, *, cq_levels: Sequence[int] = (16, 28, 40, 52),
                 cpu_used: int = 4, cache: str | os.PathLike = "~/.cache/lossablation/aom",
                 max_frames: int | None = None, variants: Sequence[str] = ("orig",), jobs: int | None = None,
                 log: Callable[[str], None] | None = None) -> dict:
    """Encode every input at every cq level, label the 16x16 nodes, write one npz. Returns a summary dict."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    _check_request(inputs, out, cq_levels, cpu_used, max_frames)
    tools = prepare_tools(cache, log)
    clips = load_clips(inputs, variants, max_frames)
    source_names = list(dict.fromkeys(c.source for c in clips))
    variant_names = list(dict.fromkeys(c.variant for c in clips))
    tasks = [(clip, int(cq)) for clip in clips for cq in cq_levels]
    log(f"encoding {len(clips)} clip(s) x {len(cq_levels)} cq level(s) = {len(tasks)} encodes")
    with tempfile.TemporaryDirectory(prefix="lossablation-aom-") as tmp:
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
            results = list(pool.map(
                lambda task: encode_and_label(tools, task[0], cq=task[1], cpu_used=cpu_used, workdir=Path(tmp)),
                tasks))
    parts = {key: np.concatenate([r[key] for r in results]) for key in results[0]}
    n_per_task = [r["partition"].shape[0] for r in results]
    source = np.repeat([source_names.index(c.source) for c, _ in tasks], n_per_task)
    variant = np.repeat([variant_names.index(c.variant) for c, _ in tasks], n_per_task)
    cq = np.repeat([q for _, q in tasks], n_per_task)
    encoder = {
        "tool": "aomenc", "version": tools.info.get("aomenc"),
        "args": [a for a in encoder_args(0, cpu_used) if not a.startswith("--cq-level")],
        "cq_levels": [int(q) for q in cq_levels],
        "cpu_used": cpu_used, "input": "8-bit luma (BT.601 weights), neutral 4:2:0 chroma, cropped to x16",
        "variants": list(variants), "inspect": {k: tools.info.get(k) for k in ("aom_source", "inspect_sha256")},
        "labels": "16x16 partition nodes from the inspect -bs block-size map (reference rules)",
        "inputs": list(inputs), "max_frames": max_frames,
    }
    ds = BlockSet(blocks=parts["blocks"].astype(np.uint8), partition=parts["partition"], bit_depth=8,
                  source=source, source_names=tuple(source_names), qindex=parts["qindex"], cq=cq,
                  frame=parts["frame"], position=parts["position"], variant=variant,
                  variant_names=tuple(variant_names))
    save_npz(out, ds, encoder)
    counts = np.bincount(ds.partition, minlength=len(PARTITION_NAMES))
    summary = {"out": str(out), "n_blocks": len(ds), "n_sources": len(source_names), "encodes": len(tasks),
               "partition_counts": dict(zip(PARTITION_NAMES, map(int, counts))), "encoder": encoder}
    log(f"wrote {out}: {len(ds)} blocks from {len(source_names)} source(s)")
    return summary
