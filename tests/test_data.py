"""lossablation.data: v7 + npz readers, validation messages, Stage-1/2 targets, grouped splits, describe."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lossablation.classes import PARTITION_NAMES, STAGE2_CLASSES
from lossablation.cli import main as cli_main
from lossablation.config import load_config
from lossablation.data.blocks import BlockSet, load_dataset, save_npz
from lossablation.data.describe import describe
from lossablation.data.grouping import grouped_assignment
from lossablation.data.splits import make_splits, write_split_audit
from lossablation.data.targets import stage1_targets, stage2_targets
from lossablation.errors import LossAblationError

# The v7 stage-2 / stage-3 encodings written out by hand from the v7 reference table (the oracle).
V7_STAGE2 = {0: -1, 1: 1, 2: 1, 3: 0, 4: 2, 5: 2, 6: 2, 7: 2}
V7_RECT = {1: 0, 2: 1}
V7_AB = {4: 0, 5: 1, 6: 2, 7: 3}


def write_v7_file(path: Path, n: int, seed: int) -> dict:
    """One file in exactly the v7 layout (their data only has partitions 0-7; qps is their constant 80)."""
    g = torch.Generator().manual_seed(seed)
    stage0 = torch.randint(0, 8, (n,), generator=g)
    stage0[:8] = torch.arange(8)  # every partition at least once
    obj = {
        "samples": torch.randint(0, 1024, (n, 1, 16, 16), generator=g).float() / 1023.0,
        "labels_stage0": stage0.long(),
        "labels_stage1": (stage0 != 0).long(),
        "labels_stage2": torch.tensor([V7_STAGE2[int(v)] for v in stage0]).long(),
        "labels_stage3_RECT": torch.tensor([V7_RECT.get(int(v), -1) for v in stage0]).long(),
        "labels_stage3_AB": torch.tensor([V7_AB.get(int(v), -1) for v in stage0]).long(),
        "qps": torch.full((n,), 80.0),
    }
    torch.save(obj, path)
    return obj


@pytest.fixture
def v7_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "v7"
    folder.mkdir()
    write_v7_file(folder / "train.pt", 400, 1)
    write_v7_file(folder / "val.pt", 200, 2)
    (folder / "metadata.json").write_text(json.dumps({"note": "as upstream writes it"}))
    return folder


def synthetic_blockset(n_sources: int = 30, per_source: int = 60, seed: int = 0) -> BlockSet:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(per_source // 2, per_source * 2, n_sources)
    source = np.repeat(np.arange(n_sources), sizes)
    partition = rng.integers(0, 10, source.shape[0])
    n = source.shape[0]
    return BlockSet(
        blocks=rng.integers(0, 256, (n, 1, 16, 16), dtype=np.uint8), bit_depth=8, partition=partition,
        source=source, source_names=tuple(f"src{i:02d}" for i in range(n_sources)),
        qindex=rng.integers(0, 256, n), cq=rng.choice([16, 52], n), frame=rng.integers(0, 3, n),
        position=rng.integers(0, 64, (n, 2)) * 16, variant=np.zeros(n, np.int64), variant_names=("orig",),
    )


def raw_cfg_for(path, seed=0, **split) -> dict:
    """A sweep config around ``path`` as a user writes it (the split spelled out, everything else default)."""
    return {"dataset": str(path), "losses": {"baseline": {"kind": "cross_entropy"}},
            "split": {"seed": seed, "val_fraction": 0.15, "test_fraction": 0.15, "v7_test_fraction": 0.5, **split}}


def cfg_for(path, seed=0, **split) -> dict:
    """The validated config (defaults filled in), as the data functions take it."""
    return load_config(raw_cfg_for(path, seed, **split))


# ---------------------------------------------------------------------------------------------------------------
def test_v7_reader_and_targets_match_their_labels(v7_dir):
    ds = load_dataset(v7_dir)
    train = torch.load(v7_dir / "train.pt", weights_only=True)
    val = torch.load(v7_dir / "val.pt", weights_only=True)
    assert len(ds) == 600 and ds.bit_depth is None and ds.n_sources is None
    assert torch.equal(ds.samples()[:400], train["samples"])
    labels0 = torch.cat([train["labels_stage0"], val["labels_stage0"]])
    assert torch.equal(stage2_targets(ds.partition), torch.cat([train["labels_stage2"], val["labels_stage2"]]))
    assert torch.equal(stage1_targets(ds.partition), torch.cat([train["labels_stage1"], val["labels_stage1"]]))
    assert torch.equal(torch.from_numpy(ds.partition), labels0)


def test_v7_split_without_test_file_is_block_level(v7_dir):
    splits = make_splits(cfg_for(v7_dir))
    assert splits.info["block_level"] is True
    assert splits.info["n_sources"] is None and splits.info["sources"] is None
    assert len(splits.train) == 400
    val_idx = np.concatenate([splits.val.index, splits.test.index])
    assert sorted(val_idx) == list(range(400, 600))  # val.pt shared between val and test, nothing lost
    assert abs(len(splits.test) - 100) <= 4
    assert splits.train.x.dtype == torch.float32 and splits.train.partition.dtype == torch.int64
    assert tuple(splits.val.x.shape[1:]) == (1, 16, 16)
    assert splits.info["counts"]["train"]["n"] == 400
    assert len(splits.info["fingerprint"]) == 64


def test_v7_uses_test_file_when_present(v7_dir):
    write_v7_file(v7_dir / "test.pt", 150, 3)
    splits = make_splits(cfg_for(v7_dir))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (400, 200, 150)
    test = torch.load(v7_dir / "test.pt", weights_only=True)
    assert torch.equal(splits.test.x, test["samples"])
    assert "test.pt" in describe(v7_dir)["files"]


def test_stage2_groups_are_configurable():
    partition = torch.arange(10)
    default = stage2_targets(partition)
    assert default.tolist() == [-1, 1, 1, 0, 2, 2, 2, 2, 1, 1]
    moved = stage2_targets(partition, {"SPLIT": ["SPLIT", "HORZ_4", "VERT_4"], "RECT": ["HORZ", "VERT"],
                                       "AB": ["HORZ_A", "HORZ_B", "VERT_A", "VERT_B"]})
    assert moved.tolist() == [-1, 1, 1, 0, 2, 2, 2, 2, 0, 0]
    assert stage1_targets(np.arange(10)).tolist() == [0] + [1] * 9
    for groups, msg in [({"SPLIT": ["SPLIT"], "RECT": ["HORZ"]}, "classes: expected exactly"),
                        ({"SPLIT": ["SPLIT", "NONE"], "RECT": ["HORZ"], "AB": ["VERT"]}, "classes.SPLIT: NONE"),
                        ({"SPLIT": ["SPLIT"], "RECT": ["HORZ", "SPLIT"], "AB": ["VERT"]}, "already in SPLIT"),
                        ({"SPLIT": ["SPLITT"], "RECT": ["HORZ"], "AB": ["VERT"]}, "unknown partition 'SPLITT'")]:
        with pytest.raises(LossAblationError, match=msg):
            stage2_targets(partition, groups)


def test_npz_round_trip(tmp_path):
    ds = synthetic_blockset(5, 20)
    path = tmp_path / "d.npz"
    save_npz(path, ds, {"tool": "aomenc", "cpu_used": 4})
    back = load_dataset(path)
    for key in ("blocks", "partition", "source", "qindex", "cq", "frame", "position", "variant"):
        np.testing.assert_array_equal(getattr(back, key), getattr(ds, key), err_msg=key)
    assert back.source_names == ds.source_names and back.variant_names == ("orig",)
    assert back.bit_depth == 8 and back.blocks.dtype == np.uint8
    assert back.provenance["encoder"] == {"tool": "aomenc", "cpu_used": 4}
    x = back.samples(np.array([0]))
    assert torch.allclose(x * 255, torch.from_numpy(ds.blocks[:1].astype(np.float32)))
    with zipfile.ZipFile(path) as zf:  # compressed members
        assert all(info.compress_type == zipfile.ZIP_DEFLATED for info in zf.infolist())


def test_uint16_blocks_scale_by_their_bit_depth(tmp_path):
    ds = synthetic_blockset(3, 10)
    ds.blocks = np.full(ds.blocks.shape, 1023, dtype=np.uint16)
    ds.bit_depth = 10
    save_npz(tmp_path / "d10.npz", ds)
    back = load_dataset(tmp_path / "d10.npz")
    assert back.blocks.dtype == np.uint16 and float(back.samples().max()) == 1.0


def test_grouped_split_never_shares_a_source(tmp_path):
    ds = synthetic_blockset(40, 80)
    save_npz(tmp_path / "d.npz", ds)
    test_sets = set()
    for seed in range(6):
        splits = make_splits(cfg_for(tmp_path / "d.npz", seed))
        sides = [set(ds.source[s.index]) for s in (splits.train, splits.val, splits.test)]
        assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
        assert sum(map(len, sides)) == 40
        assert splits.info["block_level"] is False
        assert sorted(splits.info["sources"]["test"]) == sorted(ds.source_names[i] for i in sides[2])
        share = len(splits.test) / len(ds)
        assert 0.10 < share < 0.20, share  # near test_fraction 0.15 with 40 sources
        test_sets.add(tuple(sorted(sides[2])))
        again = make_splits(cfg_for(tmp_path / "d.npz", seed))
        np.testing.assert_array_equal(again.test.index, splits.test.index)  # identical for every run
    assert len(test_sets) > 1  # the seed matters


def test_grouped_assignment_balances_strata():
    counts = np.array([[100, 0], [0, 100], [50, 50], [10, 10], [10, 10], [20, 0], [0, 20], [5, 5]])
    side = grouped_assignment(counts, (0.5, 0.25, 0.25), seed=0)
    assert set(side) == {0, 1, 2}
    per_side = np.stack([counts[side == k].sum(axis=0) for k in range(3)])
    # the best reachable: 200 / 100 / 90 blocks, each side balanced 1:1 like the whole
    assert per_side[0].sum() >= 180 and all(80 <= per_side[k].sum() <= 110 for k in (1, 2)), per_side
    assert all(per_side[k][0] == per_side[k][1] for k in range(3)), per_side


def test_block_level_split_without_sources(tmp_path):
    ds = synthetic_blockset(4, 300)
    ds.source = ds.source_names = None
    save_npz(tmp_path / "nosrc.npz", ds)
    splits = make_splits(cfg_for(tmp_path / "nosrc.npz"))
    assert splits.info["block_level"] is True
    all_idx = np.concatenate([splits.train.index, splits.val.index, splits.test.index])
    assert sorted(all_idx) == list(range(len(ds)))
    assert abs(len(splits.val) / len(ds) - 0.15) < 0.01


def test_missing_stage2_class_in_a_split_is_an_error(tmp_path):
    ds = synthetic_blockset(12, 50)
    ab = np.isin(ds.partition, [4, 5, 6, 7])
    ds.partition[ab & (ds.source != 0)] = 3  # only source 0 has AB blocks
    save_npz(tmp_path / "d.npz", ds)
    with pytest.raises(LossAblationError, match=r"d\.npz: split '(val|test)' has no AB blocks"):
        make_splits(cfg_for(tmp_path / "d.npz"))


def test_split_audit_files(tmp_path):
    ds = synthetic_blockset(20, 50)
    save_npz(tmp_path / "d.npz", ds)
    cfg = cfg_for(tmp_path / "d.npz", 3)
    json_path, npz_path = write_split_audit(cfg, tmp_path / "results" / "data")
    info = json.loads(json_path.read_text())
    splits = make_splits(cfg)
    with np.load(npz_path) as idx:
        for side in ("train", "val", "test"):
            np.testing.assert_array_equal(idx[side], getattr(splits, side).index)
    assert info["fingerprint"] == splits.info["fingerprint"]
    assert set(info["sources"]) == {"train", "val", "test"}
    assert info["counts"]["test"]["n"] == len(splits.test)


def test_describe_json_and_table(tmp_path, capsys):
    ds = synthetic_blockset(6, 30)
    save_npz(tmp_path / "d.npz", ds)
    assert cli_main(["describe-data", str(tmp_path / "d.npz"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = {name: int((ds.partition == k).sum()) for k, name in enumerate(PARTITION_NAMES)}
    assert out["n_blocks"] == len(ds) and out["partition_counts"] == expected and out["n_sources"] == 6
    assert out["stage2_counts"] == {"SPLIT": expected["SPLIT"],
                                    "RECT": expected["HORZ"] + expected["VERT"] + expected["HORZ_4"]
                                    + expected["VERT_4"],
                                    "AB": expected["HORZ_A"] + expected["HORZ_B"] + expected["VERT_A"]
                                    + expected["VERT_B"]}
    assert cli_main(["describe-data", str(tmp_path / "d.npz")]) == 0
    table = capsys.readouterr().out
    assert "VERT_4" in table and f"{len(ds):,}" in table
    assert set(STAGE2_CLASSES) <= set(table.split())


def test_describe_v7_has_unknown_sources(v7_dir, capsys):
    assert cli_main(["describe-data", str(v7_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_sources"] is None and out["n_blocks"] == 600


# ---------------------------------------------------------------------------------------------------------------
# bad inputs: one line naming the file and the key
def _v7_with(tmp_path: Path, **changes) -> Path:
    folder = tmp_path / "bad"
    folder.mkdir(exist_ok=True)
    obj = write_v7_file(folder / "train.pt", 20, 1)
    write_v7_file(folder / "val.pt", 20, 2)
    for key, value in changes.items():
        if value is None:
            del obj[key]
        else:
            obj[key] = value
    torch.save(obj, folder / "train.pt")
    return folder


def _expect(path, pattern: str) -> None:
    with pytest.raises(LossAblationError) as err:
        load_dataset(path)
    message = str(err.value)
    assert "\n" not in message
    assert pattern in message, message


@pytest.mark.parametrize("changes, pattern", [
    ({"samples": None}, "train.pt: missing key 'samples'"),
    ({"labels_stage0": None}, "train.pt: missing key 'labels_stage0'"),
    ({"qps": torch.full((19,), 80.0)}, "train.pt: key 'qps': expected 20 finite numbers (one per block)"),
    ({"qps": torch.full((20,), float("nan"))}, "train.pt: key 'qps': expected 20 finite numbers"),
    ({"samples": torch.zeros(20, 16, 16)}, "train.pt: key 'samples': expected shape (N, 1, 16, 16)"),
    ({"samples": torch.zeros(20, 1, 16, 16, dtype=torch.float64)}, "train.pt: key 'samples': expected dtype float32"),
    ({"samples": torch.full((20, 1, 16, 16), 1.5)}, "train.pt: key 'samples': values outside [0, 1]"),
    ({"samples": torch.full((20, 1, 16, 16), -0.1)}, "train.pt: key 'samples': values outside [0, 1]"),
    ({"samples": torch.full((20, 1, 16, 16), float("nan"))}, "train.pt: key 'samples': contains NaN or inf"),
    ({"samples": torch.full((20, 1, 16, 16), float("inf"))}, "train.pt: key 'samples': contains NaN or inf"),
    ({"labels_stage0": torch.full((20,), 10)}, "train.pt: key 'labels_stage0': value 10 outside 0..9"),
    ({"labels_stage0": torch.full((20,), -1)}, "train.pt: key 'labels_stage0': value -1 outside 0..9"),
    ({"labels_stage0": torch.zeros(19, dtype=torch.long)}, "train.pt: key 'labels_stage0': length 19 does not match"),
    ({"labels_stage0": torch.zeros(20)}, "train.pt: key 'labels_stage0': expected an integer dtype"),
    # tensors that are not plain dense CPU tensors (issue 16)
    ({"samples": torch.zeros(20, 1, 16, 16).to_sparse()},
     "train.pt: key 'samples': expected a plain dense CPU tensor, got a tensor with sparse_coo layout"),
    ({"samples": torch.empty(20, 1, 16, 16, device="meta")},
     "train.pt: key 'samples': expected a plain dense CPU tensor, got a tensor with meta device"),
    ({"labels_stage0": torch.zeros(20, dtype=torch.long).to_sparse()},
     "train.pt: key 'labels_stage0': expected a plain dense CPU tensor, got a tensor with sparse_coo layout"),
    ({"samples": torch.zeros(20, 1, 16, 16, dtype=torch.bfloat16)},
     "train.pt: key 'samples': expected a plain dense CPU tensor"),
    ({"samples": torch.zeros(20, 1, 16, 16, dtype=torch.complex64).conj()},
     "train.pt: key 'samples': expected a plain dense CPU tensor"),
    ({"samples": [[0.5]]}, "train.pt: key 'samples': expected a tensor, got list"),
])
def test_bad_v7_inputs(tmp_path, changes, pattern):
    _expect(_v7_with(tmp_path, **changes), pattern)


def test_bad_v7_files(tmp_path):
    folder = _v7_with(tmp_path)
    (folder / "val.pt").unlink()
    _expect(folder, "val.pt: file not found")
    data = (folder / "train.pt").read_bytes()
    (folder / "val.pt").write_bytes(data[: len(data) // 2])
    _expect(folder, "val.pt: not a readable torch file")
    (folder / "val.pt").write_text("samples,labels\n1,2\n")
    _expect(folder, "val.pt: not a readable torch file")
    torch.save([1, 2, 3], folder / "val.pt")
    _expect(folder, "val.pt: expected a dict of tensors")
    _expect(tmp_path / "nothing-here", "nothing-here: no such file or folder")


def _npz_with(tmp_path: Path, **changes) -> Path:
    ds = synthetic_blockset(4, 10)
    save_npz(tmp_path / "good.npz", ds)
    with np.load(tmp_path / "good.npz") as src:
        arrays = {k: src[k] for k in src.files}
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value(arrays[key]) if callable(value) else value
    np.savez_compressed(tmp_path / "bad.npz", **arrays)
    return tmp_path / "bad.npz"


@pytest.mark.parametrize("changes, pattern", [
    ({"blocks": None}, "bad.npz: missing key 'blocks'"),
    ({"partition": None}, "bad.npz: missing key 'partition'"),
    ({"source_names": None}, "bad.npz: missing key 'source_names'"),
    ({"blocks": lambda b: b.astype(np.float32)}, "bad.npz: key 'blocks': expected dtype uint8 or uint16"),
    ({"blocks": lambda b: b[:, 0]}, "bad.npz: key 'blocks': expected shape (N, 1, 16, 16)"),
    ({"partition": lambda p: np.where(p == p[0], 12, p)}, "bad.npz: key 'partition': value 12 outside 0..9"),
    ({"partition": lambda p: p[:-1]}, "bad.npz: key 'partition': length"),
    ({"qindex": lambda q: q[:-2]}, "bad.npz: key 'qindex': length"),
    ({"source_id": lambda s: s + 10}, "bad.npz: key 'source_id': value"),
    ({"position": lambda p: p[:, :1]}, "bad.npz: key 'position': expected integer shape"),
    ({"bit_depth": np.array(12)}, "bad.npz: key 'bit_depth': 12 does not fit blocks of dtype uint8"),
    ({"encoder": np.array("[1, 2]")}, "bad.npz: key 'encoder': expected a JSON object, got list"),
    ({"qindex": lambda q: q.astype(object)}, "bad.npz: not a readable npz file (key 'qindex': Object arrays"),
])
def test_bad_npz_inputs(tmp_path, changes, pattern):
    _expect(_npz_with(tmp_path, **changes), pattern)


def test_npz_keys_outside_the_format_are_never_read(tmp_path):
    path = _npz_with(tmp_path, notes=np.array([{"pickled": True}], dtype=object))  # unreadable without pickle
    with pytest.raises(ValueError, match="allow_pickle"):
        np.load(path, allow_pickle=False)["notes"]
    assert len(load_dataset(path)) == len(load_dataset(tmp_path / "good.npz"))


def test_bad_npz_files(tmp_path):
    good = _npz_with(tmp_path)
    data = good.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 3])
    _expect(tmp_path / "cut.npz", "cut.npz: not a readable npz file")
    (tmp_path / "text.npz").write_text("hello")
    _expect(tmp_path / "text.npz", "text.npz: not a readable npz file")
    _expect(tmp_path / "absent.npz", "absent.npz: no such file or folder")


def test_demo_dataset_meets_its_promises():
    """The shipped demo: <= 10 MB, >= 20,000 Stage-2 blocks, >= 12 sources, every class on every side."""
    demo = Path(__file__).resolve().parents[1] / "resources" / "demo" / "av1_demo.npz"
    assert demo.stat().st_size <= 10 * 1024 * 1024
    splits = make_splits(cfg_for(demo))
    info = splits.info
    assert info["n_sources"] >= 12 and info["block_level"] is False
    assert sum(info["counts"][s]["n_stage2"] for s in ("train", "val", "test")) >= 20_000
    assert all(info["counts"][s]["stage2"][c] > 0 for s in ("train", "val", "test") for c in STAGE2_CLASSES)
    assert info["encoder"]["cpu_used"] == 4


# ---------------------------------------------------------------------------------------------------------------
# through the real CLI: exit 2, one line naming the culprit, no traceback, nothing written
LOSSABLATION = Path(sys.executable).with_name("lossablation")  # the console script a user runs


def cli_command(*args) -> list[str]:
    head = [str(LOSSABLATION)] if LOSSABLATION.exists() else [sys.executable, "-m", "lossablation.cli"]
    return head + [str(a) for a in args]


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(*args), capture_output=True, text=True, timeout=300)


def assert_refused(proc: subprocess.CompletedProcess, *culprits: str) -> str:
    """Exit status 2 and exactly one line on stderr that names every culprit; no traceback, no stdout."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stdout == "", proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for culprit in culprits:
        assert culprit in lines[0], lines[0]
    return lines[0]


def write_config(tmp_path: Path, dataset: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(raw_cfg_for(dataset)))  # JSON is YAML
    return path


@pytest.mark.parametrize("bad", ["sparse", "meta"])
def test_cli_refuses_a_v7_tensor_that_is_not_dense(tmp_path, bad):
    value = (torch.zeros(20, 1, 16, 16).to_sparse() if bad == "sparse"
             else torch.empty(20, 1, 16, 16, device="meta"))
    folder = _v7_with(tmp_path, samples=value)
    expected = "expected a plain dense CPU tensor"
    assert_refused(run_cli("describe-data", folder), str(folder / "train.pt"), "key 'samples'", expected)
    out = tmp_path / "out"
    assert_refused(run_cli("split", "--config", write_config(tmp_path, folder), "--out", out),
                   str(folder / "train.pt"), "key 'samples'", expected)
    assert not out.exists() or not any(out.iterdir())


def test_a_class_absent_from_the_whole_dataset_is_named_as_such(tmp_path):
    ds = synthetic_blockset(12, 50)
    ds.partition[np.isin(ds.partition, [4, 5, 6, 7])] = 3  # no HORZ_A / HORZ_B / VERT_A / VERT_B anywhere
    save_npz(tmp_path / "noab.npz", ds)
    with pytest.raises(LossAblationError, match=r"noab\.npz: the dataset has no AB blocks at all "
                                                r"\(classes\.AB: HORZ_A, HORZ_B, VERT_A, VERT_B\)"):
        make_splits(cfg_for(tmp_path / "noab.npz"))
    out = tmp_path / "results" / "data"
    line = assert_refused(run_cli("split", "--config", write_config(tmp_path, tmp_path / "noab.npz"), "--out", out),
                          str(tmp_path / "noab.npz"), "no AB blocks at all")
    assert "split.seed" not in line  # no advice that cannot help
    assert not out.exists() or not any(out.iterdir())


def _add_zero_member(npz: Path, key: str, n_bytes: int) -> None:
    """Append a real array of ``n_bytes`` zeros to an npz, streamed (the test never holds it in memory)."""
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(npz, "a", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open(f"{key}.npy", "w", force_zip64=True) as handle:
            np.lib.format.write_array_header_1_0(handle, {"descr": "|u1", "fortran_order": False,
                                                          "shape": (n_bytes,)})
            for _ in range(n_bytes // len(chunk)):
                handle.write(chunk)


# Runs a command and prints its exit status and peak RSS. A child forked from pytest would count pytest's own
# memory (torch included) as its peak, even across exec; a child of this small process does not.
_MEASURE_PEAK_RSS = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stderr=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024, file=sys.stderr)  # Linux: kilobytes
"""


def peak_rss_bytes(*args) -> tuple[int, str]:
    """Run the CLI (it must exit 0); its peak resident memory in bytes, and its stdout."""
    proc = subprocess.run([sys.executable, "-c", _MEASURE_PEAK_RSS, *cli_command(*args)], capture_output=True,
                          text=True, timeout=300)
    status, peak = map(int, proc.stderr.split())
    assert status == 0
    return peak, proc.stdout


def test_describe_data_reads_only_the_npz_keys_it_uses(tmp_path):
    plain = tmp_path / "plain.npz"
    save_npz(plain, synthetic_blockset(6, 30))
    padded = tmp_path / "padded.npz"
    padded.write_bytes(plain.read_bytes())
    unused = 400 << 20
    _add_zero_member(padded, "unused", unused)
    with zipfile.ZipFile(padded) as zf:
        assert zf.getinfo("unused.npy").file_size > unused and padded.stat().st_size < 10 << 20
    rss_plain, out_plain = peak_rss_bytes("describe-data", plain, "--json")
    rss_padded, out_padded = peak_rss_bytes("describe-data", padded, "--json")
    described = json.loads(out_padded)
    assert described["n_blocks"] == json.loads(out_plain)["n_blocks"]
    assert rss_padded < rss_plain + unused // 4, (rss_plain >> 20, rss_padded >> 20)  # MiB
    assert rss_padded < unused // 2, rss_padded >> 20


def test_v7_qps_reach_the_split_as_the_block_qp(v7_dir):
    """The users' v7 files carry qps (constant 80): the split carries it, so the QP table can say 'one level'."""
    from lossablation.data.splits import block_qp

    ds = load_dataset(v7_dir)
    assert ds.qps is not None and ds.qps.dtype == np.int64 and len(ds.qps) == len(ds)
    assert set(block_qp(ds).tolist()) == {80}
