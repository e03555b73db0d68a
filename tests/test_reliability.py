"""Reliability: bad input fails early and cleanly, a killed sweep resumes, a failed or diverged run is reported.

Each case runs the real CLI or the real workflow on a tiny cut of the shipped dataset, on the CPU.
The fault matrix these tests prove is written out in docs/reliability.md.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, job_counts, tiny_sweep_config
from faults import fault_env

LOSSABLATION = [sys.executable, "-m", "lossablation.cli"]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def run_cli(*args, env=None, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([*LOSSABLATION, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)


@pytest.fixture(scope="module")
def stage1(tiny_npz, tmp_path_factory) -> Path:
    """One real (tiny) Stage-1 checkpoint shared by this module's runs."""
    folder = tmp_path_factory.mktemp("stage1")
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_sweep_config(tiny_npz, folder / "results")))
    result = run_cli("train-stage1", "--config", config, "--out", folder / "out")
    assert result.returncode == 0, result.stderr
    return folder / "out" / "stage1_model_best.pt"


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


# ------------------------------------------------------------------------------------------- bad input
def _v7_folder(root: Path, tiny_npz: Path, mutate=None) -> Path:
    """A v7 folder (train.pt / val.pt / test.pt in the documented layout) cut from the tiny dataset."""
    data = np.load(tiny_npz)
    x = torch.from_numpy(data["blocks"].astype(np.float32) / 255.0)
    part = torch.from_numpy(data["partition"].astype(np.int64))
    n = len(part)
    cut = [0, int(0.7 * n), int(0.85 * n), n]
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(("train", "val", "test")):
        d = {"samples": x[cut[i]:cut[i + 1]].clone(), "labels_stage0": part[cut[i]:cut[i + 1]].clone()}
        if mutate:
            mutate(name, d)
        torch.save(d, root / f"{name}.pt")
    return root


def _nan_blocks(name, d):
    if name == "val":
        d["samples"][3, 0, 2, 2] = float("nan")


def _wrong_shape(name, d):
    if name == "train":
        d["samples"] = d["samples"][:, 0]


def _no_ab_in_test(name, d):
    if name == "test":
        keep = ~torch.isin(d["labels_stage0"], torch.tensor([4, 5, 6, 7]))
        d["samples"], d["labels_stage0"] = d["samples"][keep], d["labels_stage0"][keep]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


BAD_INPUTS = {
    # case: (how to break the run, text the one-line error must contain)
    "unknown arm": ("arm", "nope"),
    "unknown loss kind": ("config", {"losses": {"baseline": {"kind": "hinge"}}}),
    "wrong type": ("config", {"train": {"batch_size": "large"}}),
    "duplicate seeds": ("config", {"seeds": [1, 1]}),
    "negative lr": ("config", {"train": {"lr_head": -0.1}}),
    "missing dataset": ("config", {"dataset": "/nonexistent/blocks.npz"}),
    "truncated dataset .pt": ("v7", "truncate"),
    "wrong tensor shape": ("v7", _wrong_shape),
    "NaN blocks": ("v7", _nan_blocks),
    "class absent from a split": ("v7", _no_ab_in_test),
    "truncated checkpoint": ("stage1", "truncate"),
    "checkpoint of another architecture": ("stage1", "resnet"),
    "unwritable results folder": ("out", "file"),
}
EXPECTED = {
    "unknown arm": ["nope"],
    "unknown loss kind": ["losses.baseline.kind", "hinge"],
    "wrong type": ["train.batch_size"],
    "duplicate seeds": ["seeds", "duplicate"],
    "negative lr": ["train.lr_head"],
    "missing dataset": ["dataset", "/nonexistent/blocks.npz"],
    "truncated dataset .pt": ["train.pt"],
    "wrong tensor shape": ["train.pt", "samples"],
    "NaN blocks": ["val.pt", "samples"],
    "class absent from a split": ["AB"],
    "truncated checkpoint": ["stage1_model_best.pt"],
    "checkpoint of another architecture": ["stage1_model_best.pt", "missing"],
    "unwritable results folder": ["not_a_folder"],
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_before_training_with_one_line(case, tiny_npz, stage1, tmp_path):
    kind, how = BAD_INPUTS[case]
    cfg = tiny_sweep_config(tiny_npz, tmp_path / "results")
    arm, ckpt, out = "baseline", stage1, tmp_path / "run"
    if kind == "arm":
        arm = how
    elif kind == "config":
        for key, value in how.items():
            cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and key != "losses" else value
    elif kind == "v7":
        folder = _v7_folder(tmp_path / "v7", tiny_npz, None if how == "truncate" else how)
        if how == "truncate":
            _truncate(folder / "train.pt")
        cfg["dataset"] = str(folder)
    elif kind == "stage1":
        ckpt = tmp_path / "stage1_model_best.pt"
        if how == "truncate":
            ckpt.write_bytes(stage1.read_bytes())
            _truncate(ckpt)
        else:
            import torchvision

            torch.save({"model_state_dict": torchvision.models.resnet18(weights=None).state_dict()}, ckpt)
    elif kind == "out":
        blocker = tmp_path / "not_a_folder"
        blocker.write_text("a file where the results folder should be")
        out = blocker / "run"
    config = write_config(tmp_path / "config.yaml", cfg)
    result = run_cli("train", "--config", config, "--arm", arm, "--seed", 1, "--stage1", ckpt, "--out", out)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in EXPECTED[case]:
        assert fragment in lines[0], lines[0]
    assert not out.exists() or not any(out.iterdir()), "a failed start must leave no partial output"


# ------------------------------------------------------------------------------------------- sweeps
def snakemake(config: Path, *args, cwd: Path, env=None, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--configfile", str(config), "--cores", "2",
                           *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)



def completed_runs(workdir: Path) -> list[str]:
    """Runs whose job Snakemake recorded as complete (its metadata names each finished output, base64)."""
    import base64

    folder = workdir / ".snakemake" / "metadata"
    names = [base64.urlsafe_b64decode(p.name).decode() for p in folder.glob("*")] if folder.is_dir() else []
    return [n for n in names if n.endswith("metrics.json") and "/runs/" in n]


def sweep_config(tiny_npz, stage1, folder: Path, **overrides) -> Path:
    cfg = tiny_sweep_config(tiny_npz, folder / "results", seeds=(1, 2, 3))
    cfg["stage1_checkpoint"] = str(stage1)
    cfg.update(overrides)
    folder.mkdir(parents=True, exist_ok=True)
    return write_config(folder / "config.yaml", cfg)


@pytest.fixture(scope="module")
def clean_sweep(tiny_npz, stage1, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clean")
    result = snakemake(sweep_config(tiny_npz, stage1, folder), cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "results"


def test_killed_sweep_reruns_only_missing_jobs_and_gives_the_same_tables(tiny_npz, stage1, clean_sweep, tmp_path):
    config = sweep_config(tiny_npz, stage1, tmp_path)
    runs = tmp_path / "results" / "runs"
    proc = subprocess.Popen([*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--configfile", str(config), "--cores", "2"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and len(completed_runs(tmp_path)) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # snakemake and every job it started, mid-sweep
    proc.wait()
    finished = len(completed_runs(tmp_path))
    assert 2 <= finished < 6, "the kill must land mid-sweep"
    assert len(list(runs.glob("*/seed*/metrics.json"))) >= finished
    unlock = snakemake(config, "--unlock", cwd=tmp_path)  # a SIGKILLed snakemake leaves its lock behind
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    rerun = snakemake(config, "--rerun-incomplete", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "removed the stale lock of a sweep that is gone" in rerun.stderr  # the killed sweep's results lock
    assert not (tmp_path / "results" / ".lossablation.lock").exists()
    counts = job_counts(rerun.stdout + rerun.stderr)
    assert counts["train"] == 6 - finished, counts
    for table in ("table1_overall", "table2_per_class", "table3_calibration"):
        for ext in ("md", "csv", "tex", "html"):
            got = (tmp_path / "results" / "tables" / f"{table}.{ext}").read_text()
            assert got == (clean_sweep / "tables" / f"{table}.{ext}").read_text(), f"{table}.{ext} differs"


def test_failed_run_keeps_going_and_aggregation_reports_the_missing_pair(tiny_npz, stage1, tmp_path):
    config = sweep_config(tiny_npz, stage1, tmp_path)
    env = fault_env("oom=poly/seed2")  # tests/faults: poly/seed2 raises torch.OutOfMemoryError as its epochs start
    result = snakemake(config, "--keep-going", cwd=tmp_path, env=env)
    assert result.returncode != 0
    results = tmp_path / "results"
    log = (results / "logs" / "train" / "poly" / "seed2.log").read_text()
    assert "error: job failed: OutOfMemoryError" in log
    done = sorted(str(p.relative_to(results / "runs")) for p in (results / "runs").glob("*/seed*/metrics.json"))
    assert len(done) == 5 and "poly/seed2/metrics.json" not in done
    agg = run_cli("aggregate", "--config", config, "--runs", results / "runs", "--out", results, cwd=tmp_path)
    assert agg.returncode == 0, agg.stderr
    table = (results / "tables" / "table1_overall.md").read_text()
    poly_row = next(line for line in table.splitlines() if line.startswith("| poly"))
    assert poly_row.rstrip(" |").endswith("2"), poly_row  # n_pairs
    assert "poly seed 2" in table or "poly/seed2" in table or "poly (seed 2)" in table, table


def test_diverging_arm_is_marked_and_paired_without(tiny_npz, stage1, tmp_path):
    cfg = tiny_sweep_config(tiny_npz, tmp_path / "results", arms=("baseline", "poly"), seeds=(1, 2))
    cfg["stage1_checkpoint"] = str(stage1)
    cfg["losses"]["exploding"] = {"kind": "poly1", "params": {"epsilon": 1.0e39}}  # inf in float32
    config = write_config(tmp_path / "config.yaml", cfg)
    result = snakemake(config, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    for seed in (1, 2):
        metrics = json.loads((tmp_path / "results" / "runs" / "exploding" / f"seed{seed}" / "metrics.json").read_text())
        assert metrics["status"] == "diverged"
    table = (tmp_path / "results" / "tables" / "table1_overall.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| exploding"))
    assert "diverged" in table
    assert "0/2" in row


# ------------------------------------------------------------------------------------------- SIGKILL
def _run_files(folder: Path) -> dict[str, bytes]:
    """The run's results without wall-clock fields (times differ between runs; everything else must not)."""
    import json

    metrics = json.loads((folder / "metrics.json").read_text())
    for key in ("wall_time_s",):
        metrics.pop(key, None)
    metrics["provenance"].pop("resumed_from_epoch", None)
    history = [line.rsplit(",", 1)[0] for line in (folder / "history.csv").read_text().splitlines()]
    predictions = np.load(folder / "predictions.npz")
    return {"metrics": json.dumps(metrics, sort_keys=True).encode(), "history": "\n".join(history).encode(),
            **{k: predictions[k].tobytes() for k in predictions.files}}


def _wait_for_new_state(state: Path, proc: subprocess.Popen, count: int, timeout: float = 300) -> bool:
    """Wait until ``state`` has been rewritten ``count`` times (one per finished epoch) or the run has ended."""
    seen, last, deadline = 0, state.stat().st_mtime_ns if state.exists() else None, time.time() + timeout
    while seen < count and proc.poll() is None and time.time() < deadline:
        now = state.stat().st_mtime_ns if state.exists() else None
        if now is not None and now != last:
            seen, last = seen + 1, now
        time.sleep(0.005)
    return proc.poll() is None


def test_sigkill_at_random_moments_then_rerun_gives_identical_results(tiny_npz, stage1, tmp_path):
    cfg = tiny_sweep_config(tiny_npz, tmp_path / "results", max_epochs=8, patience=8)
    config = write_config(tmp_path / "config.yaml", cfg)
    args = ["train", "--config", config, "--arm", "baseline", "--seed", 3, "--stage1", stage1]
    reference = run_cli(*args, "--out", tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr
    rng = np.random.default_rng(2026)
    out = tmp_path / "killed"
    kills = 0
    for _ in range(3):
        proc = subprocess.Popen([*LOSSABLATION, *map(str, args), "--out", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # after 1-2 more finished epochs, at a random moment of the next one (or of its state write)
        if _wait_for_new_state(out / "state.pt", proc, int(rng.integers(1, 3))):
            time.sleep(float(rng.uniform(0.0, 0.15)))
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 2, "the kills must land while the run is going"
    final = run_cli(*args, "--out", out)
    assert final.returncode == 0, final.stderr
    assert _run_files(out) == _run_files(tmp_path / "reference")
