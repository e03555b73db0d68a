# Paths and input functions shared by the rules (no training logic here: that lives in src/lossablation).
import re

from lossablation import jobs
from lossablation.analysis.aggregate import output_files
from lossablation.train.provenance import run_protocol

R = config["results"]
ARMS = list(config["losses"])
SEEDS = [int(s) for s in config["seeds"]]
# Every file the aggregation writes, keyed by the caption (workflow/report/<key>.rst) that describes it.
OUTPUTS = output_files(ARMS)
TABLES = ["table1_overall", "table2_per_class", "table3_calibration"]
FIGURES = [key for key in OUTPUTS if key.startswith("fig")]
# One GPU for each training job and Stage 1 unless the config says `device: cpu` (docs/cluster.md, "GPUs").
# `device: auto` is NOT resolved here, on the host that plans the sweep (a cluster's login node has no GPU):
# the job resolves it where it runs (lossablation.train.environment.torch_device).
GPU_REQUEST = jobs.gpu_request(config)
# What aggregation and figures may read: the whole config but job sizes (`resources`), as their rules' params,
# so that an aggregation-only key (`baseline`, an arm's `hypothesis`) redoes them, and only them.
ANALYSIS_CONFIG = {key: value for key, value in config.items() if key != "resources"}


wildcard_constraints:
    arm="|".join(re.escape(a) for a in ARMS),
    seed=r"\d+",


def stage1_checkpoint():
    """The user's Stage-1 checkpoint, or the one this sweep trains."""
    return config["stage1_checkpoint"] or f"{R}/stage1/stage1_model_best.pt"


# Every training job: (rule name, arm, the seeds it trains together), lossablation.jobs.train_jobs.
TRAIN_JOBS = jobs.train_jobs(ARMS, SEEDS, config["train"]["runs_per_job"])


def run_files(arm, pack, name):
    """The file ``name`` of each run folder of a training job."""
    return [f"{R}/runs/{arm}/seed{seed}/{name}" for seed in pack]


def run_metrics():
    return expand(f"{R}/runs/{{arm}}/seed{{seed}}/metrics.json", arm=ARMS, seed=SEEDS)


def results_files(keys):
    return [f"{R}/{name}" for key in keys for name in OUTPUTS[key]]


def reported(keys, category, shown_suffixes):
    """Outputs of ``keys``; those with a shown suffix go into the HTML report with their caption."""
    files = []
    for key in keys:
        for name in OUTPUTS[key]:
            path = f"{R}/{name}"
            if name.endswith(shown_suffixes):
                path = report(path, caption=f"../report/{key}.rst", category=category, subcategory=key)
            files.append(path)
    return files
