"""The Snakemake workflow: the default DAG, lint, and config errors that stop it before any job starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import job_counts

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
