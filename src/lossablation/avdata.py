"""make-dataset: real libaom partition decisions for 16x16 luma blocks.

Pipeline (see ``../shared/reference/av1-dataset.md``):

1. :func:`prepare_tools` installs Debian's ``aom-tools`` (``aomenc``) and builds libaom's ``inspect`` example
   from Debian's own ``aom`` source with ``CONFIG_INSPECTION=1`` into a cache folder (idempotent).
2. Every input (an image, or a ``.y4m`` video) becomes a luma clip cropped to a multiple of 16; each clip is
   encoded with ``aomenc`` at several cq levels and decoded by ``inspect -bs`` into a block-size map per frame.
3. :func:`derive_partition_labels` turns a block-size map into 16x16 partition ids by the reference rules;
   a pattern outside those rules raises, it is never skipped.
4. Pixels come from the SOURCE luma (not the reconstruction); everything goes into one compressed npz
   (format documented in ``config/README.md``, read by :func:`lossablation.data.load_dataset`).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from .errors import LossAblationError
from .io import atomic_path, atomic_write_json, sha256_file

# ----------------------------------------------------------------------------------------------------------------
# libaom BLOCK_SIZE codes (enum order in av1/common/enums.h) -> (width, height) in pixels
BLOCK_SIZES: tuple[tuple[int, int], ...] = (
    (4, 4), (4, 8), (8, 4), (8, 8), (8, 16), (16, 8), (16, 16), (16, 32), (32, 16), (32, 32), (32, 64),
    (64, 32), (64, 64), (64, 128), (128, 64), (128, 128), (4, 16), (16, 4), (8, 32), (32, 8), (16, 64), (64, 16),
)
_CODE = {wh: code for code, wh in enumerate(BLOCK_SIZES)}
B8X8, B8X16, B16X8, B16X16, B4X16, B16X4 = (_CODE[(8, 8)], _CODE[(8, 16)], _CODE[(16, 8)], _CODE[(16, 16)],
                                           _CODE[(4, 16)], _CODE[(16, 4)])
_WIDTH = np.array([w for w, _ in BLOCK_SIZES])
_HEIGHT = np.array([h for _, h in BLOCK_SIZES])

# partition ids (same order as lossablation.data.PARTITION_NAMES)
NONE, HORZ, VERT, SPLIT, HORZ_A, HORZ_B, VERT_A, VERT_B, HORZ_4, VERT_4 = range(10)
NOT_A_NODE = -1

SKIMAGE_IMAGES: tuple[str, ...] = (
    "astronaut", "camera", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
    "brick", "grass", "gravel", "moon", "coins", "cell", "clock", "stereo_motorcycle", "page", "text",
)
VARIANTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "orig": lambda a: a,
    "flip_lr": lambda a: a[:, ::-1],
    "flip_ud": lambda a: a[::-1, :],
    "transpose": lambda a: a.T,
}
APT_PACKAGES = ("aom-tools", "yasm", "nasm", "ninja-build", "cmake", "dpkg-dev")
_PKG_BINARY = {"aom-tools": "aomenc", "yasm": "yasm", "nasm": "nasm", "ninja-build": "ninja", "cmake": "cmake",
               "dpkg-dev": "dpkg-source"}
INSPECT_CMAKE_FLAGS = ("-DCONFIG_INSPECTION=1", "-DCONFIG_AV1_ENCODER=0", "-DCONFIG_LIBYUV=0", "-DENABLE_TESTS=0",
                       "-DENABLE_DOCS=0", "-DENABLE_TOOLS=0", "-DENABLE_EXAMPLES=1", "-DCMAKE_BUILD_TYPE=Release")
AOM_SOURCE = "aom/bookworm"


# ----------------------------------------------------------------------------------------------------------------
# 1. labels from a block-size map
def derive_partition_labels(bsize: np.ndarray, where: str = "block-size map") -> np.ndarray:
    """16x16 partition ids from a libaom block-size map (one BLOCK_SIZE code per 4x4 unit).

    Returns an int array of shape (rows // 4, cols // 4): the AV1 partition id of each 16x16-aligned block that is
    a 16x16 partition node, or ``NOT_A_NODE`` (-1) where it is not (its 32x32 parent holds a block wider or taller
    than 16, so the 16x16 partition was never decided). The map must cover whole 16x16 blocks (crop frames to a
    multiple of 16). Any pattern inside a node outside the reference rules raises LossAblationError.
    """
    bsize = np.asarray(bsize)
    if bsize.ndim != 2 or bsize.shape[0] % 4 or bsize.shape[1] % 4 or bsize.size == 0:
        raise LossAblationError(f"{where}: expected a (4k, 4m) map of 4x4 units, got shape {bsize.shape}")
    if bsize.min() < 0 or bsize.max() >= len(BLOCK_SIZES):
        raise LossAblationError(f"{where}: block-size code outside 0..{len(BLOCK_SIZES) - 1}")
    big = (_WIDTH[bsize] > 16) | (_HEIGHT[bsize] > 16)
    rows, cols = bsize.shape[0] // 4, bsize.shape[1] // 4
    labels = np.full((rows, cols), NOT_A_NODE, dtype=np.int64)
    for r in range(rows):
        for c in range(cols):
            pr, pc = (r // 2) * 8, (c // 2) * 8  # 32x32 parent, in units, clipped to the map
            if big[pr:pr + 8, pc:pc + 8].any():
                continue
            labels[r, c] = classify_node(bsize[4 * r:4 * r + 4, 4 * c:4 * c + 4], f"{where}: 16x16 block at "
                                                                                   f"y={16 * r}, x={16 * c}")
    return labels


def classify_node(node: np.ndarray, where: str = "node") -> int:
    """Partition id of one 16x16 node given its 4x4 grid of block-size codes (reference rules, no guessing)."""
    node = np.asarray(node)
    top, bottom, left, right = node[:2], node[2:], node[:, :2], node[:, 2:]

    def all_(part: np.ndarray, code: int) -> bool:
        return bool((part == code).all())

    if all_(node, B16X16):
        return NONE
    if all_(node, B16X8):
        return HORZ
    if all_(node, B8X16):
        return VERT
    if all_(node, B16X4):
        return HORZ_4
    if all_(node, B4X16):
        return VERT_4
    if all_(top, B8X8) and all_(bottom, B16X8):
        return HORZ_A
    if all_(top, B16X8) and all_(bottom, B8X8):
        return HORZ_B
    if all_(left, B8X8) and all_(right, B8X16):
        return VERT_A
    if all_(left, B8X16) and all_(right, B8X8):
        return VERT_B
    if ((_WIDTH[node] <= 8) & (_HEIGHT[node] <= 8)).all():
        return SPLIT
    names = [[f"{BLOCK_SIZES[v][0]}x{BLOCK_SIZES[v][1]}" for v in row] for row in node]
    raise LossAblationError(f"{where}: block sizes {names} match no AV1 partition rule")


# ----------------------------------------------------------------------------------------------------------------
# 2. tools
@dataclass(frozen=True)
class Tools:
    aomenc: Path
    inspect: Path
    info: dict = field(default_factory=dict)


def _run(cmd: Sequence[str], what: str, cwd: str | os.PathLike | None = None, log=None) -> str:
    if log:
        log("$ " + " ".join(str(c) for c in cmd))
    try:
        proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True)
    except OSError as exc:
        raise LossAblationError(f"{what}: cannot run {cmd[0]}: {exc}") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise LossAblationError(f"{what}: {Path(str(cmd[0])).name} failed (exit {proc.returncode}): "
                                + " | ".join(tail))
    return proc.stdout


def _apt_install(packages: Sequence[str], log) -> None:
    """apt-get install the missing packages (root needed); refresh the lists once if the first try fails."""
    if not packages:
        return
    if shutil.which("apt-get") is None:
        raise LossAblationError(f"tools: need the Debian packages {' '.join(packages)} and there is no apt-get")
    if os.geteuid() != 0:
        raise LossAblationError(f"tools: install the Debian packages {' '.join(packages)} (apt-get needs root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    log("$ " + " ".join(cmd))
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        _run(["apt-get", "update"], "tools: apt-get update", log=log)
        _run(cmd, "tools: apt-get install", log=log)


def _private_apt_options(apt_dir: Path) -> list[str]:
    """A private apt config with deb-src lines (the system's sources are never edited)."""
    parts = apt_dir / "parts"
    for sub in (parts, apt_dir / "lists" / "partial", apt_dir / "cache" / "archives" / "partial"):
        sub.mkdir(parents=True, exist_ok=True)
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        text = sources.read_text()
        (parts / "src.sources").write_text(
            "\n".join("Types: deb-src" if line.strip() == "Types: deb" else line for line in text.splitlines())
            + "\n")
    else:
        (parts / "src.list").write_text("deb-src http://deb.debian.org/debian bookworm main\n")
    return ["-o", "Dir::Etc::SourceList=/dev/null", "-o", f"Dir::Etc::SourceParts={parts}",
            "-o", f"Dir::State::Lists={apt_dir / 'lists'}", "-o", f"Dir::Cache={apt_dir / 'cache'}"]


def _build_inspect(cache: Path, log) -> Path:
    work = cache / "work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    opts = _private_apt_options(work / "apt")
    _run(["apt-get", *opts, "update"], "tools: apt-get update (deb-src)", log=log)
    download = work / "download"
    download.mkdir()
    _run(["apt-get", *opts, "source", "--download-only", AOM_SOURCE], "tools: apt-get source aom",
         cwd=download, log=log)
    dsc = sorted(download.glob("aom_*.dsc"))
    if not dsc:
        raise LossAblationError(f"tools: {download}: no aom_*.dsc downloaded")
    src = work / "src"
    _run(["dpkg-source", "-x", dsc[0].name, str(src)], "tools: dpkg-source -x", cwd=download, log=log)
    build = work / "build"
    _run(["cmake", "-G", "Ninja", "-S", src, "-B", build, *INSPECT_CMAKE_FLAGS], "tools: cmake (inspect)", log=log)
    _run(["ninja", "-C", build, "inspect"], "tools: ninja inspect", log=log)
    target = cache / "bin" / "inspect"
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        shutil.copy2(build / "examples" / "inspect" if (build / "examples" / "inspect").exists()
                     else build / "inspect", tmp)
    target.chmod(0o755)
    atomic_write_json(cache / "tools.json", {"aom_source": dsc[0].name, "cmake_flags": list(INSPECT_CMAKE_FLAGS),
                                             "inspect_sha256": sha256_file(target)})
    shutil.rmtree(work)
    return target


def aomenc_version(aomenc: Path) -> str:
    out = subprocess.run([str(aomenc), "--help"], capture_output=True, text=True)
    for line in (out.stdout + out.stderr).splitlines():
        if "av1" in line and "Encoder" in line:
            return line.split("Encoder", 1)[1].strip()
    return "unknown"


def prepare_tools(cache_dir: str | os.PathLike, log: Callable[[str], None] | None = None) -> Tools:
    """Make ``aomenc`` and ``inspect`` available; idempotent (a second call does no work), safe across processes."""
    from filelock import FileLock

    log = log or (lambda msg: print(msg, file=sys.stderr))
    cache = Path(cache_dir).expanduser().resolve()
    cache.mkdir(parents=True, exist_ok=True)
    inspect = cache / "bin" / "inspect"
    with FileLock(str(cache / ".prepare.lock")):
        need = ["aom-tools"] if shutil.which("aomenc") is None else []
        if not inspect.exists():
            need += [p for p in APT_PACKAGES[1:] if shutil.which(_PKG_BINARY[p]) is None]
        _apt_install(need, log)
        if not inspect.exists():
            log(f"building libaom inspect into {cache} (about a minute)")
            _build_inspect(cache, log)
    aomenc = Path(shutil.which("aomenc") or "aomenc")
    info = json.loads((cache / "tools.json").read_text()) if (cache / "tools.json").exists() else {}
    info["aomenc"] = aomenc_version(aomenc)
    return Tools(aomenc=aomenc, inspect=inspect, info=info)
