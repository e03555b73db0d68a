"""Datasets of 16x16 luma blocks with AV1 partition labels: readers, Stage-1/2 targets, splits, describe.

Two on-disk formats are read into one in-memory :class:`BlockSet`:

* **v7** — a folder with ``train.pt`` and ``val.pt`` (and ``test.pt`` when present), each a ``torch.save``d dict
  with ``samples`` float32 (N,1,16,16) in [0, 1] and ``labels_stage0`` int64 partition ids (the researcher's
  layout, ``../shared/reference/v7-format.md``). Its split is block-level: neighbours of one frame sit on both
  sides, which inflates scores; :func:`make_splits` records that as ``info["block_level"] = True``.
* **npz** — our own format written by ``lossablation make-dataset`` (documented in ``config/README.md``):
  integer blocks with their bit depth, partition ids, source ids and names, qindex/cq, frame, position and the
  encoder settings. Sources allow an honest split grouped by source.

Every read validates and raises :class:`LossAblationError` with one line naming the file and key.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from lossablation.classes import PARTITION_NAMES, STAGE2_CLASSES
from lossablation.errors import LossAblationError
from lossablation.io import atomic_path, atomic_write_json, sha256_file, sha256_json

DEFAULT_GROUPS: dict[str, list[str]] = {
    "SPLIT": ["SPLIT"],
    "RECT": ["HORZ", "VERT", "HORZ_4", "VERT_4"],
    "AB": ["HORZ_A", "HORZ_B", "VERT_A", "VERT_B"],
}
DEFAULT_SPLIT: dict[str, Any] = {"seed": 0, "val_fraction": 0.15, "test_fraction": 0.15, "v7_test_fraction": 0.5}
SIDES: tuple[str, ...] = ("train", "val", "test")
V7_FILES: tuple[str, ...] = ("train.pt", "val.pt", "test.pt")
BLOCK_SHAPE = (1, 16, 16)

# npz keys: required ones, and optional per-block integer keys
NPZ_REQUIRED = ("blocks", "bit_depth", "partition")
NPZ_PER_BLOCK_INT = ("source_id", "qindex", "cq", "frame", "variant")


@dataclass
class BlockSet:
    """All blocks of one dataset, in file order (v7: train.pt, then val.pt, then test.pt)."""

    blocks: np.ndarray                      # (N,1,16,16) uint8/uint16 (with bit_depth) or float32 in [0,1]
    partition: np.ndarray                   # int64 (N,), AV1 partition ids 0..9
    bit_depth: int | None = None            # None: blocks are already float samples in [0, 1]
    source: np.ndarray | None = None        # int64 (N,) index into source_names, or None when unknown
    source_names: tuple[str, ...] | None = None
    qindex: np.ndarray | None = None
    cq: np.ndarray | None = None
    frame: np.ndarray | None = None
    position: np.ndarray | None = None      # int64 (N, 2): y, x of the block's top-left pixel
    variant: np.ndarray | None = None
    variant_names: tuple[str, ...] | None = None
    origin: np.ndarray | None = None        # v7 only: int8 (N,) 0 train.pt, 1 val.pt, 2 test.pt
    provenance: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.partition.shape[0])

    @property
    def n_sources(self) -> int | None:
        return None if self.source_names is None else len(self.source_names)

    def samples(self, index: np.ndarray | None = None) -> torch.Tensor:
        """float32 tensor (n,1,16,16) in [0, 1] for the given block indices (all when None)."""
        blocks = self.blocks if index is None else self.blocks[index]
        if self.bit_depth is None:
            return torch.from_numpy(np.ascontiguousarray(blocks, dtype=np.float32))
        x = torch.from_numpy(np.ascontiguousarray(blocks)).to(torch.float32)
        return x.mul_(1.0 / float((1 << self.bit_depth) - 1))


@dataclass
class Split:
    x: torch.Tensor             # float32 (n,1,16,16) in [0, 1]
    partition: torch.Tensor     # int64 (n,)
    index: np.ndarray           # int64 (n,) indices into the BlockSet (for audits)

    def __len__(self) -> int:
        return int(self.partition.shape[0])


@dataclass
class Splits:
    train: Split
    val: Split
    test: Split
    info: dict


# ----------------------------------------------------------------------------------------------------------------
# validation helpers
def _fail(where: str, message: str) -> LossAblationError:
    return LossAblationError(f"{where}: {message}")


def _check_block_array(arr: np.ndarray, where: str, key: str, allowed: Sequence[str]) -> None:
    if arr.ndim != 4 or tuple(arr.shape[1:]) != BLOCK_SHAPE:
        raise _fail(where, f"key {key!r}: expected shape (N, 1, 16, 16), got {tuple(arr.shape)}")
    if arr.dtype.name not in allowed:
        raise _fail(where, f"key {key!r}: expected dtype {' or '.join(allowed)}, got {arr.dtype.name}")


def _check_float_samples(arr: np.ndarray, where: str, key: str) -> None:
    if not np.isfinite(arr).all():
        raise _fail(where, f"key {key!r}: contains NaN or inf")
    if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
        raise _fail(where, f"key {key!r}: values outside [0, 1] (min {arr.min():.4g}, max {arr.max():.4g})")


def _check_int_vector(arr: np.ndarray, where: str, key: str, n: int, low: int | None = None,
                      high: int | None = None) -> np.ndarray:
    if arr.dtype.kind not in "iu":
        raise _fail(where, f"key {key!r}: expected an integer dtype, got {arr.dtype.name}")
    if arr.ndim != 1:
        raise _fail(where, f"key {key!r}: expected shape (N,), got {tuple(arr.shape)}")
    if arr.shape[0] != n:
        raise _fail(where, f"key {key!r}: length {arr.shape[0]} does not match {n} blocks")
    if arr.size and low is not None and high is not None and (arr.min() < low or arr.max() > high):
        bad = arr[(arr < low) | (arr > high)][0]
        raise _fail(where, f"key {key!r}: value {int(bad)} outside {low}..{high}")
    return arr.astype(np.int64, copy=False)


def _check_partition(arr: np.ndarray, where: str, key: str, n: int) -> np.ndarray:
    return _check_int_vector(arr, where, key, n, 0, len(PARTITION_NAMES) - 1)


# ----------------------------------------------------------------------------------------------------------------
# v7 reader
def _torch_load_dict(path: Path) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise _fail(str(path), "file not found") from None
    except Exception as exc:  # truncated zip, pickle garbage, not a torch file at all
        detail = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise _fail(str(path), f"not a readable torch file ({detail})") from None
    if not isinstance(obj, dict):
        raise _fail(str(path), f"expected a dict of tensors, got {type(obj).__name__}")
    return obj


def _tensor_to_numpy(obj: Any, where: str, key: str) -> np.ndarray:
    if not isinstance(obj, torch.Tensor):
        raise _fail(where, f"key {key!r}: expected a tensor, got {type(obj).__name__}")
    return obj.detach().cpu().numpy()


def read_v7_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``samples`` float32 (N,1,16,16) in [0,1] and ``labels_stage0`` int64 from one v7 ``.pt`` file."""
    where = str(path)
    if not path.is_file():
        raise _fail(where, "file not found")
    obj = _torch_load_dict(path)
    for key in ("samples", "labels_stage0"):
        if key not in obj:
            raise _fail(where, f"missing key {key!r} (keys: {', '.join(map(str, obj)) or 'none'})")
    samples = _tensor_to_numpy(obj["samples"], where, "samples")
    _check_block_array(samples, where, "samples", ("float32",))
    _check_float_samples(samples, where, "samples")
    labels = _check_partition(_tensor_to_numpy(obj["labels_stage0"], where, "labels_stage0"), where,
                              "labels_stage0", samples.shape[0])
    return samples, labels


def load_v7(folder: str | os.PathLike) -> BlockSet:
    folder = Path(folder)
    parts, files = [], {}
    for origin, name in enumerate(V7_FILES):
        path = folder / name
        if name == "test.pt" and not path.exists():
            continue
        samples, labels = read_v7_file(path)
        parts.append((samples, labels, np.full(labels.shape[0], origin, dtype=np.int8)))
        files[name] = sha256_file(path)
    blocks = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    return BlockSet(
        blocks=blocks, bit_depth=None,
        partition=np.concatenate([p[1] for p in parts]),
        origin=np.concatenate([p[2] for p in parts]),
        provenance={"format": "v7", "path": str(folder), "files": files,
                    "fingerprint": sha256_json(files)},
    )


# ----------------------------------------------------------------------------------------------------------------
# npz reader / writer
def _open_npz(path: Path) -> Mapping[str, np.ndarray]:
    if not path.is_file():
        raise _fail(str(path), "file not found")
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not an npz archive")
        data = {}
        for key in npz.files:
            data[key] = npz[key]
        return data
    except LossAblationError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise _fail(str(path), f"not a readable npz file ({str(exc).splitlines()[0][:120]})") from None


def load_npz(path: str | os.PathLike) -> BlockSet:
    path = Path(path)
    where = str(path)
    data = _open_npz(path)
    for key in NPZ_REQUIRED:
        if key not in data:
            raise _fail(where, f"missing key {key!r} (keys: {', '.join(sorted(data)) or 'none'})")
    blocks = data["blocks"]
    _check_block_array(blocks, where, "blocks", ("uint8", "uint16"))
    n = blocks.shape[0]
    bit_depth_arr = data["bit_depth"]
    if bit_depth_arr.shape != () or bit_depth_arr.dtype.kind not in "iu":
        raise _fail(where, f"key 'bit_depth': expected an integer scalar, got {bit_depth_arr.dtype.name} "
                           f"shape {tuple(bit_depth_arr.shape)}")
    bit_depth = int(bit_depth_arr)
    max_depth = 8 if blocks.dtype == np.uint8 else 16
    if not (8 <= bit_depth <= max_depth):
        raise _fail(where, f"key 'bit_depth': {bit_depth} does not fit blocks of dtype {blocks.dtype.name}")
    if blocks.dtype == np.uint16 and n and int(blocks.max()) > (1 << bit_depth) - 1:
        raise _fail(where, f"key 'blocks': value {int(blocks.max())} exceeds {bit_depth}-bit range")
    partition = _check_partition(data["partition"], where, "partition", n)

    def names(key: str) -> tuple[str, ...]:
        arr = data[key]
        if arr.ndim != 1 or arr.dtype.kind != "U":
            raise _fail(where, f"key {key!r}: expected a 1-d array of strings, got {arr.dtype.name} "
                               f"shape {tuple(arr.shape)}")
        return tuple(str(s) for s in arr)

    extra: dict[str, Any] = {}
    for key in NPZ_PER_BLOCK_INT:
        if key in data:
            extra[key] = _check_int_vector(data[key], where, key, n)
    for ids, names_key in (("source_id", "source_names"), ("variant", "variant_names")):
        if (ids in data) != (names_key in data):
            missing = names_key if ids in data else ids
            raise _fail(where, f"missing key {missing!r} (needed with {names_key if missing == ids else ids!r})")
        if ids in data:
            extra[names_key] = names(names_key)
            _check_int_vector(data[ids], where, ids, n, 0, len(extra[names_key]) - 1)
    if "position" in data:
        pos = data["position"]
        if pos.dtype.kind not in "iu" or pos.shape != (n, 2):
            raise _fail(where, f"key 'position': expected integer shape ({n}, 2), got {pos.dtype.name} "
                               f"{tuple(pos.shape)}")
        extra["position"] = pos.astype(np.int64, copy=False)
    encoder = {}
    if "encoder" in data:
        try:
            encoder = json.loads(str(data["encoder"]))
        except json.JSONDecodeError:
            raise _fail(where, "key 'encoder': not a JSON string") from None
    return BlockSet(
        blocks=blocks, bit_depth=bit_depth, partition=partition,
        source=extra.get("source_id"), source_names=extra.get("source_names"),
        qindex=extra.get("qindex"), cq=extra.get("cq"), frame=extra.get("frame"),
        position=extra.get("position"), variant=extra.get("variant"), variant_names=extra.get("variant_names"),
        provenance={"format": "npz", "path": str(path), "fingerprint": sha256_file(path), "encoder": encoder},
    )


def save_npz(path: str | os.PathLike, ds: BlockSet, encoder: Mapping[str, Any] | None = None) -> None:
    """Write ``ds`` in our npz format (compressed, atomically). Integer blocks only."""
    if ds.bit_depth is None:
        raise LossAblationError(f"{path}: the npz format stores integer blocks; got float samples")
    arrays: dict[str, np.ndarray] = {
        "blocks": ds.blocks.astype(np.uint8 if ds.bit_depth == 8 else np.uint16, copy=False),
        "bit_depth": np.array(ds.bit_depth, dtype=np.int64),
        "partition": ds.partition.astype(np.int8),
    }
    if ds.source is not None:
        arrays["source_id"] = ds.source.astype(np.int32)
        arrays["source_names"] = np.array(ds.source_names, dtype=str)
    if ds.variant is not None:
        arrays["variant"] = ds.variant.astype(np.int8)
        arrays["variant_names"] = np.array(ds.variant_names, dtype=str)
    for key, dtype in (("qindex", np.int16), ("cq", np.int16), ("frame", np.int32)):
        if getattr(ds, key) is not None:
            arrays[key] = getattr(ds, key).astype(dtype)
    if ds.position is not None:
        arrays["position"] = ds.position.astype(np.int32)
    arrays["encoder"] = np.array(json.dumps(dict(encoder or ds.provenance.get("encoder", {})), sort_keys=True))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:  # a file handle: numpy would otherwise append ".npz" to the tmp name
            np.savez_compressed(handle, **arrays)


def load_dataset(path: str | os.PathLike) -> BlockSet:
    """A v7 folder or an ``.npz`` file, validated (LossAblationError naming the file and key on any problem)."""
    p = Path(path)
    if p.is_dir():
        return load_v7(p)
    if not p.exists():
        raise _fail(str(p), "no such file or folder (expected a v7 folder with train.pt/val.pt or an .npz)")
    if p.suffix == ".npz":
        return load_npz(p)
    raise _fail(str(p), "unknown dataset format (expected a v7 folder or an .npz file)")


# ----------------------------------------------------------------------------------------------------------------
# targets
def group_lookup(groups: Mapping[str, Sequence[str]] | None = None, key: str = "classes") -> np.ndarray:
    """Table partition id -> Stage-2 class index (-1 for NONE and for partitions outside every group)."""
    groups = DEFAULT_GROUPS if groups is None else groups
    if set(groups) != set(STAGE2_CLASSES):
        raise LossAblationError(f"{key}: expected exactly the groups {', '.join(STAGE2_CLASSES)}, "
                                f"got {', '.join(groups) or 'none'}")
    table = np.full(len(PARTITION_NAMES), -1, dtype=np.int64)
    for cls, name in enumerate(STAGE2_CLASSES):
        for member in groups[name]:
            if member not in PARTITION_NAMES:
                raise LossAblationError(f"{key}.{name}: unknown partition {member!r}")
            if member == "NONE":
                raise LossAblationError(f"{key}.{name}: NONE cannot be a Stage-2 class (it is Stage 1's negative)")
            pid = PARTITION_NAMES.index(member)
            if table[pid] != -1:
                raise LossAblationError(f"{key}.{name}: {member} is already in {STAGE2_CLASSES[table[pid]]}")
            table[pid] = cls
    return table


def stage2_targets(partition: torch.Tensor | np.ndarray, groups: Mapping[str, Sequence[str]] | None = None
                   ) -> torch.Tensor:
    """Stage-2 class per block (SPLIT 0, RECT 1, AB 2), -1 for NONE (and partitions in no group)."""
    table = torch.from_numpy(group_lookup(groups))
    return table[torch.as_tensor(partition, dtype=torch.int64)]


def stage1_targets(partition: torch.Tensor | np.ndarray) -> torch.Tensor:
    """0 for NONE, 1 for any partitioned block."""
    return (torch.as_tensor(partition, dtype=torch.int64) != 0).to(torch.int64)


def _strata(partition: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Stratum per block: 0 SPLIT, 1 RECT, 2 AB, 3 NONE / ungrouped."""
    s = table[partition]
    return np.where(s < 0, len(STAGE2_CLASSES), s)


# ----------------------------------------------------------------------------------------------------------------
# splits
def _stratified_block_split(index: np.ndarray, strata: np.ndarray, fractions: Sequence[float],
                            rng: np.random.Generator) -> list[np.ndarray]:
    """Random split of ``index`` into len(fractions) parts, per stratum (each stratum split in proportion)."""
    out: list[list[np.ndarray]] = [[] for _ in fractions]
    bounds = np.cumsum(fractions)[:-1]
    for stratum in np.unique(strata):
        members = index[strata == stratum]
        members = members[rng.permutation(members.shape[0])]
        cuts = np.rint(bounds * members.shape[0]).astype(int)
        for side, part in enumerate(np.split(members, cuts)):
            out[side].append(part)
    return [np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64) for parts in out]


def _imbalance(assigned: np.ndarray, target: np.ndarray, scale: np.ndarray) -> float:
    return float((((assigned - target) / scale) ** 2).sum())


def grouped_assignment(counts: np.ndarray, fractions: Sequence[float], seed: int, restarts: int = 8
                       ) -> np.ndarray:
    """Assign groups (rows of a groups x strata count matrix) to sides, stratified as far as groups allow.

    Minimises sum over sides and strata of ((n_side,stratum - fraction_side * n_stratum) / n_stratum)^2 by a
    local search (:func:`_assign_from_order`) from ``restarts`` seeded random orders of the groups, keeping the
    best. Returns the side index per group; deterministic in ``seed`` (other seeds give other, similarly balanced
    splits when the groups allow it).
    """
    counts = np.asarray(counts, dtype=float)
    fractions = np.asarray(fractions, dtype=float)
    total = counts.sum(axis=0)
    scale = np.where(total > 0, total, 1.0)
    target = fractions[:, None] * total[None, :]
    rng = np.random.default_rng(seed)
    best, best_cost = None, np.inf
    for _ in range(restarts):
        side_of = _assign_from_order(counts, fractions, rng.permutation(counts.shape[0]))
        assigned = np.stack([counts[side_of == k].sum(axis=0) for k in range(len(fractions))])
        cost = _imbalance(assigned, target, scale)
        if cost < best_cost - 1e-12:
            best, best_cost = side_of, cost
    return best


def _assign_from_order(counts: np.ndarray, fractions: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Greedy pass in ``order`` (each group to the side that costs least), then single-group moves and pairwise
    swaps (up to 400 groups) while any lowers the cost; every side keeps at least one group."""
    counts = np.asarray(counts, dtype=float)
    fractions = np.asarray(fractions, dtype=float)
    n_groups, n_sides = counts.shape[0], len(fractions)
    total = counts.sum(axis=0)
    scale = np.where(total > 0, total, 1.0)
    target = fractions[:, None] * total[None, :]
    assigned = np.zeros((n_sides, counts.shape[1]))
    side_of = np.full(n_groups, -1, dtype=np.int64)

    def best_side(g: int) -> int:
        costs = []
        for side in range(n_sides):
            assigned[side] += counts[g]
            costs.append(_imbalance(assigned, target, scale))
            assigned[side] -= counts[g]
        return int(np.argmin(costs))

    for g in order:
        side_of[g] = best_side(g)
        assigned[side_of[g]] += counts[g]
    for _ in range(100):  # local improvement: move one group at a time while the cost drops
        moved = False
        for g in order:
            here = side_of[g]
            if (side_of == here).sum() == 1:
                continue  # never empty a side
            before = _imbalance(assigned, target, scale)
            assigned[here] -= counts[g]
            side = best_side(g)
            assigned[side] += counts[g]
            if side != here and _imbalance(assigned, target, scale) < before - 1e-12:
                side_of[g], moved = side, True
            else:
                assigned[side] -= counts[g]
                assigned[here] += counts[g]
        if n_groups <= 400:  # then swaps of two groups on different sides
            for i, g in enumerate(order):
                for h in order[i + 1:]:
                    a, b = side_of[g], side_of[h]
                    if a == b:
                        continue
                    before = _imbalance(assigned, target, scale)
                    delta = counts[h] - counts[g]
                    assigned[a] += delta
                    assigned[b] -= delta
                    if _imbalance(assigned, target, scale) < before - 1e-12:
                        side_of[g], side_of[h], moved = b, a, True
                    else:
                        assigned[a] -= delta
                        assigned[b] += delta
        if not moved:
            break
    for side in range(n_sides):  # a side left empty takes the smallest group of the largest side
        if not (side_of == side).any():
            donor = np.bincount(side_of, minlength=n_sides).argmax()
            members = np.flatnonzero(side_of == donor)
            side_of[members[np.argmin(counts[members].sum(axis=1))]] = side
    return side_of


def _split_config(cfg: Mapping[str, Any]) -> dict:
    split = {**DEFAULT_SPLIT, **(cfg.get("split") or {})}
    if split["val_fraction"] + split["test_fraction"] >= 1:
        raise LossAblationError("split: val_fraction + test_fraction must be below 1")
    return split


def split_indices(ds: BlockSet, split: Mapping[str, Any], table: np.ndarray) -> tuple[dict[str, np.ndarray], dict]:
    """Block indices per side and a description of how they were chosen."""
    rng = np.random.default_rng(split["seed"])
    strata = _strata(ds.partition, table)
    n = len(ds)
    if ds.origin is not None:  # v7: keep their files; carve a test set out of val.pt when there is none
        train = np.flatnonzero(ds.origin == 0)
        val = np.flatnonzero(ds.origin == 1)
        if (ds.origin == 2).any():
            test, method = np.flatnonzero(ds.origin == 2), "v7 files train.pt / val.pt / test.pt"
        else:
            f = split["v7_test_fraction"]
            val, test = _stratified_block_split(val, strata[val], (1 - f, f), rng)
            method = f"v7 train.pt; val.pt split at block level into val / test ({f:g} to test), stratified"
        return {"train": train, "val": val, "test": test}, {"method": method, "block_level": True}
    fractions = (1 - split["val_fraction"] - split["test_fraction"], split["val_fraction"], split["test_fraction"])
    if ds.source is None:
        parts = _stratified_block_split(np.arange(n), strata, fractions, rng)
        return dict(zip(SIDES, parts)), {"method": "random block-level split stratified by class (no source ids)",
                                         "block_level": True}
    n_sources = len(ds.source_names)
    counts = np.zeros((n_sources, len(STAGE2_CLASSES) + 1), dtype=np.int64)
    np.add.at(counts, (ds.source, strata), 1)
    present = np.flatnonzero(counts.sum(axis=1) > 0)
    if present.shape[0] < 3:
        raise LossAblationError(f"{ds.provenance.get('path')}: only {present.shape[0]} source(s) with blocks; a "
                                "split grouped by source needs at least 3")
    side_of_present = grouped_assignment(counts[present], fractions, split["seed"])
    side_of = np.full(n_sources, -1)
    side_of[present] = side_of_present
    block_side = side_of[ds.source]
    parts = {side: np.flatnonzero(block_side == k) for k, side in enumerate(SIDES)}
    sources = {side: [ds.source_names[s] for s in present[side_of_present == k]] for k, side in enumerate(SIDES)}
    return parts, {"method": "grouped by source (greedy, stratified by class as far as groups allow)",
                   "block_level": False, "sources": sources}


def _counts(partition: np.ndarray, table: np.ndarray) -> dict:
    pc = np.bincount(partition, minlength=len(PARTITION_NAMES))
    s2 = np.bincount(table[partition][table[partition] >= 0], minlength=len(STAGE2_CLASSES))
    return {"n": int(partition.shape[0]),
            "partition": {name: int(c) for name, c in zip(PARTITION_NAMES, pc)},
            "stage2": {name: int(c) for name, c in zip(STAGE2_CLASSES, s2)},
            "n_stage2": int(s2.sum())}


def compute_split(cfg: Mapping[str, Any], dataset: BlockSet | None = None
                  ) -> tuple[BlockSet, dict[str, np.ndarray], dict]:
    """Load (unless given), split and check: the dataset, block indices per side and the JSON-able info."""
    ds = dataset if dataset is not None else load_dataset(cfg["dataset"])
    split = _split_config(cfg)
    groups = cfg.get("classes") or DEFAULT_GROUPS
    table = group_lookup(groups)
    index, how = split_indices(ds, split, table)
    where = ds.provenance.get("path", str(cfg.get("dataset")))
    counts = {side: _counts(ds.partition[index[side]], table) for side in SIDES}
    for side in SIDES:
        for name in STAGE2_CLASSES:
            if counts[side]["stage2"][name] == 0:
                raise LossAblationError(
                    f"{where}: split {side!r} has no {name} blocks (split.seed {split['seed']}, "
                    f"{counts[side]['n']} blocks on that side); use more sources or another split.seed")
    sources = how.get("sources")
    for side in SIDES:
        if sources is not None:
            counts[side]["n_sources"] = len(sources[side])
    info = {
        "dataset": where, "format": ds.provenance.get("format"), "fingerprint": ds.provenance.get("fingerprint"),
        "block_level": bool(how["block_level"]), "method": how["method"],
        "split": {k: split[k] for k in DEFAULT_SPLIT}, "classes": {k: list(v) for k, v in groups.items()},
        "n_blocks": len(ds), "n_sources": ds.n_sources, "sources": sources, "counts": counts,
    }
    if info["block_level"]:
        info["note"] = ("block-level split: neighbouring blocks of one frame sit on both sides, so val/test scores "
                        "are optimistic")
    if ds.provenance.get("encoder"):
        info["encoder"] = ds.provenance["encoder"]
    return ds, index, info


def make_splits(cfg: Mapping[str, Any], dataset: BlockSet | None = None) -> Splits:
    """train / val / test tensors from ``cfg["dataset"]``; deterministic in ``cfg["split"]["seed"]``.

    Grouped by source when the dataset has source ids (no source on two sides); block-level otherwise (v7, or an
    npz without sources), which ``info["block_level"]`` records. Every Stage-2 class must occur on every side.
    """
    ds, index, info = compute_split(cfg, dataset)
    parts = {side: Split(x=ds.samples(index[side]), partition=torch.from_numpy(ds.partition[index[side]].copy()),
                         index=index[side]) for side in SIDES}
    return Splits(train=parts["train"], val=parts["val"], test=parts["test"], info=info)


def write_split_audit(cfg: Mapping[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``split.json`` (info: method, sources per side, counts, fingerprint) and ``split_indices.npz``
    (train/val/test block indices into the dataset, v7 order train.pt, val.pt, test.pt) into ``out_dir``."""
    out = Path(out_dir)
    _, index, info = compute_split(cfg)
    json_path, npz_path = out / "split.json", out / "split_indices.npz"
    with atomic_path(npz_path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **{side: index[side].astype(np.int64) for side in SIDES})
    atomic_write_json(json_path, info)
    return json_path, npz_path


# ----------------------------------------------------------------------------------------------------------------
# describe
def describe(path: str | os.PathLike, groups: Mapping[str, Sequence[str]] | None = None) -> dict:
    """Counts of a dataset (JSON-able): n_blocks, partition_counts, stage2_counts, n_sources, ..."""
    ds = load_dataset(path)
    table = group_lookup(groups)
    c = _counts(ds.partition, table)
    out = {
        "path": str(path), "format": ds.provenance["format"], "fingerprint": ds.provenance["fingerprint"],
        "n_blocks": c["n"], "bit_depth": ds.bit_depth, "partition_counts": c["partition"],
        "stage2_counts": c["stage2"], "n_stage2": c["n_stage2"], "n_sources": ds.n_sources,
    }
    if ds.origin is not None:
        present = [name for k, name in enumerate(V7_FILES) if (ds.origin == k).any()]
        out["files"] = {name: _counts(ds.partition[ds.origin == V7_FILES.index(name)], table) for name in present}
    if ds.source_names is not None:
        out["sources"] = {name: int(n) for name, n in
                          zip(ds.source_names, np.bincount(ds.source, minlength=len(ds.source_names)))}
    if ds.cq is not None:
        out["cq_levels"] = sorted(int(v) for v in np.unique(ds.cq))
    if ds.provenance.get("encoder"):
        out["encoder"] = ds.provenance["encoder"]
    return out


def format_description(d: Mapping[str, Any]) -> str:
    """The short human table of ``describe-data``."""
    depth = "float [0,1]" if d["bit_depth"] is None else f"{d['bit_depth']}-bit"
    sources = "unknown" if d["n_sources"] is None else str(d["n_sources"])
    lines = [f"dataset   {d['path']}  ({d['format']}, {depth})",
             f"blocks    {d['n_blocks']:,}   sources {sources}   fingerprint {d['fingerprint'][:12]}"]
    if d.get("cq_levels"):
        lines.append(f"cq        {', '.join(map(str, d['cq_levels']))}")
    lines.append("")
    lines.append(f"{'partition':<10}{'blocks':>10}{'share':>8}")
    total = max(d["n_blocks"], 1)
    for name, n in d["partition_counts"].items():
        lines.append(f"{name:<10}{n:>10,}{100 * n / total:>7.1f}%")
    lines.append("")
    s2 = max(d["n_stage2"], 1)
    lines.append(f"{'stage 2':<10}{'blocks':>10}{'share':>8}")
    for name, n in d["stage2_counts"].items():
        lines.append(f"{name:<10}{n:>10,}{100 * n / s2:>7.1f}%")
    lines.append(f"{'total':<10}{d['n_stage2']:>10,}")
    if d.get("files"):
        lines.append("")
        lines.append("file       blocks  " + "  ".join(f"{n:>7}" for n in STAGE2_CLASSES))
        for name, c in d["files"].items():
            lines.append(f"{name:<9}{c['n']:>8,}  " + "  ".join(f"{c['stage2'][n]:>7,}" for n in STAGE2_CLASSES))
    return "\n".join(lines)
