"""Snakemake adapter: one Stage-2 run (arm, seed) -> lossablation.commands_train.train_main."""
from pathlib import Path

from lossablation.commands_train import train_main
from lossablation.jobs import run_job

run_dir = str(Path(snakemake.output.metrics).parent)
arm, seed = snakemake.wildcards.arm, int(snakemake.wildcards.seed)
run_job(snakemake, lambda: train_main(snakemake.config, arm, seed, snakemake.input.stage1, run_dir), gpu=True)
