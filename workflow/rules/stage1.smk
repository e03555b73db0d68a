# Stage 1: backbone + binary head (partitioned vs NONE), trained once per sweep when the config names no
# checkpoint. Every Stage-2 run of the sweep shares its checkpoint.
# params: everything Stage 1 reads (lossablation.jobs.stage1_protocol), so that Snakemake's default triggers
# retrain it exactly when one of those changes; the script builds its config from them alone.
# threads: the plugin turns them into `sbatch --cpus-per-task` (no cpus_per_task resource: it would override
# a profile's cpus_per_gpu); gpu: one unless `device: cpu` (common.smk).
if not config["stage1_checkpoint"]:

    rule stage1:
        input:
            split=f"{R}/data/split.json",
        output:
            checkpoint=f"{R}/stage1/stage1_model_best.pt",
            metrics=f"{R}/stage1/metrics.json",
            history=f"{R}/stage1/history.csv",
        log:
            f"{R}/logs/stage1.log",
        benchmark:
            f"{R}/benchmarks/stage1.tsv"
        params:
            protocol=jobs.stage1_protocol(config),
        threads: config["resources"]["stage1_cpus"]
        resources:
            **GPU_REQUEST,
            runtime=lambda wildcards, attempt: config["resources"]["stage1_runtime_min"] * attempt,
            mem_mb=config["resources"]["stage1_mem_mb"],
        conda:
            "../envs/lossablation.yaml"
        script:
            "../scripts/train_stage1.py"
