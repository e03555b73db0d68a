"""The Snakemake workflow: the default DAG, lint, config errors that stop it before any job starts, and one
sweep per results folder."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import job_counts, tiny_sweep_config

from lossablation.config import load_config
from lossablation.jobs import train_jobs

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(*args: str, cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)



def test_default_dry_run_schedules_the_sweep(tmp_path):
    result = snakemake("-n", "--config", f"results={tmp_path / 'results'}")
    assert result.returncode == 0, result.stderr + result.stdout
    counts = job_counts(result.stdout)
    assert counts["train"] == 5                    # 5 arms, their 3 seeds in one job each (train.runs_per_job: 3)
    assert counts["train_baseline_seed1_2_3"] == 1
    assert counts["stage1"] == counts["features"] == 1
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
    assert "stage1" not in counts and counts["train"] == 5 and counts["features"] == 1


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
    sweep_config = tiny_sweep_config(tiny_npz, results, seeds=(1,))
    # Stage 1 must still run while the second sweep is refused and dry-run (each snakemake start takes ~10 s here)
    sweep_config["stage1"].update(max_epochs=40, patience=40)
    config.write_text(yaml.safe_dump(sweep_config))
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


# ------------------------------------------------------------------------------------------- GPUs by default
def planned_gpus(output: str) -> dict[str, list[int]]:
    """{rule: [gpu=... of each planned job]} from `snakemake -n` output (0 for a job that requests none); the
    training jobs (one rule each, ``train_<arm>_<seeds>``) under "train"."""
    plan: dict[str, list[int]] = {}
    blocks = re.split(r"^(?:local)?rule (\w+):$", output, flags=re.M)
    for rule, block in zip(blocks[1::2], blocks[2::2]):
        if rule != "all":
            gpu = re.search(r"^\s+resources: .*\bgpu=(\d+)", block.split("\n\n", 1)[0], re.M)
            plan.setdefault("train" if rule.startswith("train_") else rule, []).append(int(gpu.group(1)) if gpu else 0)
    return plan


@pytest.mark.parametrize("configfile", ["config/config.yaml", "config/protocol.yaml"])
def test_the_slurm_profile_plans_a_gpu_for_every_training_job(tmp_path, configfile):
    """`device: auto` (both shipped configs) on this GPU-less host: one GPU per train job, features and Stage 1."""
    assert yaml.safe_load((REPO / configfile).read_text())["device"] == "auto"
    result = snakemake("--profile", "profiles/slurm", "--cores", "4", "-n", "--configfile", configfile,
                       "--config", f"results={tmp_path / 'results'}")
    assert result.returncode == 0, result.stderr[-3000:]
    plan = planned_gpus(result.stdout)
    cfg = load_config(REPO / configfile, check_paths=False)
    n_jobs = len(train_jobs(list(cfg["losses"]), cfg["seeds"], cfg["train"]["runs_per_job"]))
    assert plan["train"] == [1] * n_jobs and plan["stage1"] == plan["features"] == [1], plan
    assert set(plan["split"] + plan["aggregate"] + plan["figures"]) == {0}, plan
    assert "cpus_per_task" not in result.stdout, "threads become --cpus-per-task; the resource would override them"


def test_gpu_gres_asks_gres_instead_of_gpus(tmp_path):
    """`resources.gpu_gres` (clusters that refuse --gpus): every GPU job asks gres=<it> and gpu=0."""
    result = snakemake("--profile", "profiles/slurm", "--cores", "4", "-n", "--config",
                       f"results={tmp_path / 'results'}", 'resources={"gpu_gres": "gpu:a100:1"}')
    assert result.returncode == 0, result.stderr[-3000:]
    blocks = re.split(r"^(?:local)?rule (\w+):$", result.stdout, flags=re.M)
    gpu_jobs = [(rule, block.split("\n\n", 1)[0]) for rule, block in zip(blocks[1::2], blocks[2::2])
                if rule in ("stage1", "features") or rule.startswith("train_")]
    assert len(gpu_jobs) == 7, [rule for rule, _ in gpu_jobs]            # stage1, features, 5 training jobs
    for rule, block in gpu_jobs:
        assert "gres=gpu:a100:1" in block and re.search(r"\bgpu=0\b", block), (rule, block)
    assert set(planned_gpus(result.stdout)["train"]) == {0}


def test_plain_snakemake_plans_a_gpu_unless_the_config_says_cpu(tmp_path):
    auto = snakemake("-n", "--config", f"results={tmp_path / 'results'}")
    cpu = snakemake("-n", "--config", f"results={tmp_path / 'results'}", "device=cpu")
    assert auto.returncode == 0 and cpu.returncode == 0, auto.stderr[-2000:] + cpu.stderr[-2000:]
    assert set(planned_gpus(auto.stdout)["train"]) == {1} and planned_gpus(auto.stdout)["stage1"] == [1]
    assert set(planned_gpus(cpu.stdout)["train"]) == {0} and planned_gpus(cpu.stdout)["stage1"] == [0]


def _no_gpu_env(monkeypatch):
    for name in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS"):
        monkeypatch.delenv(name, raising=False)


def test_auto_without_an_allocated_gpu_trains_on_cpu_quietly(monkeypatch, caplog):
    from lossablation.train.environment import gpu_requested_but_cpu_used, torch_device

    _no_gpu_env(monkeypatch)
    with caplog.at_level("WARNING"):
        device = torch_device({"device": "auto"})
    assert device.type == "cpu" and not caplog.records
    assert not gpu_requested_but_cpu_used({"device": "auto"}, device)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a host where CUDA is unusable")
@pytest.mark.parametrize("env", ["CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS"])
def test_auto_with_an_unusable_allocated_gpu_warns_and_is_recorded(monkeypatch, caplog, env):
    from lossablation.train.environment import gpu_requested_but_cpu_used, torch_device

    _no_gpu_env(monkeypatch)
    monkeypatch.setenv(env, "0")
    with caplog.at_level("WARNING"):
        device = torch_device({"device": "auto"})
    assert device.type == "cpu"
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "device: auto" in warnings[0].getMessage(), caplog.text
    assert f"{env}=0" in warnings[0].getMessage()
    assert gpu_requested_but_cpu_used({"device": "auto"}, device)
    assert not gpu_requested_but_cpu_used({"device": "cpu"}, device), "device: cpu asked for no GPU"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a host without CUDA")
def test_cuda_without_a_usable_gpu_fails_with_one_line_naming_device(monkeypatch):
    from lossablation.errors import LossAblationError
    from lossablation.train.environment import torch_device

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(LossAblationError, match=r"^device: 'cuda' requested but no CUDA device is available$"):
        torch_device({"device": "cuda"})


# ------------------------------------------------------------------------------------------- the conda env's install step
def test_the_conda_post_deploy_script_installs_the_package_in_a_fresh_env(tmp_path):
    """workflow/envs/lossablation.post-deploy.sh, as Snakemake runs it in a new conda env (no conda channels
    here: a fresh venv stands in), installs the package from the repository, schema included."""
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("pyproject.toml", "README.md"):
        (clone / name).write_bytes((REPO / name).read_bytes())
    shutil.copytree(REPO / "src", clone / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "env")], check=True, timeout=300)
    env = {**os.environ, "PATH": os.pathsep.join([str(tmp_path / "env" / "bin"), os.environ["PATH"]])}
    env.pop("PYTHONPATH", None)
    script = REPO / "workflow" / "envs" / "lossablation.post-deploy.sh"
    install = subprocess.run(["bash", str(script)], cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    probe = ("import lossablation, sys; from importlib import resources;"
             "assert lossablation.__file__.startswith(sys.prefix), lossablation.__file__;"
             "print(resources.files('lossablation').joinpath('config.schema.yaml').read_text().splitlines()[0])")
    shown = subprocess.run([str(tmp_path / "env" / "bin" / "python"), "-c", probe], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and shown.stdout.startswith("$schema:"), shown.stderr
    wrong = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "is not the lossablation repository" in wrong.stderr
