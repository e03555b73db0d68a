# Figures for the HTML report (`snakemake --report results/report.html` collects every report() output).
rule figures:
    input:
        runs=f"{R}/runs.csv",
        predictions=expand(f"{R}/runs/{{arm}}/seed{{seed}}/predictions.npz", arm=ARMS, seed=SEEDS),
        histories=expand(f"{R}/runs/{{arm}}/seed{{seed}}/history.csv", arm=ARMS, seed=SEEDS),
    output:
        reported(FIGURES, "Figures", (".png",)),
    params:
        config=ANALYSIS_CONFIG,
    log:
        f"{R}/logs/figures.log",
    benchmark:
        f"{R}/benchmarks/figures.tsv"
    conda:
        "../envs/lossablation.yaml"
    script:
        "../scripts/figures.py"
