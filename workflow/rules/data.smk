# Data: the sweep's train/val/test split, written once for audit (every job recomputes the same split from
# split.seed and checks it against this file's fingerprint).
rule split:
    input:
        dataset=config["dataset"],
    output:
        split=f"{R}/data/split.json",
    log:
        f"{R}/logs/split.log",
    benchmark:
        f"{R}/benchmarks/split.tsv"
    params:
        split=config["split"],
        classes=config["classes"],
    conda:
        "../envs/lossablation.yaml"
    script:
        "../scripts/split.py"
