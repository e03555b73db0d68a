# Loss-function ablation of AV1 partition classifiers: one training job per (loss arm, seed), then paired
# statistics, tables, figures and an HTML report (`snakemake --report results/report.html`).
# Configuration: config/config.yaml (defaults: src/lossablation/config.schema.yaml, docs: config/README.md).
from snakemake.utils import min_version

from lossablation import commands  # the package: `pip install -e .` (README)

min_version("9.0")


configfile: "config/config.yaml"


# Validate against src/lossablation/config.schema.yaml (re-reading the config files strictly, converting --config
# text to the schema's types), fill its defaults, check arms/seeds/paths: a bad config stops here, before any job
# starts, with one line naming the key and the file (exit status 2).
config.update(
    commands.workflow_config(config, files=workflow.configfiles, command_line=workflow.config_settings.config)
)


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/stage1.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/report.smk"


# One sweep per results folder: a real run takes <results>/.lossablation.lock (refused with one line naming the
# holder while another sweep, from any working directory, holds it). Snakemake runs these hooks in its main
# process only, and not for `snakemake -n`; jobs never look at the lock. Recovery: lossablation.sweeplock.
onstart:
    commands.lock_results(R)


onsuccess:
    commands.release_results(R)


onerror:
    commands.release_results(R)


localrules:
    all,
    split,
    aggregate,
    figures,


rule all:
    input:
        results_files(OUTPUTS),
