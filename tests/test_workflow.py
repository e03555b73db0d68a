"""The Snakemake workflow: the default DAG, lint, config errors that stop it before any job starts, and one
sweep per results folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import job_counts, tiny_sweep_config

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(*args: str, cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)



def test_default_dry_run_schedules_the_sweep(tmp_path):
    result = snakemake("-n", "--config", f"results={tmp_path / 'results'}")
    assert result.returncode == 0, result.stderr + result.stdout
    counts = job_counts(result.stdout)
    assert counts["train"] == 15
    assert counts["stage1"] == 1
    assert counts["aggregate"] == 1
    assert counts["figures"] == 1
    assert "split_indices.npz" in result.stdout, "rule split must declare every file it writes"
    assert not (tmp_path / "results").exists(), "a dry run takes no lock and writes nothing"


def test_lint_is_clean():
    result = snakemake("--lint")
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_a_given_stage1_checkpoint_skips_stage1(tmp_path):
    ckpt = tmp_path / "stage1_model_best.pt"
    ckpt.write_bytes(b"x")
    result = snakemake("-n", "--config", f"stage1_checkpoint={ckpt}", f"results={tmp_path / 'results'}")
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    assert "stage1" not in counts and counts["train"] == 15


BAD = {
    "unknown key": ({"epochs": 3}, "unknown key 'epochs'"),
    "wrong type": ({"train": {"batch_size": "big"}}, "train.batch_size: expected integer"),
    "baseline not an arm": ({"baseline": "nope"}, "baseline: 'nope' is not an arm"),
    "duplicate seed": ({"seeds": [1, 2, 1]}, "seeds: duplicate value 1"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_config_errors_stop_before_any_job(tmp_path, case):
    patch, message = BAD[case]
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    base["dataset"] = str(REPO / base["dataset"])
    base["results"] = str(tmp_path / "results")
    base.update(patch)
    if "train" in patch:
        base["train"] = {**yaml.safe_load((REPO / "config" / "config.yaml").read_text())["train"], **patch["train"]}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(base))
    result = snakemake("--cores", "1", "-s", str(REPO / "Snakefile"), "--configfile", str(config), cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert not (tmp_path / "results").exists(), "a config error must leave no output behind"


# ------------------------------------------------------------------------------------------- one sweep per results
def sweep(config: Path, workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return snakemake("-s", str(REPO / "Snakefile"), "--configfile", str(config), "--cores", "2", *args, cwd=workdir)


def _wait_for(paths: list[Path], proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not all(p.exists() for p in paths) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert all(p.exists() for p in paths) and proc.poll() is None, "the first sweep must be running"


def test_second_sweep_on_one_results_folder_is_refused_and_a_killed_sweep_recovers(tiny_npz, tmp_path):
    results = tmp_path / "results"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_sweep_config(tiny_npz, results, seeds=(1,))))
    first, second = tmp_path / "first", tmp_path / "second"  # two working directories, one results folder
    first.mkdir(), second.mkdir()
    lock, split = results / ".lossablation.lock", results / "data" / "split.json"
    stage1_log = results / "logs" / "stage1.log"
    proc = subprocess.Popen([*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--configfile", str(config), "--cores", "2"],
                            cwd=first, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for([lock, stage1_log], proc)  # the split job has finished, Stage 1 trains
        split_written = split.stat().st_ino, split.stat().st_mtime_ns
        refused = sweep(config, second)
        dry = sweep(config, second, "-n")
        assert proc.poll() is None, "the first sweep must still run while the second is refused"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # snakemake and every job it started
        proc.wait()
    output = refused.stdout + refused.stderr
    assert refused.returncode == 2, output[-3000:]
    errors = [line for line in output.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in output, output[-3000:]
    assert f"{results}: results folder in use by another sweep (host " in errors[0]
    assert f"pid {proc.pid}," in errors[0] and f"working directory {first})" in errors[0], errors[0]
    assert (split.stat().st_ino, split.stat().st_mtime_ns) == split_written, "the refused sweep wrote the split"
    assert not (second / ".snakemake" / "metadata").exists() or not any((second / ".snakemake" / "metadata").iterdir())
    assert dry.returncode == 0 and job_counts(dry.stdout)["train"] == 2, dry.stderr[-3000:]

    assert json.loads(lock.read_text())["pid"] == proc.pid, "a SIGKILLed sweep leaves its lock behind"
    # the documented recovery: Snakemake's own lock first, then rerun; the dead sweep's lock is replaced
    assert sweep(config, first, "--unlock").returncode == 0
    rerun = sweep(config, first, "--rerun-incomplete")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    notes = [line for line in rerun.stderr.splitlines() if "stale lock" in line]
    assert len(notes) == 1 and f"pid {proc.pid}," in notes[0], rerun.stderr[-3000:]
    assert (results / "verdicts.md").is_file() and not lock.exists()
