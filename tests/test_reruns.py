"""Reruns right with Snakemake's default triggers (issue 12, item 2): on a finished tiny sweep, `snakemake -n`
plans exactly the jobs whose inputs or params changed. One tiny sweep (2 arms x 2 seeds) runs once per module;
every test dry-runs a changed copy of its config against it, so none of them writes to the sweep."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import job_counts, tiny_sweep_config

REPO = Path(__file__).resolve().parents[1]
TRAINED = {"split", "stage1", "train", "aggregate", "figures", "all"}


def snakemake(config: dict, workdir: Path, *args: str) -> subprocess.CompletedProcess:
    path = workdir / f"config{len(list(workdir.glob('config*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile", str(path),
                           "--cores", "2", *args], cwd=workdir, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def finished(tiny_npz, tmp_path_factory):
    """A finished tiny sweep: (its config, its working directory)."""
    workdir = tmp_path_factory.mktemp("reruns")
    config = tiny_sweep_config(tiny_npz, workdir / "results")
    config["device"] = "auto"   # the shipped default: no warning, no rerun, on this GPU-less machine
    done = snakemake(config, workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    return config, workdir


def planned(finished, change) -> dict[str, int]:
    """Jobs per rule `snakemake -n` plans after ``change(config)`` (a mutation of a copy of the config)."""
    config, workdir = finished
    changed = copy.deepcopy(config)
    change(changed)
    result = snakemake(changed, workdir, "-n")
    assert result.returncode == 0, result.stderr[-3000:]
    if "Nothing to be done" in result.stdout + result.stderr:
        return {}
    return job_counts(result.stdout)


def test_a_finished_sweep_has_nothing_to_do(finished):
    assert planned(finished, lambda cfg: None) == {}


def test_a_protocol_key_retrains_every_run(finished):
    counts = planned(finished, lambda cfg: cfg["train"].update(lr_head=0.0002))
    assert counts.get("train") == 4 and "stage1" not in counts and "split" not in counts, counts
    assert counts.get("aggregate") == 1 and counts.get("figures") == 1


@pytest.mark.parametrize("key, value", [("calibration_bins", 10), ("split", {"seed": 1})])
def test_keys_read_by_training_but_not_train_retrain_too(finished, key, value):
    counts = planned(finished, lambda cfg: cfg.__setitem__(key, value))
    assert counts.get("train") == 4, counts


def test_one_arms_loss_retrains_only_that_arm(finished):
    counts = planned(finished, lambda cfg: cfg["losses"]["poly"]["params"].update(epsilon=2.0))
    assert counts.get("train") == 2 and "stage1" not in counts, counts


def test_a_new_seed_trains_only_the_new_runs(finished):
    counts = planned(finished, lambda cfg: cfg["seeds"].append(3))
    assert counts.get("train") == 2 and "stage1" not in counts, counts
    assert counts.get("aggregate") == 1


def test_resources_retrain_nothing(finished):
    counts = planned(finished, lambda cfg: cfg["resources"].update(train_runtime_min=20, train_mem_mb=3000))
    assert "train" not in counts and "stage1" not in counts, counts


def test_an_arms_hypothesis_retrains_nothing(finished):
    """An arm's `hypothesis` (the plan's prediction) is judged in the report; it is not how the arm trains."""
    counts = planned(finished, lambda cfg: cfg["losses"]["poly"].update(hypothesis={"id": "H2",
                                                                                    "predicted_gain_pp": [0, 1]}))
    assert not {"train", "stage1", "split"} & set(counts), counts


def test_an_aggregation_only_key_redoes_only_aggregation(finished):
    counts = planned(finished, lambda cfg: cfg.__setitem__("baseline", "poly"))
    assert counts.get("aggregate") == 1 and counts.get("figures") == 1, counts
    assert not {"train", "stage1", "split"} & set(counts), counts


def test_the_sweeps_runs_record_hashes_that_pool_only_under_their_config(finished):
    """The hashes a workflow job records (its config built from params) match the sweep config's; a changed
    protocol makes the aggregation refuse the runs instead of pooling them (lossablation.analysis.pooling)."""
    from lossablation.analysis.pooling import check_poolable
    from lossablation.analysis.runs import read_runs
    from lossablation.config import load_config
    from lossablation.errors import LossAblationError

    config, workdir = finished
    cfg = load_config(config)
    runs = read_runs(cfg, workdir / "results" / "runs", keep_predictions=False)
    assert len(runs) == 4 and all(run.metrics["provenance"]["hashes"] for run in runs)
    assert not any(run.metrics["provenance"]["gpu_requested_but_cpu_used"] for run in runs), "no GPU was given"
    check_poolable(runs, cfg)
    cfg["train"]["lr_head"] = 0.0002
    with pytest.raises(LossAblationError, match="protocol hash differs from the config's"):
        check_poolable(runs, cfg)


def test_packing_seeds_retrains_every_run_in_fewer_jobs(finished):
    """`train.runs_per_job` is part of the protocol (a member's numbers equal its solo run's to float rounding):
    2 arms x 2 seeds become 2 jobs of 2 runs; the features file and Stage 1 stay."""
    counts = planned(finished, lambda cfg: cfg["train"].update(runs_per_job=2))
    assert counts.get("train") == 2 and counts.get("train_baseline_seed1_2") == 1, counts
    assert "features" not in counts and "stage1" not in counts, counts


def test_the_features_are_redone_only_when_what_they_depend_on_changes(finished):
    assert "features" not in planned(finished, lambda cfg: cfg["train"].update(lr_head=0.0002))
    counts = planned(finished, lambda cfg: cfg["train"].update(eval_batch_size=4096))
    assert counts.get("features") == 1 and counts.get("train") == 4, counts
