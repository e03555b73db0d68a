# Figures for the HTML report (`snakemake --report results/report.html` collects every report() output).
rule figures:
    input:
        runs=f"{R}/runs.csv",
        predictions=expand(f"{R}/runs/{{arm}}/seed{{seed}}/predictions.npz", arm=ARMS, seed=SEEDS),
        histories=expand(f"{R}/runs/{{arm}}/seed{{seed}}/history.csv", arm=ARMS, seed=SEEDS),
    output:
        [
            report(
                f"{R}/figures/{fig}.{ext}",
                caption=f"../report/{fig}.rst",
                category="Figures",
                labels={"figure": fig, "format": ext},
            )
            for fig in FIGURES
            for ext in FIGURE_FORMATS
        ],
        [
            report(
                f"{R}/figures/fig3_confusion_{arm}.{ext}",
                caption="../report/fig3_confusion.rst",
                category="Figures",
                subcategory="Confusion matrices",
                labels={"figure": f"confusion {arm}", "format": ext},
            )
            for arm in ARMS
            for ext in FIGURE_FORMATS
        ],
    log:
        f"{R}/logs/figures.log",
    benchmark:
        f"{R}/benchmarks/figures.tsv"
    conda:
        "../envs/lossablation.yaml"
    script:
        "../scripts/figures.py"
