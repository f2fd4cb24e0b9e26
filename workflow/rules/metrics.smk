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
        gpu=by_world(0, 1),
        runtime=by_world(20, 240),
        mem_mb=by_world(2000, 64000),
        cpus_per_task=by_world(1, 8),
    conda:
        ENV
    shell:
        "ilf metrics --generation-dir {params.row_dir} --metrics {params.metrics} {params.options} > {log} 2>&1"
