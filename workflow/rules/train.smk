# Stage 2: one job per (arm, seed). The backbone is frozen; adapters and head train under the fixed protocol
# in config["train"]; only the loss differs between arms. A killed job resumes from its last epoch (state.pt).
rule train:
    input:
        stage1=stage1_checkpoint(),
        split=f"{R}/data/split.json",
    output:
        metrics=f"{R}/runs/{{arm}}/seed{{seed}}/metrics.json",
        predictions=f"{R}/runs/{{arm}}/seed{{seed}}/predictions.npz",
        history=f"{R}/runs/{{arm}}/seed{{seed}}/history.csv",
        model=f"{R}/runs/{{arm}}/seed{{seed}}/model.pt",
    log:
        f"{R}/logs/train/{{arm}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/train/{{arm}}/seed{{seed}}.tsv"
    params:
        loss=lambda wildcards: config["losses"][wildcards.arm],
        train=config["train"],
        model=config["model"],
    threads: config["resources"]["train_cpus"]
    resources:
        gpu=1 if USES_GPU else 0,
        runtime=lambda wildcards, attempt: config["resources"]["train_runtime_min"] * attempt,
        mem_mb=config["resources"]["train_mem_mb"],
        cpus_per_task=config["resources"]["train_cpus"],
    conda:
        "../envs/lossablation.yaml"
    script:
        "../scripts/train.py"
