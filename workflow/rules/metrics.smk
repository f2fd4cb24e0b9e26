# Metrics per image folder (`ilf metrics`, the metrics record): every metric any row sharing the folder asks for; with
# `rows_per_job` > 1 one job per group of rows (metrics_rows_<group>, the groups of generate.smk). A folder scored
# with psnr_ref / ssim_ref / lpips_ref also reads its reference row's images: their generation is an input.


rule metrics:
    input:
        generation=row_pattern("{row}", "generation.jsonl"),
        reference=lambda wc: reference_generation([wc.row]),
        prefetch=prefetch_marker(),
    output:
        row_pattern("{row}", "metrics_summary.json"),
    params:
        metrics=row_metrics,
        options=metric_args(),
        dirs=lambda wc: metrics_dirs([wc.row]),
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
        "ilf metrics {params.dirs} --metrics {params.metrics} {params.options} > {log} 2>&1"


for _group, _rows in ROW_GROUPS.items():  # the rows of a generate_rows_<group> job, scored in one process

    rule:
        name:
            f"metrics_rows_{_group}"
        input:
            generation=[generation_file(r) for r in _rows],
            reference=reference_generation(_rows),
            prefetch=prefetch_marker(),
        output:
            [metrics_summary(r) for r in _rows],
        params:
            metrics=",".join(metrics_for_dir(CFG, _rows[0])),  # the same for every row of a group
            options=metric_args(),
            row_dirs=metrics_dirs(_rows),
        log:
            log("metrics", f"rows_{_group}"),
        priority: 500  # short: scored as soon as the group's images exist, not all at the end
        resources:
            gpu=by_world(0, 1),
            runtime=min(by_world(20, 240) * len(_rows), 1440),
            mem_mb=by_world(2000, 64000),
            cpus_per_task=by_world(1, 8),
        conda:
            ENV
        shell:
            "ilf metrics {params.row_dirs} --metrics {params.metrics} {params.options} > {log} 2>&1"
