"""Snakemake job of rule split -> lossablation.commands.split (split.json and split_indices.npz, for audit)."""
from pathlib import Path

from lossablation import commands
from lossablation.jobs import run_job

run_job(
    snakemake,  # noqa: F821 (injected by Snakemake's script directive)
    commands.split,
    config=snakemake.config,  # noqa: F821
    out=str(Path(snakemake.output.split).parent),  # noqa: F821
)
