"""Snakemake adapter: rule make_dataset -> lossablation.commands_data.make_dataset_main."""
import argparse

from lossablation.commands_data import make_dataset_main
from lossablation.jobs import run_job

params = snakemake.params  # noqa: F821 (injected by Snakemake's script directive)
args = argparse.Namespace(
    inputs=list(params.inputs), out=str(snakemake.output[0]), cq=list(params.cq),  # noqa: F821
    cpu_used=int(params.cpu_used), cache=str(params.cache), max_frames=params.max_frames,
    variants=list(params.variants), jobs=int(snakemake.threads),  # noqa: F821
)
run_job(snakemake, lambda: make_dataset_main(args))  # noqa: F821
