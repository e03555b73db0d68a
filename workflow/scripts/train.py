"""Snakemake job of a training rule: the runs (arm, seed) of one pack -> lossablation.commands.train.

The job's config is built from the rule's params only (lossablation.jobs.stage2_config), so the rule's params say
all it reads."""
from pathlib import Path

from lossablation import commands, jobs
from lossablation.jobs import run_job

params = snakemake.params  # noqa: F821 (injected by Snakemake's script directive)
run_job(
    snakemake,  # noqa: F821
    commands.train,
    gpu=True,
    config=jobs.stage2_config(params.protocol, arm=params.arm, seeds=params.seeds, threads=snakemake.threads),  # noqa: F821
    arm=params.arm,
    seed=list(params.seeds),
    stage1=snakemake.input.stage1,  # noqa: F821
    out=[str(Path(path).parent) for path in snakemake.output.metrics],  # noqa: F821
    features=snakemake.input.features,  # noqa: F821
)
