"""make-dataset: real libaom partition decisions for 16x16 luma blocks.

Pipeline (see ``../shared/reference/av1-dataset.md``):

1. :func:`prepare_tools` installs Debian's ``aom-tools`` (``aomenc``) and builds libaom's ``inspect`` example
   from Debian's own ``aom`` source with ``CONFIG_INSPECTION=1`` into a cache folder (idempotent).
2. Every input (an image, or a ``.y4m`` video) becomes a luma clip cropped to a multiple of 16; each clip is
   encoded with ``aomenc`` at several cq levels and decoded by ``inspect -bs`` into a block-size map per frame.
3. :func:`derive_partition_labels` turns a block-size map into 16x16 partition ids by the reference rules;
   a pattern outside those rules raises, it is never skipped.
4. Pixels come from the SOURCE luma (not the reconstruction); everything goes into one compressed npz
   (format documented in ``config/README.md``, read by :func:`lossablation.data.blocks.load_dataset`).
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

from lossablation.errors import LossAblationError
from lossablation.io import atomic_path, atomic_write_json, sha256_file

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

# partition ids (same order as lossablation.data.blocks.PARTITION_NAMES)
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


# ----------------------------------------------------------------------------------------------------------------
# 3. inputs -> luma clips
@dataclass
class Clip:
    """Frames (T, H, W) uint8 luma, H and W multiples of 16, encoded as one stream."""

    source: str
    variant: str
    frames: np.ndarray


def luma_u8(image: np.ndarray, where: str) -> np.ndarray:
    """8-bit luma (BT.601 weights on RGB; grey images as they are), values rounded."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    if img.ndim == 3 and img.shape[2] == 3:
        rgb = img.astype(np.float64)
        if img.dtype.kind == "f":
            rgb = rgb * 255.0
        elif img.dtype == np.uint16:
            rgb = rgb / 257.0
        y = rgb @ np.array([0.299, 0.587, 0.114])
    elif img.ndim == 2:
        y = img.astype(np.float64)
        if img.dtype.kind == "f":
            y = y * 255.0
        elif img.dtype == np.uint16:
            y = y / 257.0
        elif img.dtype == bool:
            y = y * 255.0
    else:
        raise LossAblationError(f"{where}: expected a grey or RGB image, got shape {img.shape}")
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def crop16(frames: np.ndarray, where: str) -> np.ndarray:
    """Crop (…, H, W) to multiples of 16 (top-left kept): edge blocks would have forced partitions."""
    h, w = (frames.shape[-2] // 16) * 16, (frames.shape[-1] // 16) * 16
    if h < 32 or w < 32:
        raise LossAblationError(f"{where}: frame {frames.shape[-2]}x{frames.shape[-1]} is smaller than 32x32")
    return np.ascontiguousarray(frames[..., :h, :w])


def read_y4m(path: Path, max_frames: int | None = None) -> np.ndarray:
    """Luma planes (T, H, W) of an 8-bit 4:2:0 / 4:4:4 / mono Y4M file."""
    where = str(path)
    with open(path, "rb") as handle:
        header = handle.readline()
        if not header.startswith(b"YUV4MPEG2"):
            raise LossAblationError(f"{where}: not a YUV4MPEG2 file")
        params = {tok[:1]: tok[1:] for tok in header.split()[1:]}
        w, h = int(params[b"W"]), int(params[b"H"])
        colour = params.get(b"C", b"420jpeg").decode()
        if colour.startswith("420"):
            chroma = 2 * ((w + 1) // 2) * ((h + 1) // 2)
        elif colour == "444":
            chroma = 2 * w * h
        elif colour == "mono":
            chroma = 0
        else:
            raise LossAblationError(f"{where}: Y4M colour space {colour} not supported (8-bit 420/444/mono)")
        frames = []
        while max_frames is None or len(frames) < max_frames:
            line = handle.readline()
            if not line:
                break
            if not line.startswith(b"FRAME"):
                raise LossAblationError(f"{where}: frame {len(frames)}: missing FRAME marker")
            data = handle.read(w * h + chroma)
            if len(data) < w * h + chroma:
                raise LossAblationError(f"{where}: frame {len(frames)} is truncated")
            frames.append(np.frombuffer(data[:w * h], dtype=np.uint8).reshape(h, w))
    if not frames:
        raise LossAblationError(f"{where}: no frames")
    return np.stack(frames)


def read_video(path: Path, max_frames: int | None) -> np.ndarray:
    """Luma frames of a video: Y4M natively, anything else through PyAV when it is installed."""
    if path.suffix.lower() == ".y4m":
        return read_y4m(path, max_frames)
    try:
        import av  # optional
    except ImportError:
        raise LossAblationError(f"{path}: reading this video needs PyAV (pip install av), or convert it to .y4m "
                                "(ffmpeg -i IN -pix_fmt yuv420p OUT.y4m)") from None
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="gray"))
            if max_frames is not None and len(frames) >= max_frames:
                break
    if not frames:
        raise LossAblationError(f"{path}: no video frames")
    return np.stack(frames)


VIDEO_SUFFIXES = {".y4m", ".mp4", ".mkv", ".webm", ".avi", ".mov", ".ivf"}


def load_clips(inputs: Sequence[str], variants: Sequence[str], max_frames: int | None) -> list[Clip]:
    """Each input -> clips (one per image variant; a video is one clip). 'skimage' expands to the bundled images."""
    for v in variants:
        if v not in VARIANTS:
            raise LossAblationError(f"--variants: unknown variant {v!r} (valid: {', '.join(VARIANTS)})")
    clips: list[Clip] = []
    names: set[str] = set()
    for item in inputs:
        if item == "skimage":
            import skimage.data

            images = [(name, _skimage_image(name), f"skimage.data.{name}") for name in SKIMAGE_IMAGES]
        else:
            path = Path(item)
            if not path.is_file():
                raise LossAblationError(f"{item}: no such input file")
            if path.suffix.lower() in VIDEO_SUFFIXES:
                frames = crop16(read_video(path, max_frames), item)
                name = _unique(path.stem, names)
                clips.append(Clip(name, "video", frames))
                continue
            import skimage.io

            try:
                img = skimage.io.imread(path)
            except Exception as exc:
                raise LossAblationError(f"{item}: cannot read image ({str(exc).splitlines()[0][:100]})") from None
            images = [(path.stem, img, item)]
        for name, img, where in images:
            name = _unique(name, names)
            y = luma_u8(img, where)
            for v in variants:
                clips.append(Clip(name, v, crop16(VARIANTS[v](y)[None], where)))
    return clips


def _skimage_image(name: str) -> np.ndarray:
    """A bundled scikit-image image (stereo_motorcycle returns a (left, right, disparity) tuple: take left)."""
    import skimage.data

    img = getattr(skimage.data, name)()
    return img[0] if isinstance(img, tuple) else img


def _unique(name: str, taken: set[str]) -> str:
    base, k = name, 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


# ----------------------------------------------------------------------------------------------------------------
# 4. encode, inspect, label
def write_y4m(path: Path, frames: np.ndarray) -> None:
    """4:2:0 Y4M with the given luma and neutral chroma (the labels are luma partitions)."""
    t, h, w = frames.shape
    chroma = bytes([128]) * (2 * (h // 2) * (w // 2))
    with open(path, "wb") as handle:
        handle.write(f"YUV4MPEG2 W{w} H{h} F25:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            handle.write(b"FRAME\n")
            handle.write(np.ascontiguousarray(frame).tobytes())
            handle.write(chroma)


def encoder_args(cq: int, cpu_used: int) -> list[str]:
    return ["--ivf", "--good", "--passes=1", "--end-usage=q", f"--cq-level={cq}", f"--cpu-used={cpu_used}",
            "--lag-in-frames=0", "--threads=1"]


def inspect_block_sizes(tools: Tools, ivf: Path, where: str) -> list[dict]:
    """Shown frames of ``inspect -bs``: dicts with ``blockSize`` (np array), ``baseQIndex``, ``frame``."""
    out = _run([tools.inspect, ivf, "-bs"], f"{where}: inspect")
    try:
        frames = [f for f in json.loads(out) if f is not None]
    except json.JSONDecodeError as exc:
        raise LossAblationError(f"{where}: inspect printed no valid JSON ({exc})") from None
    return [f for f in frames if f.get("showFrame", 1)]


def encode_and_label(tools: Tools, clip: Clip, cq: int, cpu_used: int, workdir: Path) -> dict[str, np.ndarray]:
    """Encode one clip at one cq level; return per-block arrays for every 16x16 node of every frame."""
    where = f"{clip.source}/{clip.variant}/cq{cq}"
    stem = f"{clip.source}-{clip.variant}-cq{cq}"
    y4m, ivf = workdir / f"{stem}.y4m", workdir / f"{stem}.ivf"
    write_y4m(y4m, clip.frames)
    t, h, w = clip.frames.shape
    _run([tools.aomenc, *encoder_args(cq, cpu_used), f"--limit={t}", "-o", ivf, y4m], f"{where}: aomenc")
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


def make_dataset(inputs: Sequence[str], out: str | os.PathLike, cq_levels: Sequence[int] = (16, 28, 40, 52),
                 cpu_used: int = 4, cache: str | os.PathLike = "~/.cache/lossablation/aom",
                 max_frames: int | None = None, variants: Sequence[str] = ("orig",), jobs: int | None = None,
                 log: Callable[[str], None] | None = None) -> dict:
    """Encode every input at every cq level, label the 16x16 nodes, write one npz. Returns a summary dict."""
    from lossablation.data.blocks import PARTITION_NAMES, BlockSet, save_npz

    log = log or (lambda msg: print(msg, file=sys.stderr))
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
    tools = prepare_tools(cache, log)
    clips = load_clips(inputs, variants, max_frames)
    source_names = list(dict.fromkeys(c.source for c in clips))
    variant_names = list(dict.fromkeys(c.variant for c in clips))
    tasks = [(clip, int(cq)) for clip in clips for cq in cq_levels]
    log(f"encoding {len(clips)} clip(s) x {len(cq_levels)} cq level(s) = {len(tasks)} encodes")
    with tempfile.TemporaryDirectory(prefix="lossablation-aom-") as tmp:
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
            results = list(pool.map(lambda task: encode_and_label(tools, task[0], task[1], cpu_used, Path(tmp)),
                                    tasks))
    parts = {key: np.concatenate([r[key] for r in results]) for key in results[0]}
    n_per_task = [r["partition"].shape[0] for r in results]
    source = np.repeat([source_names.index(c.source) for c, _ in tasks], n_per_task)
    variant = np.repeat([variant_names.index(c.variant) for c, _ in tasks], n_per_task)
    cq = np.repeat([q for _, q in tasks], n_per_task)
    encoder = {
        "tool": "aomenc", "version": tools.info.get("aomenc"), "args": [a for a in encoder_args(0, cpu_used) if not a.startswith("--cq-level")],
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
