# Paths and input functions shared by the rules (no training logic here: that lives in src/lossablation).
import re

from lossablation.analysis.aggregate import output_files
from lossablation.config import training_device

R = config["results"]
ARMS = list(config["losses"])
SEEDS = [int(s) for s in config["seeds"]]
# Every file the aggregation writes, keyed by the caption (workflow/report/<key>.rst) that describes it.
OUTPUTS = output_files(ARMS)
TABLES = ["table1_overall", "table2_per_class", "table3_calibration"]
FIGURES = [key for key in OUTPUTS if key.startswith("fig")]
# `device: auto` resolves on the machine running snakemake; on a cluster set `device: cuda` explicitly.
USES_GPU = training_device(config).startswith("cuda")


wildcard_constraints:
    arm="|".join(re.escape(a) for a in ARMS),
    seed=r"\d+",


def stage1_checkpoint():
    """The user's Stage-1 checkpoint, or the one this sweep trains."""
    return config["stage1_checkpoint"] or f"{R}/stage1/stage1_model_best.pt"


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
