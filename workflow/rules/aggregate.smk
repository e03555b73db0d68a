# Aggregation: every run's metrics.json -> runs.csv -> paired statistics vs the baseline -> tables + verdicts.
rule aggregate:
    input:
        run_metrics(),
    output:
        runs=report(f"{R}/runs.csv", caption="../report/runs.rst", category="Data"),
        paired=report(f"{R}/paired_tests.csv", caption="../report/paired_tests.rst", category="Statistics"),
        verdicts=report(f"{R}/verdicts.md", caption="../report/verdicts.rst", category="Statistics"),
        tables=reported(TABLES, "Tables", (".html",)),
    log:
        f"{R}/logs/aggregate.log",
    benchmark:
        f"{R}/benchmarks/aggregate.tsv"
    conda:
        "../envs/lossablation.yaml"
    script:
        "../scripts/aggregate.py"
