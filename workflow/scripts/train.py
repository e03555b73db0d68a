"""Snakemake job of rule train: one Stage-2 run (arm, seed) -> lossablation.commands.train."""
from pathlib import Path

from lossablation import commands
from lossablation.jobs import run_job

run_job(
    snakemake,  # noqa: F821 (injected by Snakemake's script directive)
    commands.train,
    gpu=True,
    config=snakemake.config,  # noqa: F821
    arm=snakemake.wildcards.arm,  # noqa: F821
    seed=int(snakemake.wildcards.seed),  # noqa: F821
    stage1=snakemake.input.stage1,  # noqa: F821
    out=str(Path(snakemake.output.metrics).parent),  # noqa: F821
)
