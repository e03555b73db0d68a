# Data: the sweep's train/val/test split, written once for audit (split.json: method, sources and counts per
# side, the dataset's fingerprint; split_indices.npz: the block indices). No job reads them back: every training
# job recomputes the same split from split.seed and records the dataset fingerprint in its provenance. Stage 1
# and the training runs take split.json as input so that a dataset the split rejects fails once, up front.
rule split:
    input:
        dataset=config["dataset"],
    output:
        split=f"{R}/data/split.json",
        indices=f"{R}/data/split_indices.npz",
    log:
        f"{R}/logs/split.log",
    benchmark:
        f"{R}/benchmarks/split.tsv"
    params:
        protocol=jobs.split_protocol(config),  # all the split reads: a change of it redoes the split (and all after)
    conda:
        "../envs/lossablation.yaml"
    script:
        "../scripts/split.py"


import os


# On demand only (not part of `rule all`): `snakemake --cores 2 make_dataset` rebuilds the demo dataset from
# scikit-image's bundled images with the settings of resources/demo/README.md (byte-identical to
# resources/demo/av1_demo.npz on Debian 12). Point `dataset:` at the output to use it. The AV1 tools are
# prepared once into the cache (env LOSSABLATION_AOM_CACHE, default ~/.cache/lossablation/aom).
rule make_dataset:
    output:
        f"{R}/data/made/skimage.npz",
    params:
        inputs=["skimage"],
        cq=[16, 28, 40, 52],
        cpu_used=4,
        cache=os.path.expanduser(os.environ.get("LOSSABLATION_AOM_CACHE", "~/.cache/lossablation/aom")),
        max_frames=None,
        variants=["orig"],
    log:
        f"{R}/logs/make_dataset.log",
    benchmark:
        f"{R}/benchmarks/make_dataset.tsv"
    threads: 2
    conda:
        "../envs/lossablation.yaml"
    script:
        "../scripts/make_dataset.py"
