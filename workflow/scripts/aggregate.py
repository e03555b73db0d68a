"""Snakemake job of rule aggregate -> lossablation.commands.aggregate (figures come from rule figures)."""
from pathlib import Path

from lossablation import commands
from lossablation.jobs import run_job

run_job(
    snakemake,  # noqa: F821 (injected by Snakemake's script directive)
    commands.aggregate,
    config=snakemake.params.config,  # noqa: F821  (the analysis keys: no resources)
    runs=str(Path(snakemake.input[0]).parents[2]),  # noqa: F821  <results>/runs/<arm>/seed<seed>/metrics.json
    out=str(Path(snakemake.output.runs).parent),  # noqa: F821
    make_figures=False,
)
