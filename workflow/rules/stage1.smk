# Stage 1: backbone + binary head (partitioned vs NONE), trained once per sweep when the config names no
# checkpoint. Every Stage-2 run of the sweep shares its checkpoint.
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
            stage1=config["stage1"],
            model=config["model"],
        threads: config["resources"]["stage1_cpus"]
        resources:
            gpu=1 if USES_GPU else 0,
            runtime=lambda wildcards, attempt: config["resources"]["stage1_runtime_min"] * attempt,
            mem_mb=config["resources"]["stage1_mem_mb"],
            cpus_per_task=config["resources"]["stage1_cpus"],
        conda:
            "../envs/lossablation.yaml"
        script:
            "../scripts/train_stage1.py"
