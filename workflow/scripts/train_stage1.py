"""Snakemake adapter: Stage 1 (backbone + binary head) -> lossablation.commands_train.train_stage1_main."""
from pathlib import Path

from lossablation.commands_train import train_stage1_main
from lossablation.jobs import run_job

out_dir = str(Path(snakemake.output.checkpoint).parent)
run_job(snakemake, lambda: train_stage1_main(snakemake.config, out_dir), gpu=True)
