# Paths and input functions shared by the rules (no training logic here: that lives in src/lossablation).
from lossablation.config import training_device

R = config["results"]
ARMS = list(config["losses"])
SEEDS = [int(s) for s in config["seeds"]]
TABLES = ["table1_overall", "table2_per_class", "table3_calibration"]
TABLE_FORMATS = ["md", "csv", "tex"]
FIGURES = ["fig1_per_seed_f1", "fig2_paired_diffs", "fig4_reliability", "fig5_confidence", "fig6_learning_curves"]
FIGURE_FORMATS = ["png", "pdf"]
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


def aggregate_outputs():
    return expand(f"{R}/tables/{{table}}.{{ext}}", table=TABLES, ext=TABLE_FORMATS)


def figure_outputs():
    return expand(f"{R}/figures/{{fig}}.{{ext}}", fig=FIGURES, ext=FIGURE_FORMATS) + expand(
        f"{R}/figures/fig3_confusion_{{arm}}.{{ext}}", arm=ARMS, ext=FIGURE_FORMATS
    )
