# Stage 2: one job per (arm, seed). The backbone is frozen; adapters and head train under the fixed protocol
# in config["train"]; only the loss differs between arms. A killed job resumes from its last epoch (state.pt).
# params: the run's protocol (its arm's loss + the shared sections, lossablation.train.provenance.run_protocol), so that
# with Snakemake's default triggers a protocol change retrains every run, one arm's loss change that arm's runs,
# and a new seed or arm only the new runs; the script builds the run's config from params alone.
# threads: `sbatch --cpus-per-task` and torch's threads; gpu: one unless `device: cpu` (common.smk).
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
        protocol=train_protocol,
    threads: config["resources"]["train_cpus"]
    resources:
        gpu=GPUS_PER_JOB,
        runtime=lambda wildcards, attempt: config["resources"]["train_runtime_min"] * attempt,
        mem_mb=config["resources"]["train_mem_mb"],
    conda:
        "../envs/lossablation.yaml"
    script:
        "../scripts/train.py"
