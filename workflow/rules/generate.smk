# Images per row (contract A): shard jobs, then a merge into <row_dir>/generation.jsonl.
# Rows whose images equal an earlier row's link to that row's folder instead of generating again.

localrules:
    share_images,  # only links files: runs on the login node


rule generate_shard:
    input:
        config=ancient(RESOLVED),
        checkpoint=training_inputs,
        prefetch=prefetch_marker(),
    output:
        row_pattern("{row}", "shards/shard-{shard}-of-{n}.jsonl"),
    params:
        signature=row_params,  # a change of the row's generation settings re-runs it
        device=CFG["device"],
    log:
        log("generate", "{row}.shard-{shard}-of-{n}"),
    resources:
        gpu=by_world(0, 1),
        runtime=by_world(30, 720),
        mem_mb=by_world(2000, 64000),
        cpus_per_task=by_world(1, 8),
    conda:
        ENV
    shell:
        "ilf generate --config {input.config} --row {wildcards.row} --shard {wildcards.shard} "
        "--num-shards {wildcards.n} --device {params.device} > {log} 2>&1"


rule generate_merge:
    input:
        config=ancient(RESOLVED),
        shards=lambda wc: [shard_records(wc.row, k) for k in range(num_shards(wc.row))] if num_shards(wc.row) > 1 else [],
        checkpoint=training_inputs,
        prefetch=prefetch_marker(),
    output:
        row_pattern("{row}", "generation.jsonl"),
    params:
        num_shards=lambda wc: num_shards(wc.row),
        mode=lambda wc: "--merge" if num_shards(wc.row) > 1 else "",  # one shard: generate and merge in one job
        signature=row_params,
        device=CFG["device"],
    log:
        log("generate", "{row}"),
    resources:
        gpu=lambda wc: 0 if CFG["world"] == "toy" or num_shards(wc.row) > 1 else 1,
        runtime=lambda wc: 30 if CFG["world"] == "toy" or num_shards(wc.row) > 1 else 720,
        mem_mb=lambda wc: 2000 if CFG["world"] == "toy" or num_shards(wc.row) > 1 else 64000,
        cpus_per_task=lambda wc: 1 if CFG["world"] == "toy" or num_shards(wc.row) > 1 else 8,
    conda:
        ENV
    shell:
        "ilf generate --config {input.config} --row {wildcards.row} --num-shards {params.num_shards} {params.mode} "
        "--device {params.device} > {log} 2>&1"


rule share_images:
    input:
        generation=lambda wc: generation_file(SHARED[wc.shared]),
        metrics=lambda wc: metrics_summary(SHARED[wc.shared]),
    output:
        generation=row_pattern("{shared}", "generation.jsonl"),
        metrics=row_pattern("{shared}", "metrics_summary.json"),
    params:
        owner=lambda wc: SHARED[wc.shared],
    log:
        log("share_images", "{shared}"),
    conda:
        ENV
    shell:
        "(cd $(dirname {output.generation}) && ln -sfn ../{params.owner}/images images "
        "&& ln -sfn ../{params.owner}/metrics.jsonl metrics.jsonl "
        "&& ln -sfn ../{params.owner}/generation.jsonl generation.jsonl "
        "&& ln -sfn ../{params.owner}/metrics_summary.json metrics_summary.json) > {log} 2>&1"
