"""make-dataset: partition labels from libaom block-size maps (data.av1labels), inputs (data.clips), the libaom
tools (data.aomtools) and the command end to end (data.make_dataset, through the CLI)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from lossablation.data.av1labels import NOT_A_NODE, classify_node, derive_partition_labels
from lossablation.data.clips import crop16, luma_u8, read_y4m, write_y4m
from lossablation.errors import LossAblationError

# libaom BLOCK_SIZE codes, written out from the reference's enum list (4x4, 4x8, 8x4, ...; width x height)
REF_ORDER = ("4x4 4x8 8x4 8x8 8x16 16x8 16x16 16x32 32x16 32x32 32x64 64x32 64x64 64x128 128x64 128x128 "
             "4x16 16x4 8x32 32x8 16x64 64x16").split()
C = {name: code for code, name in enumerate(REF_ORDER)}


def grid(rows: list[str]) -> np.ndarray:
    """A 4x4 node from four rows of four size names."""
    return np.array([[C[name] for name in row.split()] for row in rows])


S8 = "8x8 8x8 8x8 8x8"
H8 = "16x8 16x8 16x8 16x8"
V8 = "8x16 8x16 8x16 8x16"
NODES = {  # partition id -> a hand-made 4x4 map of a 16x16 node
    0: grid(["16x16 16x16 16x16 16x16"] * 4),
    1: grid([H8] * 4),
    2: grid([V8] * 4),
    3: grid(["4x4 4x4 8x8 8x8", "4x4 4x4 8x8 8x8", "4x8 8x4 8x8 8x8", "4x8 8x4 8x8 8x8"]),
    4: grid([S8, S8, H8, H8]),                                   # HORZ_A: two 8x8 on top, 16x8 below
    5: grid([H8, H8, S8, S8]),                                   # HORZ_B
    6: grid(["8x8 8x8 8x16 8x16", "8x8 8x8 8x16 8x16"] * 2),    # VERT_A: two 8x8 left, 8x16 right
    7: grid(["8x16 8x16 8x8 8x8", "8x16 8x16 8x8 8x8"] * 2),    # VERT_B
    8: grid(["16x4 16x4 16x4 16x4"] * 4),
    9: grid(["4x16 4x16 4x16 4x16"] * 4),
}


@pytest.mark.parametrize("pid", range(10))
def test_every_partition_from_a_hand_made_node(pid):
    assert classify_node(NODES[pid]) == pid


def test_split_of_all_8x8_and_smaller():
    assert classify_node(grid([S8] * 4)) == 3
    assert classify_node(grid(["4x4 4x4 4x4 4x4"] * 4)) == 3


@pytest.mark.parametrize("rows", [
    [H8, H8, V8, V8],                                            # HORZ over VERT halves
    ["16x16 16x16 16x16 16x16", "16x16 16x16 16x16 16x16", H8, H8],
    [S8, S8, V8, V8],                                            # 8x8 on top, 8x16 below: no rule
    ["16x4 16x4 16x4 16x4"] * 2 + [H8] * 2,                      # HORZ_4 mixed with HORZ
    ["4x16 4x16 8x8 8x8"] * 4,
])
def test_impossible_patterns_raise(rows):
    with pytest.raises(LossAblationError, match="match no AV1 partition rule"):
        classify_node(grid(rows))


def test_map_of_four_nodes_and_non_nodes():
    # 32x64 frame region (8 x 16 units): left 32x32 parent holds four 16x16 nodes; right parent is one 32x16 pair
    left = np.block([[NODES[0], NODES[1]], [NODES[4], NODES[9]]])
    right = np.full((8, 8), C["32x16"])
    labels = derive_partition_labels(np.hstack([left, right]))
    assert labels.tolist() == [[0, 1, NOT_A_NODE, NOT_A_NODE], [4, 9, NOT_A_NODE, NOT_A_NODE]]


def test_lone_16x16_beside_a_larger_block_is_not_a_node():
    # a 32x32 HORZ_A-like parent: two 16x16 on top, one 32x16 below -> the 16x16s were never a 16x16 node
    parent = np.vstack([np.hstack([NODES[0], NODES[0]]), np.full((4, 8), C["32x16"])])
    assert (derive_partition_labels(parent) == NOT_A_NODE).all()
    # a 16x32 on the right makes the left nodes non-nodes too
    parent = np.hstack([np.vstack([NODES[0], NODES[3]]), np.full((8, 4), C["16x32"])])
    assert (derive_partition_labels(parent) == NOT_A_NODE).all()


def test_map_errors_name_the_block():
    bad = np.block([[NODES[0], NODES[0]], [NODES[0], grid([H8, H8, V8, V8])]])
    with pytest.raises(LossAblationError, match=r"frame 3: 16x16 block at y=16, x=16"):
        derive_partition_labels(bad, "frame 3")
    with pytest.raises(LossAblationError, match="expected a"):
        derive_partition_labels(np.zeros((6, 8), dtype=int))


def test_map_of_a_frame_edge_parent():
    # a 48-pixel-high frame: the last row of 16x16 blocks has a parent cut by the frame edge
    top = np.block([[NODES[2], NODES[3]], [NODES[5], NODES[6]]])
    edge = np.hstack([NODES[7], NODES[8]])
    assert derive_partition_labels(np.vstack([top, edge])).tolist() == [[2, 3], [5, 6], [7, 8]]


def test_luma_bt601():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]], dtype=np.uint8)
    assert luma_u8(rgb, "x").tolist() == [[76, 150, 29, 255]]  # 0.299, 0.587, 0.114 x 255, rounded
    assert luma_u8(np.array([[0.0, 1.0]]), "x").tolist() == [[0, 255]]


def test_crop_and_y4m_round_trip(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (3, 50, 70), dtype=np.uint8)
    cropped = crop16(frames, "clip")
    assert cropped.shape == (3, 48, 64)
    write_y4m(tmp_path / "c.y4m", cropped)
    np.testing.assert_array_equal(read_y4m(tmp_path / "c.y4m"), cropped)
    np.testing.assert_array_equal(read_y4m(tmp_path / "c.y4m", max_frames=2), cropped[:2])
    with pytest.raises(LossAblationError, match="smaller than 32x32"):
        crop16(frames[:, :20], "tiny")


# ---------------------------------------------------------------------------------------------------------------
def _skip_aom() -> bool:
    return os.environ.get("LOSSABLATION_SKIP_AOM") == "1" and not os.environ.get("CI")


@pytest.mark.skipif(_skip_aom(), reason="LOSSABLATION_SKIP_AOM=1 (never skipped when CI is set)")
def test_make_dataset_end_to_end(tmp_path):
    """Prepare the real tools, encode two images and a short video, and check the npz against the sources."""
    import skimage.data
    import skimage.io

    from lossablation.cli import main as cli_main
    from lossablation.data.aomtools import Tools, prepare_tools
    from lossablation.data.av1labels import BLOCK_SIZES
    from lossablation.data.blocks import load_dataset

    cache = os.environ.get("LOSSABLATION_AOM_CACHE", "~/.cache/lossablation/aom")
    tools = prepare_tools(cache)
    assert isinstance(tools, Tools) and tools.inspect.is_file()
    assert prepare_tools(cache).inspect == tools.inspect  # idempotent

    camera = skimage.data.camera()[100:260, 150:310]
    coins = skimage.data.coins()[:128, :160]
    skimage.io.imsave(tmp_path / "camera.png", camera)
    skimage.io.imsave(tmp_path / "coins.png", coins)
    video = np.stack([np.roll(camera[:96, :128], 2 * t, axis=1) for t in range(4)])
    write_y4m(tmp_path / "pan.y4m", video)
    out = tmp_path / "tiny.npz"
    argv = ["make-dataset", str(tmp_path / "camera.png"), str(tmp_path / "coins.png"), str(tmp_path / "pan.y4m"),
            "--out", str(out), "--cq", "20", "50", "--cpu-used", "4", "--cache", cache, "--max-frames", "3"]
    assert cli_main(argv) == 0

    ds = load_dataset(out)
    assert ds.source_names == ("camera", "coins", "pan") and ds.bit_depth == 8
    assert len(ds) > 0 and set(np.unique(ds.source)) == {0, 1, 2}
    assert sorted(np.unique(ds.cq)) == [20, 50]
    assert set(np.unique(ds.frame[ds.source == 2])) <= {0, 1, 2}  # max_frames=3
    stills = ds.source < 2  # key frames: qindex from the bitstream grows with cq
    assert ds.qindex[stills & (ds.cq == 50)].min() > ds.qindex[stills & (ds.cq == 20)].max()
    assert ds.partition.min() >= 0 and ds.partition.max() <= 9
    # pixels come from the source luma at the recorded position
    sources = {0: camera[None], 1: coins[None], 2: video[:3]}
    for i in np.random.default_rng(0).choice(len(ds), 50, replace=False):
        y, x = ds.position[i]
        frame = sources[int(ds.source[i])][int(ds.frame[i])]
        np.testing.assert_array_equal(ds.blocks[i, 0], frame[y:y + 16, x:x + 16])
    # the block-size table agrees with the names the decoder itself prints
    ivf = tmp_path / "c.ivf"
    write_y4m(tmp_path / "c.y4m", camera[None, :64, :64])
    import subprocess

    subprocess.run([str(tools.aomenc), "--ivf", "--limit=1", "-o", str(ivf), str(tmp_path / "c.y4m")],
                   check=True, capture_output=True)
    printed = json.loads(subprocess.run([str(tools.inspect), str(ivf), "-bs"], check=True, capture_output=True,
                                        text=True).stdout)[0]["blockSizeMap"]
    assert {f"BLOCK_{w}X{h}": code for code, (w, h) in enumerate(BLOCK_SIZES)} == printed
    assert ds.provenance["encoder"]["cq_levels"] == [20, 50]
