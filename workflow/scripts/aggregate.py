"""Snakemake adapter: runs -> statistics, tables and verdicts -> lossablation.commands_aggregate."""
from pathlib import Path

from lossablation.commands_aggregate import aggregate_main
from lossablation.jobs import run_job

runs_dir = str(Path(snakemake.input[0]).parents[2])  # <results>/runs/<arm>/seed<seed>/metrics.json
out_dir = str(Path(snakemake.output.runs).parent)
run_job(snakemake, lambda: aggregate_main(snakemake.config, runs_dir, out_dir, make_figures=False))
