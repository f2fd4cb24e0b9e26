# Images per row (the generation record, docs/formats.md): shard jobs, then a merge into <row_dir>/generation.jsonl.
# With `rows_per_job` > 1 (toy world), one job per group of rows (generate_rows_<group>,
# ilf.harness.generation_jobs): one `ilf generate --row A --row B ...` process, the same images as one job per row.
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
        "&& {{ [ ! -d ../{params.owner}/clips ] || ln -sfn ../{params.owner}/clips clips; }} "  # a video row's clips
        "&& ln -sfn ../{params.owner}/metrics.jsonl metrics.jsonl "
        "&& ln -sfn ../{params.owner}/generation.jsonl generation.jsonl "
        "&& ln -sfn ../{params.owner}/metrics_summary.json metrics_summary.json) > {log} 2>&1"


for _group, _rows in ROW_GROUPS.items():  # one rule per group of rows (its outputs are the rows' records)

    rule:
        name:
            f"generate_rows_{_group}"
        input:
            config=ancient(RESOLVED),
            checkpoint=row_checkpoints(_rows),
            prefetch=prefetch_marker(),
        output:
            [generation_file(r) for r in _rows],
        params:
            signature=group_signature(_rows),
            rows=" ".join(f"--row {r}" for r in _rows),
            device=CFG["device"],
        log:
            log("generate", f"rows_{_group}"),
        priority: min(group_cost(_rows) // 1000, 499)  # the longest first (2 cores: the tail is the makespan)
        resources:
            gpu=by_world(0, 1),
            runtime=min(by_world(30, 720) * len(_rows), 1440),  # minutes; one day at most
            mem_mb=by_world(2000, 64000),
            cpus_per_task=by_world(1, 8),
        conda:
            ENV
        shell:
            "ilf generate --config {input.config} {params.rows} --device {params.device} > {log} 2>&1"
