# Aggregation: every run's metrics.json -> runs.csv -> paired statistics vs the baseline -> tables + verdicts.
rule aggregate:
    input:
        run_metrics(),
    output:
        runs=f"{R}/runs.csv",
        verdicts=f"{R}/verdicts.md",
        tables=[
            report(
                f"{R}/tables/{table}.{ext}",
                caption=f"../report/{table}.rst",
                category="Tables",
                subcategory=table,
                labels={"table": table, "format": ext},
            )
            for table in TABLES
            for ext in TABLE_FORMATS
        ],
    log:
        f"{R}/logs/aggregate.log",
    benchmark:
        f"{R}/benchmarks/aggregate.tsv"
    conda:
        "../envs/lossablation.yaml"
    script:
        "../scripts/aggregate.py"
