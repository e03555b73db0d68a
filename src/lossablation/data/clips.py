"""make-dataset's inputs as luma clips: images (with optional flipped / transposed variants) and videos.

Every input becomes 8-bit luma frames cropped at the top-left to a multiple of 16 (edge blocks would have forced
partitions); ``skimage`` stands for the images bundled with scikit-image. Y4M files are read and written here;
other video containers need PyAV.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from lossablation.errors import LossAblationError

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
VIDEO_SUFFIXES = {".y4m", ".mp4", ".mkv", ".webm", ".avi", ".mov", ".ivf"}


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


def load_clips(inputs: Sequence[str], variants: Sequence[str], max_frames: int | None) -> list[Clip]:
    """Each input -> clips (one per image variant; a video is one clip). 'skimage' expands to the bundled images."""
    for v in variants:
        if v not in VARIANTS:
            raise LossAblationError(f"--variants: unknown variant {v!r} (valid: {', '.join(VARIANTS)})")
    clips: list[Clip] = []
    names: set[str] = set()
    for item in inputs:
        if item == "skimage":
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
