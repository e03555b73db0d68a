"""Snakemake job of rule split -> lossablation.commands.split (split.json and split_indices.npz, for audit).

The config is built from the rule's params only (lossablation.jobs), so the rule's params say all it reads."""
from pathlib import Path

from lossablation import commands, jobs
from lossablation.jobs import run_job

run_job(
    snakemake,  # noqa: F821 (injected by Snakemake's script directive)
    commands.split,
    config=jobs.job_config(snakemake.params.protocol),  # noqa: F821
    out=str(Path(snakemake.output.split).parent),  # noqa: F821
)
