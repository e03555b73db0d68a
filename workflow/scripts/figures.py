"""Snakemake adapter: seaborn figures of the sweep -> lossablation.commands_aggregate.figures_main."""
from pathlib import Path

from lossablation.commands_aggregate import figures_main
from lossablation.jobs import run_job

runs_dir = str(Path(snakemake.input.histories[0]).parents[2])  # <results>/runs/<arm>/seed<seed>/history.csv
out_dir = str(Path(snakemake.input.runs).parent)
run_job(snakemake, lambda: figures_main(snakemake.config, runs_dir, out_dir))
