"""Stage-1 / Stage-2 trainers on tiny synthetic data (CPU, seconds): run folder contract, selection, frozen
backbone, determinism, resume after SIGKILL (after an epoch and during the state write), divergence.

The SIGKILLs are real: the CLI runs in a subprocess with a fault armed by tests/faults (``run_cli(fault=...)``)."""

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from faults import fault_env

from lossablation.commands import train as train_main
from lossablation.config import load_config
from lossablation.data.blocks import BlockSet, save_npz
from lossablation.train.metrics import classification_metrics
from lossablation.model.networks import Stage1Model, load_stage1_model, stage1_checkpoint_dict
from lossablation.train.stage1 import train_stage1
from lossablation.train.stage2 import train_stage2

SRC = Path(__file__).resolve().parents[1] / "src"


def synthetic_blockset(n: int, seed: int = 0) -> BlockSet:
    """Blocks whose texture depends on the partition (flat / noisy / horizontal / vertical edge / corner)."""
    rng = np.random.default_rng(seed)
    part = rng.choice([0, 3, 1, 2, 4, 6], size=n, p=[.3, .15, .2, .15, .1, .1])
    blocks = rng.integers(40, 200, size=(n, 1, 1, 1)) + rng.normal(0, 6, size=(n, 1, 16, 16))
    yy, xx = np.mgrid[:16, :16]
    for i, p in enumerate(part):
        if p == 3:
            blocks[i, 0] += rng.normal(0, 40, (16, 16))
        elif p == 1:
            blocks[i, 0] += 40 * (yy >= 8)
        elif p == 2:
            blocks[i, 0] += 40 * (xx >= 8)
        else:
            blocks[i, 0] += 40 * ((yy < 8) & (xx < 8)) * (p != 0)
    return BlockSet(blocks=np.clip(blocks, 0, 255).astype(np.uint8), partition=part.astype(np.int64), bit_depth=8)


def write_config(folder: Path, dataset: Path, **train) -> Path:
    cfg = {
        "dataset": str(dataset), "device": "cpu", "seeds": [1],
        "losses": {"baseline": {"kind": "focal", "params": {"gamma": 2.0}},
                   "poly": {"kind": "poly1", "params": {"epsilon": 1.0}}},
        "stage1": {"max_epochs": 2, "patience": 2, "batch_size": 64, "max_train_blocks": 300},
        "train": {"max_epochs": 6, "patience": 6, "batch_size": 32, "eval_batch_size": 256,
                  "scheduler_patience": 1, **train},
    }
    path = folder / f"config_{len(list(folder.glob('config_*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def write_inputs(root: Path, n_blocks: int, seed: int = 0) -> tuple[Path, Path]:
    """A synthetic dataset of ``n_blocks`` (``blocks.npz``) and a random Stage-1 checkpoint (torch seed 0) in
    ``root``: (dataset, checkpoint)."""
    dataset = root / "blocks.npz"
    save_npz(dataset, synthetic_blockset(n_blocks, seed=seed))
    torch.manual_seed(0)
    ckpt = root / "stage1_model_best.pt"
    torch.save(stage1_checkpoint_dict(Stage1Model(), epoch=1, best_f1=0.5), ckpt)
    return dataset, ckpt


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    dataset, ckpt = write_inputs(root, 1200)
    return {"root": root, "dataset": dataset, "stage1": ckpt, "config": write_config(root, dataset)}


def run_cli(config: Path, stage1: Path, out: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    """``lossablation train`` (arm baseline, seed 3) in a subprocess, with ``fault`` armed (tests/faults)."""
    env = fault_env(fault, None, SRC)
    cmd = [sys.executable, "-m", "lossablation.cli", "train", "--config", str(config), "--arm", "baseline",
           "--seed", "3", "--stage1", str(stage1), "--out", str(out)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def read_history(folder: Path) -> list[dict]:
    with open(folder / "history.csv") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def comparable(folder: Path) -> dict:
    m = json.loads((folder / "metrics.json").read_text())
    with np.load(folder / "predictions.npz") as z:
        preds = {k: z[k].copy() for k in z.files}
    weights = torch.load(folder / "model.pt", weights_only=True)["model_state_dict"]
    return {"metrics": {k: m[k] for k in ("status", "selected_epoch", "epochs_run", "val", "test", "class_weights")},
            "history": read_history(folder), "preds": preds, "weights": weights}


def assert_identical(a: dict, b: dict) -> None:
    assert a["metrics"] == b["metrics"]
    assert a["history"] == b["history"]
    assert a["preds"].keys() == b["preds"].keys()
    for k in a["preds"]:
        assert np.array_equal(a["preds"][k], b["preds"][k]), k
    for k in a["weights"]:
        assert torch.equal(a["weights"][k], b["weights"][k]), k


@pytest.fixture(scope="module")
def reference_run(setup):
    out = setup["root"] / "reference"
    proc = run_cli(setup["config"], setup["stage1"], out)
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_run_folder_contract(reference_run):
    out, proc = reference_run
    assert sorted(p.name for p in out.iterdir()) == ["history.csv", "metrics.json", "model.pt", "predictions.npz"]
    assert "epoch 1:" in proc.stderr and "val_macro_f1" in proc.stderr   # one log line per epoch
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "completed" and m["arm"] == "baseline" and m["seed"] == 3
    for key in ("wall_time_s", "train_class_counts", "class_weights", "hyperparameters", "loss", "provenance"):
        assert key in m
    assert set(m["provenance"]) >= {"config_hash", "code_version", "packages", "device", "dataset_fingerprint",
                                    "block_level_split"}
    assert m["hyperparameters"]["rebalance"] == "loss_weights" and m["hyperparameters"]["lr_head"] == 1e-4
    history = read_history(out)
    assert list(history[0]) == ["epoch", "train_loss", "val_loss", "val_macro_f1", "lr_adapter", "lr_head"]
    f1 = [float(r["val_macro_f1"]) for r in history]
    assert m["selected_epoch"] == int(np.argmax(f1)) + 1                   # best val F1, earliest on ties
    assert m["val"]["macro_f1"] == pytest.approx(f1[m["selected_epoch"] - 1], abs=1e-12)
    assert m["epochs_run"] == len(history) == 6


def test_metrics_recomputed_from_predictions(reference_run):
    out, _ = reference_run
    m = json.loads((out / "metrics.json").read_text())
    with np.load(out / "predictions.npz") as z:
        for side in ("val", "test"):
            again = classification_metrics(z[f"{side}_labels"], z[f"{side}_probs"], 15, m[side]["loss"])
            assert again == m[side]
            assert z[f"{side}_probs"].shape == (m[side]["n"], 3)


def test_kill_after_epoch_then_rerun_is_bit_identical(setup, reference_run):
    out = setup["root"] / "killed_after"
    proc = run_cli(setup["config"], setup["stage1"], out, fault="kill_after_state=3")
    assert proc.returncode == -signal.SIGKILL
    assert (out / "state.pt").exists() and not (out / "metrics.json").exists()
    proc = run_cli(setup["config"], setup["stage1"], out)
    assert proc.returncode == 0, proc.stderr
    assert "resuming after epoch 3" in proc.stderr
    assert_identical(comparable(out), comparable(reference_run[0]))
    assert not (out / "state.pt").exists()


def test_kill_during_state_write_then_rerun_is_bit_identical(setup, reference_run):
    out = setup["root"] / "killed_during"
    proc = run_cli(setup["config"], setup["stage1"], out, fault="kill_during_state_write=2")
    assert proc.returncode == -signal.SIGKILL
    assert list(out.glob(".state.pt.*.tmp"))                               # the torn write is left behind
    proc = run_cli(setup["config"], setup["stage1"], out)
    assert proc.returncode == 0, proc.stderr
    assert "resuming after epoch 1" in proc.stderr
    assert_identical(comparable(out), comparable(reference_run[0]))
    assert not list(out.glob(".state.pt.*.tmp"))


def test_corrupt_state_is_ignored(setup, reference_run):
    out = setup["root"] / "corrupt"
    out.mkdir()
    (out / "state.pt").write_bytes(b"LOSSABLATION-STATE-1 0000\nnot a torch file")
    assert train_main(str(setup["config"]), "baseline", 3, str(setup["stage1"]), str(out)) == 0
    assert comparable(out)["metrics"] == comparable(reference_run[0])["metrics"]


def test_same_seed_twice_identical_and_backbone_frozen(setup):
    cfg = load_config(setup["config"])
    captured = []
    a = train_stage2(cfg, "poly", 7, setup["stage1"], setup["root"] / "a", model_hook=captured.append)
    b = train_stage2(cfg, "poly", 7, setup["stage1"], setup["root"] / "b")
    train_stage2(cfg, "poly", 8, setup["stage1"], setup["root"] / "c")
    assert_identical(comparable(setup["root"] / "a"), comparable(setup["root"] / "b"))
    assert a["val"] == b["val"] and a["test"] == b["test"]
    assert read_history(setup["root"] / "c") != read_history(setup["root"] / "a")   # the seed matters
    # backbone weights and BN running statistics bit-identical to the Stage-1 checkpoint after training
    reference = load_stage1_model(setup["stage1"]).backbone.state_dict()
    trained = captured[0].backbone.state_dict()
    assert trained.keys() == reference.keys()
    for k, v in reference.items():
        assert torch.equal(trained[k], v), k
    # while the adapters did train
    assert not torch.equal(captured[0].adapters["layer3"].alpha, torch.ones(256))


def test_divergence_gives_status_diverged_and_exit_0(setup):
    config = write_config(setup["root"], setup["dataset"], lr_adapter=1e30, lr_head=1e30)
    out = setup["root"] / "diverged"
    assert train_main(str(config), "baseline", 1, str(setup["stage1"]), str(out)) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "diverged"
    assert m["epochs_run"] < 6
    if m["selected_epoch"] is None:
        assert m["val"] is None and m["test"] is None
    else:
        assert np.isfinite(m["val"]["macro_f1"])
    for name in ("predictions.npz", "model.pt", "history.csv"):  # every output the workflow declares
        assert (out / name).exists(), name
    assert not (out / "state.pt").exists()


@pytest.mark.parametrize("rebalance", ["sampler", "both", "none"])
def test_rebalance_modes(setup, rebalance):
    cfg = load_config(write_config(setup["root"], setup["dataset"], rebalance=rebalance, max_epochs=1))
    m = train_stage2(cfg, "baseline", 1, setup["stage1"], setup["root"] / f"rb_{rebalance}")
    weights = m["class_weights"]
    if rebalance == "both":
        assert max(weights) > 1.0 > min(weights)
    else:
        assert weights == [1.0, 1.0, 1.0]
    assert m["hyperparameters"]["rebalance"] == rebalance


def test_stage1_training_writes_v7_checkpoint(setup):
    cfg = load_config(setup["config"])
    out = setup["root"] / "stage1"
    m = train_stage1(cfg, out)
    assert sorted(p.name for p in out.iterdir()) == ["history.csv", "metrics.json", "stage1_model_best.pt"]
    ckpt = torch.load(out / "stage1_model_best.pt", weights_only=True)
    assert set(ckpt) == {"epoch", "model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "best_f1",
                         "history"}
    assert len(ckpt["model_state_dict"]) == 133 and ckpt["epoch"] == m["selected_epoch"]
    load_stage1_model(out / "stage1_model_best.pt")                      # strict
    assert m["n_train_blocks"] == 300 and m["val"]["n"] > 0
    assert json.loads((out / "metrics.json").read_text())["status"] == "completed"
