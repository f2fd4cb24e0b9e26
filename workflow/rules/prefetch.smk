# Local rules (login node): the resolved config every command reads, and downloads for offline compute nodes.

localrules:
    resolved_config,
    prefetch,


rule resolved_config:
    output:
        RESOLVED,
    params:
        config=json.dumps(CFG, sort_keys=True),  # any config change rewrites it (params rerun trigger)
    log:
        log("resolved_config", "config"),
    priority: 1000  # every job reads it
    run:
        from ilf.io import write_text_atomic

        write_text_atomic(output[0], f"{params.config}\n")


rule prefetch:
    input:
        ancient(RESOLVED),
    output:
        touch(f"{L.out_dir}/prefetch.done"),
    log:
        log("prefetch", "prefetch"),
    conda:
        ENV
    shell:
        "ilf prefetch --config {input} > {log} 2>&1"
