"""Workflow on a real one-node SLURM cluster (2 fake GPUs) through `--profile profiles/slurm`.

Self-contained: `LOSSABLATION_SLURM=1 pytest -m slurm -s` starts the cluster with ci/slurm/cluster.sh (root
needed: it installs Debian's slurm + munge if missing), runs the jobs through sbatch, and stops the daemons by
recorded PID at the end. Job ids and their SLURM states are printed and written to results/slurm_jobs.txt.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "ci" / "slurm" / "cluster.sh"
PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
JOBS_FILE = REPO / "results" / "slurm_jobs.txt"
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+)")

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(os.environ.get("LOSSABLATION_SLURM") != "1", reason="set LOSSABLATION_SLURM=1 to run"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the test cluster needs root"),
]


@pytest.fixture(scope="module")
def cluster():
    t0 = time.monotonic()
    subprocess.run([str(CLUSTER), "start"], check=True, timeout=600)
    print(f"\n[slurm] install+start: {time.monotonic() - t0:.1f} s")
    JOBS_FILE.parent.mkdir(parents=True, exist_ok=True)
    JOBS_FILE.write_text("# test\tsnakemake_job\tslurm_jobid\tJobState\tExitCode\tTimeLimit\n")
    yield
    t0 = time.monotonic()
    subprocess.run([str(CLUSTER), "stop"], check=True, timeout=300)
    print(f"\n[slurm] stop: {time.monotonic() - t0:.1f} s")


@pytest.fixture
def profile(tmp_path):
    """profiles/slurm/config.yaml as shipped, adapted only to the 2-CPU test node and a fast first status check."""
    cfg = yaml.safe_load(PROFILE.read_text())
    assert cfg["executor"] == "slurm" and cfg["slurm-status-command"] == "squeue"
    # MinJobAge of the test cluster is 300 s; the plugin needs MinJobAge >= 3 * this, else it falls back to sacct
    cfg["slurm-init-seconds-before-status-checks"] = 3
    cfg["latency-wait"] = 5
    cfg["default-resources"].update(mem_mb=500, runtime=5)
    cfg["set-resources"] = {"flaky": {"runtime": "5 * attempt"}}  # the retry gets twice the time
    folder = tmp_path / "profile"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    return folder


def snakemake(profile, workdir, *args, snakefile=None, timeout=600):
    cmd = [sys.executable, "-m", "snakemake", "--profile", str(profile), "--directory", str(workdir)]
    if snakefile:
        cmd += ["--snakefile", str(snakefile)]
    return subprocess.run(
        cmd + list(args), cwd=REPO, capture_output=True, text=True, timeout=timeout, env=_env()
    )


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    return env


def slurm_job(jobid: str, detail: bool = False) -> dict:
    """`scontrol show job` fields of a job (finished jobs stay visible for MinJobAge = 300 s); with ``detail``
    (`-d`) also the allocation, e.g. JOB_GRES=gpu:1 (kept after the job ends; TresPerJob is only the request)."""
    out = subprocess.run(["scontrol", *(["-d"] if detail else []), "-o", "show", "job", jobid], capture_output=True,
                         text=True).stdout
    return dict(item.split("=", 1) for item in out.split() if "=" in item)


def record_jobs(test: str, log: str) -> list[tuple[str, str]]:
    """Submitted (snakemake job, SLURM job id) pairs; printed and appended to results/slurm_jobs.txt."""
    pairs = SUBMITTED.findall(log)
    with JOBS_FILE.open("a") as fh:
        for sm_job, jobid in pairs:
            info = slurm_job(jobid)
            row = [test, sm_job, jobid, info.get("JobState", "?"), info.get("ExitCode", "?"), info.get("TimeLimit", "?")]
            print("[slurm] " + "\t".join(row))
            fh.write("\t".join(row) + "\n")
    return pairs


def write_snakefile(folder: Path, text: str) -> Path:
    path = folder / "Snakefile"
    path.write_text(textwrap.dedent(text))
    return path


def test_gpu_job_gets_gpus_and_cuda_visible_devices(cluster, profile, tmp_path):
    snakefile = write_snakefile(
        tmp_path,
        """
        rule all:
            input: expand("probe{i}.txt", i=[0, 1, 2])

        rule gpu_probe:
            output: "probe{i}.txt"
            resources: gpu=1
            shell: "echo ${{CUDA_VISIBLE_DEVICES:-unset}} $SLURM_JOB_ID > {output}"
        """,
    )
    res = snakemake(profile, tmp_path, snakefile=snakefile)
    assert res.returncode == 0, res.stderr[-3000:]
    pairs = record_jobs("gpu_probe", res.stderr)
    assert len(pairs) == 3
    submitted_ids = {jobid for _, jobid in pairs}
    for i in range(3):
        cuda, jobid, *_ = (tmp_path / f"probe{i}.txt").read_text().split()
        assert cuda in {"0", "1"}, f"probe{i}: CUDA_VISIBLE_DEVICES={cuda}"
        assert jobid in submitted_ids  # it really ran inside that sbatch allocation
        assert slurm_job(jobid)["TresPerJob"] == "gres:gpu:1"  # submitted with --gpus=1


def test_failed_job_is_retried_with_more_runtime(cluster, profile, tmp_path):
    snakefile = write_snakefile(
        tmp_path,
        """
        rule flaky:
            output: "flaky.txt"
            shell: "if [ ! -e first_attempt_done ]; then touch first_attempt_done; exit 3; fi; echo ok > {output}"
        """,
    )
    res = snakemake(profile, tmp_path, snakefile=snakefile)
    assert res.returncode == 0, res.stderr[-3000:]
    pairs = record_jobs("retry", res.stderr)
    assert len(pairs) == 2, res.stderr[-3000:]
    first, second = (slurm_job(jobid) for _, jobid in pairs)
    assert first["JobState"] == "FAILED" and first["ExitCode"] != "0:0"
    assert second["JobState"] == "COMPLETED"
    assert (first["TimeLimit"], second["TimeLimit"]) == ("00:05:00", "00:10:00")
    assert (tmp_path / "flaky.txt").read_text() == "ok\n"


def test_cancelled_job_fails_the_run_and_reruns_next_time(cluster, profile, tmp_path):
    snakefile = write_snakefile(
        tmp_path,
        """
        rule sleeper:
            output: "slept.txt"
            shell: "sleep {config[sleep]}; echo done > {output}"
        """,
    )
    log_path = tmp_path / "first.log"
    cmd = [sys.executable, "-m", "snakemake", "--profile", str(profile), "--directory", str(tmp_path),
           "--snakefile", str(snakefile), "--config", "sleep=600", "--retries", "0"]
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True, env=_env())
        try:
            deadline = time.monotonic() + 120
            while not (found := SUBMITTED.findall(log_path.read_text())) and time.monotonic() < deadline:
                time.sleep(0.5)
            assert found, log_path.read_text()[-3000:]
            jobid = found[0][1]
            while slurm_job(jobid).get("JobState") != "RUNNING" and time.monotonic() < deadline:
                time.sleep(0.5)
            subprocess.run(["scancel", jobid], check=True)
            rc = proc.wait(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
    first = log_path.read_text()
    record_jobs("cancel", first)
    assert rc != 0
    assert f"SLURM-job '{jobid}' failed" in first and "CANCELLED" in first, first[-3000:]
    assert not (tmp_path / "slept.txt").exists()

    res = snakemake(profile, tmp_path, "--config", "sleep=1", snakefile=snakefile)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(record_jobs("cancel-rerun", res.stderr)) == 1
    assert (tmp_path / "slept.txt").read_text() == "done\n"


def test_tiny_sweep_of_the_real_workflow(cluster, profile, tiny_config, tmp_path):
    """The command users type, on the real Snakefile with the shipped `device: auto`: a tiny sweep (conftest's
    tiny_config: 2 arms x 2 seeds + Stage 1) via sbatch, with both seeds of an arm trained in one job
    (`train.runs_per_job: 2`): fewer SLURM jobs than runs, every run's outputs present. SLURM itself must show a
    GPU allocated to each GPU job (Stage 1, features, training); on the fake-GPU node CUDA cannot use it, so each
    job trains on CPU with a WARNING and each run records `gpu_requested_but_cpu_used` (the outcome chosen in
    docs/cluster.md, "GPUs")."""
    config = yaml.safe_load(tiny_config.read_text())
    config["device"] = "auto"
    config["train"]["runs_per_job"] = 2
    tiny_config.write_text(yaml.safe_dump(config))
    results = Path(config["results"])
    t0 = time.monotonic()
    res = snakemake(profile, tmp_path, "--cores", "4", "--configfile", str(tiny_config), snakefile=REPO / "Snakefile")
    wall = time.monotonic() - t0
    assert res.returncode == 0, res.stderr[-5000:]
    print(f"\n[slurm] tiny sweep: {wall:.1f} s")
    pairs = record_jobs("tiny_sweep", res.stderr)
    submitted_rules = re.findall(r"^rule (\w+):", res.stderr, flags=re.M)
    training_jobs = ["train_baseline_seed1_2", "train_poly_seed1_2"]
    assert sorted(set(submitted_rules)) == sorted(["features", "stage1", *training_jobs]), submitted_rules
    assert len(pairs) == len(submitted_rules) == 4, res.stderr[-3000:]      # localrules ran locally
    for _, jobid in pairs:
        info = slurm_job(jobid)
        assert info["JobState"] == "COMPLETED", (jobid, info.get("JobState"))
        assert info.get("TresPerJob") == "gres:gpu:1", (jobid, info.get("TresPerJob"))   # asked: --gpus=1
        assert slurm_job(jobid, detail=True).get("JOB_GRES") == "gpu:1", jobid   # given: one GPU (allocation)
        assert info["JobName"].startswith("lossablation_"), info["JobName"]            # slurm-jobname-prefix
    for table in ("table1_overall", "table2_per_class", "table3_calibration"):
        for ext in ("md", "csv", "tex"):
            assert (results / "tables" / f"{table}.{ext}").stat().st_size > 0
    metrics = sorted((results / "runs").glob("*/seed*/metrics.json"))
    assert len(metrics) == 4 > sum(rule.startswith("train_") for rule in submitted_rules) == 2   # 4 runs, 2 jobs
    for path in metrics:
        for name in ("predictions.npz", "history.csv", "model.pt"):
            assert (path.parent / name).stat().st_size > 0, path.parent / name
        provenance = json.loads(path.read_text())["provenance"]
        assert provenance["pack"] == {"seeds": [1, 2], "runs_per_job": 2}, path
        assert provenance["gpu_requested_but_cpu_used"] is True, path
        assert provenance["device"].startswith("cpu"), provenance["device"]
        assert set(provenance["hashes"]) == {"protocol", "loss", "split", "dataset_fingerprint", "stage1_sha256"}
    logs = sorted((results / "logs" / "train").glob("*/seed1+2.log"))
    assert len(logs) == 2
    for log in logs + [results / "logs" / "stage1.log", results / "logs" / "features.log"]:
        warnings = [line for line in log.read_text().splitlines() if " WARNING device: auto: a GPU was allocated" in line]
        assert len(warnings) == 1, (log, log.read_text()[-2000:])
