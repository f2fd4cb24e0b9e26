# Metrics per image folder (`ilf metrics`, contract B): every metric any row sharing the folder asks for.


rule metrics:
    input:
        generation=row_pattern("{row}", "generation.jsonl"),
        prefetch=prefetch_marker(),
    output:
        row_pattern("{row}", "metrics_summary.json"),
    params:
        metrics=row_metrics,
        options=metric_args(),
        row_dir=lambda wc: row_dir(wc.row),
    log:
        log("metrics", "{row}"),
    resources:
        gpu=lambda wc: 0 if CFG["world"] == "toy" else 1,
        runtime=lambda wc: 20 if CFG["world"] == "toy" else 240,
        mem_mb=lambda wc: 4000 if CFG["world"] == "toy" else 64000,
    conda:
        ENV
    shell:
        "ilf metrics --generation-dir {params.row_dir} --metrics {params.metrics} {params.options} > {log} 2>&1"
