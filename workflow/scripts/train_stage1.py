"""Snakemake job of rule stage1: backbone + binary head -> lossablation.commands.train_stage1."""
from pathlib import Path

from lossablation import commands
from lossablation.jobs import run_job

run_job(
    snakemake,  # noqa: F821 (injected by Snakemake's script directive)
    commands.train_stage1,
    gpu=True,
    config=snakemake.config,  # noqa: F821
    out=str(Path(snakemake.output.checkpoint).parent),  # noqa: F821
)
