# Local rule (login node): downloads for offline compute nodes. (The resolved config every command reads is
# written when the workflow loads: common.smk, write_resolved_config.)

localrules:
    prefetch,


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
