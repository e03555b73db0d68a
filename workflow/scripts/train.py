"""Snakemake job of rule train: one Stage-2 run (arm, seed) -> lossablation.commands.train.

The run's config is built from the rule's params only (lossablation.jobs.stage2_config), so the rule's params
say all it reads."""
from pathlib import Path

from lossablation import commands, jobs
from lossablation.jobs import run_job

arm, seed = snakemake.wildcards.arm, int(snakemake.wildcards.seed)  # noqa: F821
run_job(
    snakemake,  # noqa: F821 (injected by Snakemake's script directive)
    commands.train,
    gpu=True,
    config=jobs.stage2_config(snakemake.params.protocol, arm=arm, seed=seed, threads=snakemake.threads),  # noqa: F821
    arm=arm,
    seed=seed,
    stage1=snakemake.input.stage1,  # noqa: F821
    out=str(Path(snakemake.output.metrics).parent),  # noqa: F821
)
