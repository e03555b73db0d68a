# Aggregation (report categories must not be named "Statistics": Snakemake's report has its own page so named).
# Every run's metrics.json (+ predictions.npz: QP levels) -> runs.csv -> paired statistics vs the baseline -> tables,
# verdicts and the results document summary.md. Report categories are listed alphabetically: "Answers" comes first.
# The files are lossablation.analysis.aggregate.output_files (OUTPUTS); every table key of it is declared here.
AGGREGATE_TABLES = [key for key in OUTPUTS if key.startswith("table")]


rule aggregate:
    input:
        run_metrics(),
        predictions=expand(f"{R}/runs/{{arm}}/seed{{seed}}/predictions.npz", arm=ARMS, seed=SEEDS),
    output:
        summary=report(f"{R}/summary.md", caption="../report/summary.rst", category="Answers"),
        runs=report(f"{R}/runs.csv", caption="../report/runs.rst", category="Data"),
        paired=report(f"{R}/paired_tests.csv", caption="../report/paired_tests.rst", category="Paired tests"),
        verdicts=report(f"{R}/verdicts.md", caption="../report/verdicts.rst", category="Verdicts"),
        tables=reported(AGGREGATE_TABLES, "Tables", (".html",)),
    params:
        config=ANALYSIS_CONFIG,
    log:
        f"{R}/logs/aggregate.log",
    benchmark:
        f"{R}/benchmarks/aggregate.tsv"
    conda:
        "../envs/lossablation.yaml"
    script:
        "../scripts/aggregate.py"
