"""Snakemake job of rule features: frozen-prefix features of the split -> lossablation.commands.features.

The config is built from the rule's params only (lossablation.jobs.features_protocol)."""
from lossablation import commands, jobs
from lossablation.jobs import run_job

run_job(
    snakemake,  # noqa: F821 (injected by Snakemake's script directive)
    commands.features,
    gpu=True,
    config=jobs.job_config(snakemake.params.protocol, resources={"stage1_cpus": snakemake.threads}),  # noqa: F821
    stage1=snakemake.input.stage1,  # noqa: F821
    out=snakemake.output.features,  # noqa: F821
)
