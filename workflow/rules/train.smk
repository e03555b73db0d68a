# Stage 2. Rule features: the frozen prefix (conv1 .. layer3 + SE3) of every Stage-2 block of the split, computed
# once per (dataset, split, Stage-1 checkpoint) on the training device; every training job reads that file, not
# the dataset (lossablation.train.features). params: what the features depend on besides the checkpoint.
rule features:
    input:
        stage1=stage1_checkpoint(),
        split=f"{R}/data/split.json",
    output:
        features=f"{R}/features/stage2_features.pt",
    log:
        f"{R}/logs/features.log",
    benchmark:
        f"{R}/benchmarks/features.tsv"
    params:
        protocol=jobs.features_protocol(config),
    threads: config["resources"]["stage1_cpus"]
    resources:
        **GPU_REQUEST,
        runtime=lambda wildcards, attempt: config["resources"]["train_runtime_min"] * attempt,
        mem_mb=config["resources"]["stage1_mem_mb"],
    conda:
        "../envs/lossablation.yaml"
    script:
        "../scripts/features.py"


# Training jobs: one per (arm, pack), a pack being `train.runs_per_job` consecutive seeds of the arm trained in one
# process as one batched model (1: one run per job). The backbone is frozen; adapters and head train under the
# fixed protocol in config["train"]; only the loss differs between arms. A killed job resumes each run from its
# last epoch (state.pt). One rule per job (Snakemake has no variable-length outputs): TRAIN_JOBS in common.smk.
# params: the runs' protocol (their arm's loss + the shared sections, lossablation.train.provenance.run_protocol)
# and the pack's seeds, so that with Snakemake's default triggers a protocol change retrains every run, one arm's
# loss change that arm's runs, and a new seed or arm only the new jobs; the script builds its config from params.
# threads: `sbatch --cpus-per-task` and torch's threads; gpu: one unless `device: cpu` (common.smk).
for _name, _arm, _pack in TRAIN_JOBS:

    rule:
        name:
            _name
        input:
            stage1=stage1_checkpoint(),
            features=f"{R}/features/stage2_features.pt",
        output:
            metrics=run_files(_arm, _pack, "metrics.json"),
            predictions=run_files(_arm, _pack, "predictions.npz"),
            history=run_files(_arm, _pack, "history.csv"),
            model=run_files(_arm, _pack, "model.pt"),
        log:
            f"{R}/logs/train/{_arm}/{jobs.pack_label(_pack)}.log",
        benchmark:
            f"{R}/benchmarks/train/{_arm}/{jobs.pack_label(_pack)}.tsv"
        params:
            protocol=run_protocol(config, _arm),
            arm=_arm,
            seeds=_pack,
        threads: config["resources"]["train_cpus"]
        resources:
            **GPU_REQUEST,
            runtime=lambda wildcards, attempt: config["resources"]["train_runtime_min"] * attempt,
            mem_mb=config["resources"]["train_mem_mb"],
        conda:
            "../envs/lossablation.yaml"
        script:
            "../scripts/train.py"
