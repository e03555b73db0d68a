"""Snakemake job of rule figures -> lossablation.commands.figures."""
from pathlib import Path

from lossablation import commands
from lossablation.jobs import run_job

run_job(
    snakemake,  # noqa: F821 (injected by Snakemake's script directive)
    commands.figures,
    config=snakemake.params.config,  # noqa: F821  (the analysis keys: no resources)
    runs=str(Path(snakemake.input.histories[0]).parents[2]),  # noqa: F821  <results>/runs/<arm>/seed<seed>/history.csv
    out=str(Path(snakemake.input.runs).parent),  # noqa: F821
)
