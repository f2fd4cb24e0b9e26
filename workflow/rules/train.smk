# Latents once per data set (`ilf precompute`), then one job per feedback training run (`ilf train`, contract E).


rule precompute:
    input:
        config=lambda wc: CFG["precompute"][wc.latents]["config"],
        prefetch=prefetch_marker(),
    output:
        directory(L.latents_dir("{latents}")),
    params:
        sets=lambda wc: set_args(CFG["precompute"][wc.latents].get("overrides") or {}),
    log:
        log("precompute", "{latents}"),
    resources:
        gpu=1,
        runtime=240,
        mem_mb=64000,
        cpus_per_task=8,
    conda:
        ENV
    shell:
        "ilf precompute --config {input.config} --out {output} --no-progress {params.sets} > {log} 2>&1"


rule train:
    input:
        config=lambda wc: CFG["training"][wc.run]["config"],
        latents=lambda wc: [L.latents_dir(CFG["training"][wc.run]["latents"])] if CFG["training"][wc.run].get("latents") else [],
        prefetch=prefetch_marker(),
    output:
        final_checkpoint("{run}"),
    params:
        launch=train_launcher,
        run_dir=lambda wc: L.run_dir(wc.run),
        latents=lambda wc: f"--latents {L.latents_dir(CFG['training'][wc.run]['latents'])}" if CFG["training"][wc.run].get("latents") else "",
        sets=lambda wc: train_sets(wc.run),
    log:
        log("train", "{run}"),
    threads: 2
    resources:
        nodes=lambda wc: train_resources(wc.run, "nodes", 1),
        tasks=lambda wc: train_resources(wc.run, "nodes", 1),
        gpu=lambda wc: train_resources(wc.run, "gpus", 0),
        cpus_per_task=lambda wc: max(2, 8 * train_resources(wc.run, "gpus", 0)),
        runtime=lambda wc: train_resources(wc.run, "runtime", 60),
        mem_mb=lambda wc: train_resources(wc.run, "mem_mb", 8000),
        mpi=lambda wc: "srun" if CFG["launcher"] == "srun" and train_resources(wc.run, "nodes", 1) * max(1, train_resources(wc.run, "gpus", 0)) > 1 else "",
    conda:
        ENV
    shell:
        "{params.launch} --config {input.config} --out {params.run_dir} --resume --no-progress {params.latents} {params.sets} > {log} 2>&1"
