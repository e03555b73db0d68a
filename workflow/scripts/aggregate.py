"""Snakemake adapter: runs -> statistics, tables and verdicts -> lossablation.commands_aggregate."""
from lossablation.commands_aggregate import aggregate_main
from lossablation.jobs import run_job

run_job(snakemake, lambda: aggregate_main(snakemake.config, snakemake.params.runs, snakemake.params.out))
