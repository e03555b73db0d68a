"""Several runs of one arm trained in one process as one batched model (lossablation.train.pack,
lossablation.model.packed): each member as if alone, a killed pack resumes to the same numbers, a diverging
member stops alone. Tiny synthetic data on the CPU (seconds); the kill is a real SIGKILL of the CLI."""

import json
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_training import SRC, assert_identical, comparable, read_history, write_config, write_inputs

from faults import fault_env
from lossablation.config import load_config
from lossablation.train import pack as pack_module
from lossablation.train.pack import train_stage2_pack
from lossablation.train.stage2 import train_stage2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pack")
    dataset, ckpt = write_inputs(root, 900, seed=3)
    config = write_config(root, dataset, max_epochs=4, patience=4, runs_per_job=3)
    return {"root": root, "stage1": ckpt, "config": config, "cfg": load_config(config)}


def first_epoch_loss(folder) -> float:
    return float(read_history(folder)[0]["train_loss"])


def test_each_member_trains_as_its_solo_run(setup):
    cfg, root = setup["cfg"], setup["root"]
    seeds = [1, 2, 3]
    packed = train_stage2_pack(cfg, "poly", seeds, setup["stage1"], [root / f"pack{s}" for s in seeds])
    for seed, metrics in zip(seeds, packed):
        solo = root / f"solo{seed}"
        train_stage2(cfg, "poly", seed, setup["stage1"], solo)
        member = root / f"pack{seed}"
        assert sorted(p.name for p in member.iterdir()) == ["history.csv", "metrics.json", "model.pt",
                                                            "predictions.npz"]
        a, b = first_epoch_loss(member), first_epoch_loss(solo)
        assert abs(a - b) <= 1e-5 * abs(b), (seed, a, b)
        assert metrics["status"] == "completed" and metrics["seed"] == seed
        assert metrics["provenance"]["pack"] == {"seeds": seeds, "runs_per_job": 3}
    # the seed matters inside a pack too: members are not copies of each other
    assert first_epoch_loss(root / "pack1") != first_epoch_loss(root / "pack2")


def run_pack_cli(setup, outs, fault=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "lossablation.cli", "train", "--config", str(setup["config"]), "--arm", "baseline",
           "--seed", "1", "2", "--stage1", str(setup["stage1"]), "--out", *map(str, outs)]
    return subprocess.run(cmd, env=fault_env(fault, None, SRC), capture_output=True, text=True, timeout=300)


def test_killed_pack_resumes_to_the_same_numbers(setup):
    root = setup["root"]
    reference = [root / "ref_a", root / "ref_b"]
    proc = run_pack_cli(setup, reference)
    assert proc.returncode == 0, proc.stderr
    killed = [root / "killed_a", root / "killed_b"]
    # SIGKILL right after the FIRST member wrote its epoch-2 state: the second member's state is an epoch behind
    proc = run_pack_cli(setup, killed, fault="kill_after_state=2")
    assert proc.returncode == -signal.SIGKILL
    assert all((out / "state.pt").exists() and not (out / "metrics.json").exists() for out in killed)
    proc = run_pack_cli(setup, killed)
    assert proc.returncode == 0, proc.stderr
    assert "baseline/seed1: resuming after epoch 2" in proc.stderr
    assert "baseline/seed2: resuming after epoch 1" in proc.stderr
    for out, ref in zip(killed, reference):
        assert_identical(comparable(out), comparable(ref))
        assert not (out / "state.pt").exists()


def test_a_diverging_member_is_marked_diverged_and_the_others_go_on(setup, monkeypatch):
    cfg, root = setup["cfg"], setup["root"]
    build = pack_module.build_stage2

    def poison_seed_2(*args, **kwargs):
        run = build(*args, **kwargs)
        if run.seed == 2:                    # its logits are NaN from the first step on
            with torch.no_grad():
                run.model.head.head[6].bias.fill_(float("nan"))
        return run

    monkeypatch.setattr(pack_module, "build_stage2", poison_seed_2)
    outs = [root / f"div{s}" for s in (1, 2, 3)]
    metrics = train_stage2_pack(cfg, "baseline", [1, 2, 3], setup["stage1"], outs)
    assert [m["status"] for m in metrics] == ["completed", "diverged", "completed"]
    assert metrics[1]["selected_epoch"] is None and metrics[1]["val"] is None and metrics[1]["epochs_run"] == 0
    for out in outs:                          # every declared output exists, no state left
        assert {"history.csv", "metrics.json", "model.pt", "predictions.npz"} <= {p.name for p in out.iterdir()}
        assert not (out / "state.pt").exists()
    monkeypatch.setattr(pack_module, "build_stage2", build)
    clean = [root / f"clean{s}" for s in (1, 3)]
    train_stage2_pack(cfg, "baseline", [1, 3], setup["stage1"], clean)
    assert metrics[0]["epochs_run"] == metrics[2]["epochs_run"] == 4
    for with_nan_member, without in zip((outs[0], outs[2]), clean):   # the others trained as without it
        a, b = read_history(with_nan_member), read_history(without)
        assert np.allclose([float(r["train_loss"]) for r in a], [float(r["train_loss"]) for r in b], rtol=1e-5, atol=0)


def test_a_pack_of_one_is_the_solo_run(setup):
    cfg, root = setup["cfg"], setup["root"]
    train_stage2_pack(cfg, "poly", [5], setup["stage1"], [root / "one"])
    train_stage2(cfg, "poly", 5, setup["stage1"], root / "one_solo")
    assert_identical(comparable(root / "one"), comparable(root / "one_solo"))
    assert "pack" not in json.loads((root / "one" / "metrics.json").read_text())["provenance"]


def test_more_seeds_than_the_configured_pack_size_is_one_line_error(setup, tmp_path):
    config = write_config(tmp_path, setup["cfg"]["dataset"], max_epochs=1)          # runs_per_job: 1
    proc = subprocess.run([sys.executable, "-m", "lossablation.cli", "train", "--config", str(config), "--arm",
                           "baseline", "--seed", "1", "2", "--stage1", str(setup["stage1"]), "--out",
                           str(tmp_path / "a"), str(tmp_path / "b")],
                          env=fault_env(None, None, SRC), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "--seed: 2 seeds in one job, but train.runs_per_job is 1; set it to 2 or more")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
