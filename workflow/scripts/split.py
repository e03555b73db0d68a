"""Snakemake adapter: write the sweep's train/val/test split for audit -> lossablation.data.blocks.write_split_audit."""
from pathlib import Path

from lossablation.data.blocks import write_split_audit
from lossablation.jobs import run_job

run_job(snakemake, lambda: write_split_audit(snakemake.config, str(Path(snakemake.output.split).parent)))
