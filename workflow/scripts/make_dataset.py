"""Snakemake job of rule make_dataset -> lossablation.commands.make_dataset."""
from lossablation import commands
from lossablation.jobs import run_job

run_job(
    snakemake,  # noqa: F821 (injected by Snakemake's script directive)
    commands.make_dataset,
    inputs=snakemake.params.inputs,  # noqa: F821
    out=snakemake.output[0],  # noqa: F821
    cq=snakemake.params.cq,  # noqa: F821
    cpu_used=snakemake.params.cpu_used,  # noqa: F821
    cache=snakemake.params.cache,  # noqa: F821
    max_frames=snakemake.params.max_frames,  # noqa: F821
    variants=snakemake.params.variants,  # noqa: F821
    jobs=snakemake.threads,  # noqa: F821
)
