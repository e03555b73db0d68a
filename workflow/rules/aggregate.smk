# Aggregation (report categories must not be named "Statistics": Snakemake's report has its own page so named).
# Every run's metrics.json -> runs.csv -> paired statistics vs the baseline -> tables + verdicts.
rule aggregate:
    input:
        run_metrics(),
    output:
        runs=report(f"{R}/runs.csv", caption="../report/runs.rst", category="Data"),
        paired=report(f"{R}/paired_tests.csv", caption="../report/paired_tests.rst", category="Paired tests"),
        verdicts=report(f"{R}/verdicts.md", caption="../report/verdicts.rst", category="Verdicts"),
        tables=reported(TABLES, "Tables", (".html",)),
    log:
        f"{R}/logs/aggregate.log",
    benchmark:
        f"{R}/benchmarks/aggregate.tsv"
    conda:
        "../envs/lossablation.yaml"
    script:
        "../scripts/aggregate.py"
