"""AV1 partition labels of 16x16 blocks from libaom's block-size map (``inspect -bs``).

libaom's ``inspect`` example prints, per decoded frame, the BLOCK_SIZE code of every 4x4 unit. A 16x16-aligned
block is a 16x16 partition *node* when its 32x32 parent holds nothing wider or taller than 16 (otherwise the
encoder never decided a 16x16 partition there); inside a node the pattern of block sizes names the partition
(:func:`classify_node`). A pattern outside these rules raises: it is never skipped or guessed.
"""

from __future__ import annotations

import numpy as np

from lossablation.classes import PARTITION_NAMES
from lossablation.errors import LossAblationError

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

_PID = {name: pid for pid, name in enumerate(PARTITION_NAMES)}  # partition name -> libaom partition id
NOT_A_NODE = -1


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
        return _PID["NONE"]
    if all_(node, B16X8):
        return _PID["HORZ"]
    if all_(node, B8X16):
        return _PID["VERT"]
    if all_(node, B16X4):
        return _PID["HORZ_4"]
    if all_(node, B4X16):
        return _PID["VERT_4"]
    if all_(top, B8X8) and all_(bottom, B16X8):
        return _PID["HORZ_A"]
    if all_(top, B16X8) and all_(bottom, B8X8):
        return _PID["HORZ_B"]
    if all_(left, B8X8) and all_(right, B8X16):
        return _PID["VERT_A"]
    if all_(left, B8X16) and all_(right, B8X8):
        return _PID["VERT_B"]
    if ((_WIDTH[node] <= 8) & (_HEIGHT[node] <= 8)).all():
        return _PID["SPLIT"]
    names = [[f"{BLOCK_SIZES[v][0]}x{BLOCK_SIZES[v][1]}" for v in row] for row in node]
    raise LossAblationError(f"{where}: block sizes {names} match no AV1 partition rule")
