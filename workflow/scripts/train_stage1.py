"""Snakemake job of rule stage1: backbone + binary head -> lossablation.commands.train_stage1.

The config is built from the rule's params only (lossablation.jobs), so the rule's params say all it reads."""
from pathlib import Path

from lossablation import commands, jobs
from lossablation.jobs import run_job

run_job(
    snakemake,  # noqa: F821 (injected by Snakemake's script directive)
    commands.train_stage1,
    gpu=True,
    config=jobs.job_config(snakemake.params.protocol, resources={"stage1_cpus": snakemake.threads}),  # noqa: F821
    out=str(Path(snakemake.output.checkpoint).parent),  # noqa: F821
)
