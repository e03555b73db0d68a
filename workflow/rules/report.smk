# Figures for the HTML report (`snakemake --report results/report.html` collects every report() output).
rule figures:
    input:
        runs=f"{R}/runs.csv",
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
    params:
        runs=f"{R}/runs",
        out=R,
    conda:
        "../envs/lossablation.yaml"
    script:
        "../scripts/figures.py"
