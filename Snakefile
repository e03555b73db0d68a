# Loss-function ablation of AV1 partition classifiers: one training job per (loss arm, seed), then paired
# statistics, tables, figures and an HTML report (`snakemake --report results/report.html`).
# Configuration: config/config.yaml (defaults: workflow/schemas/config.schema.yaml, docs: config/README.md).
from snakemake.utils import min_version

from lossablation.config import load_config  # the package: `pip install -e .` (README)

min_version("9.0")


configfile: "config/config.yaml"


# Validate against workflow/schemas/config.schema.yaml, fill its defaults, check arms/seeds/paths:
# a bad config stops here, before any job starts, with one line naming the key.
config.update(load_config(config))


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/stage1.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/report.smk"


localrules:
    all,
    split,
    aggregate,
    figures,


rule all:
    input:
        results_files(OUTPUTS),
