# Latents once per data set (`ilf precompute`), then one job per feedback training run (`ilf train`: the training run layout).


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
    priority: 1000  # gates training, which gates every ILF row
    resources:
        gpu=by_world(0, 1),
        runtime=by_world(30, 240),
        mem_mb=by_world(2000, 64000),
        cpus_per_task=by_world(1, 8),
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
    threads: train_threads
    priority: 1000  # training gates every ILF row: it goes before any generation job
    resources:  # one task per node, GPUs/CPUs/memory per node (common.smk, train_slurm)
        nodes=train_slurm("nodes"),
        gres=train_slurm("gres"),
        tasks_per_gpu=train_slurm("tasks_per_gpu"),
        tasks=train_slurm("tasks"),
        mpi=train_slurm("mpi"),
        cpus_per_task=train_slurm("cpus_per_task"),
        mem_mb=train_slurm("mem_mb"),
        runtime=train_slurm("runtime"),
    conda:
        ENV
    shell:  # in one group: the launcher's own error lines (rendezvous host) go to the log too
        "( {params.launch} --config {input.config} --out {params.run_dir} --resume --no-progress {params.latents} {params.sets} ) > {log} 2>&1"
