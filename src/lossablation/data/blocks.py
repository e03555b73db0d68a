"""Dataset files of 16x16 luma blocks with AV1 partition labels: the in-memory BlockSet, readers and writer.

Two on-disk formats (both documented in ``config/README.md``, "Dataset files") are read into one :class:`BlockSet`:

* **v7** — a folder with ``train.pt`` and ``val.pt`` (and ``test.pt`` when present), each a ``torch.save``d dict
  with ``samples`` float32 (N,1,16,16) in [0, 1] and ``labels_stage0`` int64 partition ids (the researcher's
  layout). Its split is block-level: neighbours of one frame sit on both sides, which inflates scores;
  :func:`lossablation.data.splits.make_splits` records that as ``info["block_level"] = True``.
* **npz** — our own format written by ``lossablation make-dataset``: integer blocks with their bit depth,
  partition ids, source ids and names, qindex/cq, frame, position and the encoder settings. Sources allow an
  honest split grouped by source. Only the keys this module knows are read (an extra key is never decompressed).

Every read validates and raises :class:`LossAblationError` with one line naming the file and key; nothing in a
file is trusted (v7 files are loaded with ``weights_only=True``, npz files without pickles). torch is imported
only where tensors are read or made, so ``describe-data`` on an npz never loads it.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np

from lossablation.classes import PARTITION_NAMES
from lossablation.errors import LossAblationError
from lossablation.io import atomic_path, sha256_file, sha256_json

if TYPE_CHECKING:
    import torch

V7_FILES: tuple[str, ...] = ("train.pt", "val.pt", "test.pt")
BLOCK_SHAPE = (1, 16, 16)

# npz keys: required ones, and optional per-block integer keys
NPZ_REQUIRED = ("blocks", "bit_depth", "partition")
NPZ_PER_BLOCK_INT = ("source_id", "qindex", "cq", "frame", "variant")
# what a damaged npz archive (or a member that is no plain array) raises while numpy reads it
_NPZ_ERRORS = (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, KeyError)


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
    qps: np.ndarray | None = None           # v7 only: int64 (N,) the files' `qps` (constant 80 in the users' data)
    provenance: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.partition.shape[0])

    @property
    def n_sources(self) -> int | None:
        return None if self.source_names is None else len(self.source_names)

    def samples(self, index: np.ndarray | None = None) -> torch.Tensor:
        """float32 tensor (n,1,16,16) in [0, 1] for the given block indices (all when None)."""
        import torch

        blocks = self.blocks if index is None else self.blocks[index]
        if self.bit_depth is None:
            return torch.from_numpy(np.ascontiguousarray(blocks, dtype=np.float32))
        x = torch.from_numpy(np.ascontiguousarray(blocks)).to(torch.float32)
        return x.mul_(1.0 / float((1 << self.bit_depth) - 1))


# ----------------------------------------------------------------------------------------------------------------
# validation helpers
def _fail(where: str, message: str) -> LossAblationError:
    return LossAblationError(f"{where}: {message}")


def _first_line(exc: BaseException, limit: int = 120) -> str:
    """The first line of an exception's text (its type when it has none), for a one-line message."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


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
    import torch

    try:
        with warnings.catch_warnings():  # torch's remarks on odd content (sparse, typed storages): we judge it below
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise _fail(str(path), "file not found") from None
    except Exception as exc:  # truncated zip, pickle garbage, not a torch file at all
        raise _fail(str(path), f"not a readable torch file ({_first_line(exc)})") from None
    if not isinstance(obj, dict):
        raise _fail(str(path), f"expected a dict of tensors, got {type(obj).__name__}")
    return obj


def _unusual_tensor_kind(tensor: torch.Tensor) -> str | None:
    """What makes ``tensor`` other than a plain dense CPU tensor (sparse, meta, quantized, ...), or None."""
    import torch

    if tensor.layout != torch.strided:
        return f"{str(tensor.layout).removeprefix('torch.')} layout"
    if tensor.device.type != "cpu":
        return f"{tensor.device.type} device"
    if tensor.is_quantized:
        return "quantized"
    if tensor.is_nested:
        return "nested"
    return None


def _tensor_to_numpy(obj: Any, where: str, key: str) -> np.ndarray:
    """The array of a plain dense CPU tensor; anything else is refused with one line naming the key."""
    import torch

    if not isinstance(obj, torch.Tensor):
        raise _fail(where, f"key {key!r}: expected a tensor, got {type(obj).__name__}")
    kind = _unusual_tensor_kind(obj)
    if kind is not None:
        raise _fail(where, f"key {key!r}: expected a plain dense CPU tensor, got a tensor with {kind}")
    try:
        return obj.detach().numpy()
    except (TypeError, RuntimeError, NotImplementedError) as exc:  # e.g. bfloat16, conjugate views
        raise _fail(where, f"key {key!r}: expected a plain dense CPU tensor ({_first_line(exc)})") from None


def read_v7_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``samples`` float32 (N,1,16,16) in [0,1] and ``labels_stage0`` int64 from one v7 ``.pt`` file."""
    samples, labels, _ = read_v7_file_with_qps(path)
    return samples, labels


def _v7_qps(obj: dict, where: str, n: int) -> np.ndarray | None:
    """The optional per-block ``qps`` as int64 (N,): one finite value per block (any shape holding N values)."""
    if "qps" not in obj:
        return None
    qps = _tensor_to_numpy(obj["qps"], where, "qps")
    if qps.size != n or not np.issubdtype(qps.dtype, np.number) or not np.isfinite(qps).all():
        raise _fail(where, f"key 'qps': expected {n} finite numbers (one per block), got {qps.dtype} of shape "
                           f"{tuple(qps.shape)}")
    return np.rint(qps.reshape(-1)).astype(np.int64)


def read_v7_file_with_qps(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """As :func:`read_v7_file`, plus the per-block ``qps`` when the file has it."""
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
    return samples, labels, _v7_qps(obj, where, samples.shape[0])


def load_v7(folder: str | os.PathLike) -> BlockSet:
    folder = Path(folder)
    parts, files = [], {}
    for origin, name in enumerate(V7_FILES):
        path = folder / name
        if name == "test.pt" and not path.exists():
            continue
        samples, labels, qps = read_v7_file_with_qps(path)
        parts.append((samples, labels, np.full(labels.shape[0], origin, dtype=np.int8), qps))
        files[name] = sha256_file(path)
    blocks = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    every_file_has_qps = all(p[3] is not None for p in parts)
    return BlockSet(
        blocks=blocks, bit_depth=None,
        partition=np.concatenate([p[1] for p in parts]),
        origin=np.concatenate([p[2] for p in parts]),
        qps=np.concatenate([p[3] for p in parts]) if every_file_has_qps else None,
        provenance={"format": "v7", "path": str(folder), "files": files,
                    "fingerprint": sha256_json(files)},
    )


# ----------------------------------------------------------------------------------------------------------------
# npz reader / writer
class _NpzArchive:
    """An open npz archive whose arrays are read one at a time, when asked for: keys that nobody asks for (a
    large array someone added, say) are never decompressed into memory."""

    def __init__(self, npz: np.lib.npyio.NpzFile, where: str):
        self._npz, self.where, self.keys = npz, where, frozenset(npz.files)

    def __contains__(self, key: str) -> bool:
        return key in self.keys

    def __getitem__(self, key: str) -> np.ndarray:
        try:
            return self._npz[key]
        except _NPZ_ERRORS as exc:
            raise _fail(self.where, f"not a readable npz file (key {key!r}: {_first_line(exc)})") from None

    def require(self, keys: Sequence[str]) -> None:
        for key in keys:
            if key not in self.keys:
                raise _fail(self.where, f"missing key {key!r} (keys: {', '.join(sorted(self.keys)) or 'none'})")


@contextlib.contextmanager
def _open_npz(path: Path) -> Iterator[_NpzArchive]:
    if not path.is_file():
        raise _fail(str(path), "file not found")
    try:
        npz = np.load(path, allow_pickle=False)
    except _NPZ_ERRORS as exc:
        raise _fail(str(path), f"not a readable npz file ({_first_line(exc)})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise _fail(str(path), "not a readable npz file (a single .npy array, not an npz archive)")
    with npz:
        yield _NpzArchive(npz, str(path))


def _npz_blocks(data: _NpzArchive) -> tuple[np.ndarray, int]:
    """``blocks`` (uint8 / uint16) and the ``bit_depth`` they fit."""
    where = data.where
    blocks = data["blocks"]
    _check_block_array(blocks, where, "blocks", ("uint8", "uint16"))
    bit_depth_arr = data["bit_depth"]
    if bit_depth_arr.shape != () or bit_depth_arr.dtype.kind not in "iu":
        raise _fail(where, f"key 'bit_depth': expected an integer scalar, got {bit_depth_arr.dtype.name} "
                           f"shape {tuple(bit_depth_arr.shape)}")
    bit_depth = int(bit_depth_arr)
    max_depth = 8 if blocks.dtype == np.uint8 else 16
    if not (8 <= bit_depth <= max_depth):
        raise _fail(where, f"key 'bit_depth': {bit_depth} does not fit blocks of dtype {blocks.dtype.name}")
    if blocks.dtype == np.uint16 and blocks.shape[0] and int(blocks.max()) > (1 << bit_depth) - 1:
        raise _fail(where, f"key 'blocks': value {int(blocks.max())} exceeds {bit_depth}-bit range")
    return blocks, bit_depth


def _npz_names(data: _NpzArchive, key: str) -> tuple[str, ...]:
    arr = data[key]
    if arr.ndim != 1 or arr.dtype.kind != "U":
        raise _fail(data.where, f"key {key!r}: expected a 1-d array of strings, got {arr.dtype.name} "
                                f"shape {tuple(arr.shape)}")
    return tuple(str(s) for s in arr)


def _npz_optional(data: _NpzArchive, n: int) -> dict[str, Any]:
    """The optional per-block keys that are present, checked against ``n`` blocks."""
    where = data.where
    extra: dict[str, Any] = {}
    for key in NPZ_PER_BLOCK_INT:
        if key in data:
            extra[key] = _check_int_vector(data[key], where, key, n)
    for ids, names_key in (("source_id", "source_names"), ("variant", "variant_names")):
        if (ids in data) != (names_key in data):
            missing = names_key if ids in data else ids
            raise _fail(where, f"missing key {missing!r} (needed with {names_key if missing == ids else ids!r})")
        if ids in data:
            extra[names_key] = _npz_names(data, names_key)
            _check_int_vector(extra[ids], where, ids, n, 0, len(extra[names_key]) - 1)
    if "position" in data:
        pos = data["position"]
        if pos.dtype.kind not in "iu" or pos.shape != (n, 2):
            raise _fail(where, f"key 'position': expected integer shape ({n}, 2), got {pos.dtype.name} "
                               f"{tuple(pos.shape)}")
        extra["position"] = pos.astype(np.int64, copy=False)
    return extra


def _npz_encoder(data: _NpzArchive) -> dict:
    if "encoder" not in data:
        return {}
    try:
        encoder = json.loads(str(data["encoder"]))
    except json.JSONDecodeError:
        raise _fail(data.where, "key 'encoder': not a JSON string") from None
    if not isinstance(encoder, dict):
        raise _fail(data.where, f"key 'encoder': expected a JSON object, got {type(encoder).__name__}")
    return encoder


def load_npz(path: str | os.PathLike) -> BlockSet:
    """Our npz format (written by :func:`save_npz`), validated; reads only the keys of the format."""
    path = Path(path)
    with _open_npz(path) as data:
        data.require(NPZ_REQUIRED)
        blocks, bit_depth = _npz_blocks(data)
        partition = _check_partition(data["partition"], data.where, "partition", blocks.shape[0])
        extra = _npz_optional(data, blocks.shape[0])
        encoder = _npz_encoder(data)
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
