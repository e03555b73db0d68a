"""The sweep's train / val / test split: block indices per side, the tensors, and the audit files.

How the split is chosen (``config/README.md``, "How the split is made"):

* npz with source ids: grouped by source (no source on two sides), stratified by class as far as the sources
  allow (:mod:`lossablation.data.grouping`);
* npz without source ids: random block-level split, stratified by class;
* v7 folder: their files (``train.pt`` / ``val.pt`` / ``test.pt``); without ``test.pt`` their ``val.pt`` is split
  at block level into val and test.

Deterministic in ``split.seed``: every job recomputes the same split from the dataset and the config.
``split.json`` / ``split_indices.npz`` are written once per sweep for audit (humans, reviews); no job reads them.
Every function here takes the config as returned by :func:`lossablation.config.load_config` (defaults filled in,
values validated).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from lossablation.classes import STAGE2_CLASSES
from lossablation.data.blocks import BlockSet, load_dataset
from lossablation.data.grouping import grouped_assignment
from lossablation.data.targets import class_counts, group_lookup, strata
from lossablation.errors import LossAblationError
from lossablation.io import atomic_path, atomic_write_json

SIDES: tuple[str, ...] = ("train", "val", "test")


@dataclass
class Split:
    x: torch.Tensor             # float32 (n,1,16,16) in [0, 1]
    partition: torch.Tensor     # int64 (n,)
    index: np.ndarray           # int64 (n,) indices into the BlockSet (for audits)
    qp: np.ndarray | None = None  # int64 (n,) quantizer level of each block (npz cq, else qindex); None: unknown

    def __len__(self) -> int:
        return int(self.partition.shape[0])


@dataclass
class Splits:
    train: Split
    val: Split
    test: Split
    info: dict


def _stratified_block_split(index: np.ndarray, stratum: np.ndarray, fractions: Sequence[float],
                            rng: np.random.Generator) -> list[np.ndarray]:
    """Random split of ``index`` into len(fractions) parts, per stratum (each stratum split in proportion)."""
    out: list[list[np.ndarray]] = [[] for _ in fractions]
    bounds = np.cumsum(fractions)[:-1]
    for value in np.unique(stratum):
        members = index[stratum == value]
        members = members[rng.permutation(members.shape[0])]
        cuts = np.rint(bounds * members.shape[0]).astype(int)
        for side, part in enumerate(np.split(members, cuts)):
            out[side].append(part)
    return [np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64) for parts in out]


def _v7_split(ds: BlockSet, split: Mapping[str, Any], stratum: np.ndarray, rng: np.random.Generator
              ) -> tuple[dict[str, np.ndarray], dict]:
    """v7: keep their files; carve a test set out of val.pt when there is no test.pt."""
    train = np.flatnonzero(ds.origin == 0)
    val = np.flatnonzero(ds.origin == 1)
    if (ds.origin == 2).any():
        test, method = np.flatnonzero(ds.origin == 2), "v7 files train.pt / val.pt / test.pt"
    else:
        f = split["v7_test_fraction"]
        val, test = _stratified_block_split(val, stratum[val], (1 - f, f), rng)
        method = f"v7 train.pt; val.pt split at block level into val / test ({f:g} to test), stratified"
    return {"train": train, "val": val, "test": test}, {"method": method, "block_level": True}


def _grouped_split(ds: BlockSet, fractions: Sequence[float], seed: int, stratum: np.ndarray
                   ) -> tuple[dict[str, np.ndarray], dict]:
    """Whole sources to sides (:func:`grouped_assignment`); sources without blocks are left out."""
    n_sources = len(ds.source_names)
    counts = np.zeros((n_sources, len(STAGE2_CLASSES) + 1), dtype=np.int64)
    np.add.at(counts, (ds.source, stratum), 1)
    present = np.flatnonzero(counts.sum(axis=1) > 0)
    if present.shape[0] < 3:
        raise LossAblationError(f"{ds.provenance.get('path')}: only {present.shape[0]} source(s) with blocks; a "
                                "split grouped by source needs at least 3")
    side_of_present = grouped_assignment(counts[present], fractions, seed)
    side_of = np.full(n_sources, -1)
    side_of[present] = side_of_present
    block_side = side_of[ds.source]
    parts = {side: np.flatnonzero(block_side == k) for k, side in enumerate(SIDES)}
    sources = {side: [ds.source_names[s] for s in present[side_of_present == k]] for k, side in enumerate(SIDES)}
    return parts, {"method": "grouped by source (greedy, stratified by class as far as groups allow)",
                   "block_level": False, "sources": sources}


def split_indices(ds: BlockSet, split: Mapping[str, Any], table: np.ndarray) -> tuple[dict[str, np.ndarray], dict]:
    """Block indices per side and a description of how they were chosen (``split``: the config's ``split``)."""
    rng = np.random.default_rng(split["seed"])
    stratum = strata(ds.partition, table)
    if ds.origin is not None:
        return _v7_split(ds, split, stratum, rng)
    fractions = (1 - split["val_fraction"] - split["test_fraction"], split["val_fraction"], split["test_fraction"])
    if ds.source is None:
        parts = _stratified_block_split(np.arange(len(ds)), stratum, fractions, rng)
        return dict(zip(SIDES, parts)), {"method": "random block-level split stratified by class (no source ids)",
                                         "block_level": True}
    return _grouped_split(ds, fractions, split["seed"], stratum)


def _require_every_class(where: str, *, groups: Mapping[str, Sequence[str]], whole: dict,
                         per_side: Mapping[str, dict], seed: int) -> None:
    """Every Stage-2 class in the whole dataset, then on every side (``whole`` / ``per_side``: class counts).

    The two cases get different messages: only the second can be helped by more sources or another split.seed.
    """
    for name in STAGE2_CLASSES:
        if whole["stage2"][name] == 0:
            raise LossAblationError(f"{where}: the dataset has no {name} blocks at all (classes.{name}: "
                                    f"{', '.join(groups[name])}); every Stage-2 class must occur in it")
    for side in SIDES:
        for name in STAGE2_CLASSES:
            if per_side[side]["stage2"][name] == 0:
                raise LossAblationError(
                    f"{where}: split {side!r} has no {name} blocks (split.seed {seed}, "
                    f"{per_side[side]['n']} blocks on that side); use more sources or another split.seed")


def compute_split(cfg: Mapping[str, Any], dataset: BlockSet | None = None
                  ) -> tuple[BlockSet, dict[str, np.ndarray], dict]:
    """Load (unless given), split and check: the dataset, block indices per side and the JSON-able info."""
    ds = dataset if dataset is not None else load_dataset(cfg["dataset"])
    split, groups = cfg["split"], cfg["classes"]
    table = group_lookup(groups)
    index, how = split_indices(ds, split, table)
    where = ds.provenance.get("path", str(cfg["dataset"]))
    counts = {side: class_counts(ds.partition[index[side]], table) for side in SIDES}
    _require_every_class(where, groups=groups, whole=class_counts(ds.partition, table), per_side=counts,
                         seed=split["seed"])
    sources = how.get("sources")
    if sources is not None:
        for side in SIDES:
            counts[side]["n_sources"] = len(sources[side])
    info = {
        "dataset": where, "format": ds.provenance.get("format"), "fingerprint": ds.provenance.get("fingerprint"),
        "block_level": bool(how["block_level"]), "method": how["method"],
        "split": dict(split), "classes": {k: list(v) for k, v in groups.items()},
        "n_blocks": len(ds), "n_sources": ds.n_sources, "sources": sources, "counts": counts,
    }
    if info["block_level"]:
        info["note"] = ("block-level split: neighbouring blocks of one frame sit on both sides, so val/test scores "
                        "are optimistic")
    if ds.provenance.get("encoder"):
        info["encoder"] = ds.provenance["encoder"]
    return ds, index, info


def block_qp(ds: BlockSet) -> np.ndarray | None:
    """The quantizer level of every block: npz ``cq`` when present, else ``qindex``, else a v7 folder's ``qps``
    (constant 80 in the users' files, so the QP table says it has a single level); None when none is known."""
    level = next((a for a in (ds.cq, ds.qindex, ds.qps) if a is not None), None)
    return None if level is None else np.asarray(level, dtype=np.int64)


def make_splits(cfg: Mapping[str, Any], dataset: BlockSet | None = None) -> Splits:
    """train / val / test tensors from ``cfg["dataset"]``; deterministic in ``cfg["split"]["seed"]``.

    Grouped by source when the dataset has source ids (no source on two sides); block-level otherwise (v7, or an
    npz without sources), which ``info["block_level"]`` records. Every Stage-2 class must occur on every side.
    """
    ds, index, info = compute_split(cfg, dataset)
    qp = block_qp(ds)
    parts = {side: Split(x=ds.samples(index[side]), partition=torch.from_numpy(ds.partition[index[side]].copy()),
                         index=index[side], qp=None if qp is None else qp[index[side]]) for side in SIDES}
    return Splits(train=parts["train"], val=parts["val"], test=parts["test"], info=info)


def write_split_audit(cfg: Mapping[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``split.json`` (info: method, sources per side, counts, dataset fingerprint) and ``split_indices.npz``
    (train/val/test block indices into the dataset, v7 order train.pt, val.pt, test.pt) into ``out_dir``.

    The split is computed and checked before anything is written; each file is written atomically.
    """
    out = Path(out_dir)
    _, index, info = compute_split(cfg)
    json_path, npz_path = out / "split.json", out / "split_indices.npz"
    with atomic_path(npz_path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **{side: index[side].astype(np.int64) for side in SIDES})
    atomic_write_json(json_path, info)
    return json_path, npz_path
