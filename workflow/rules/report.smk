# Summary CSVs (contract C), LaTeX tables beside the paper's numbers, figures; all rebuilt from stored results.


rule summarize:
    input:
        config=RESOLVED,
        generations=[L.out_dir + f"/rows/{r['name']}/generation.jsonl" for r in CFG["rows"]],
        metrics=[L.out_dir + f"/rows/{r['name']}/metrics_summary.json" for r in CFG["rows"]],
    output:
        summary=L.summary(),
        rows=row_csvs(),
    log:
        log("summarize", "summary"),
    shell:
        "ilf summarize --config {input.config} > {log} 2>&1"


rule tables:
    input:
        summary=L.summary(),
        paper=PAPER_NUMBERS,
    output:
        table_files(),
    params:
        out=L.out_dir,
    log:
        log("tables", "tables"),
    shell:
        "ilf tables --summary {input.summary} --paper {input.paper} --out {params.out} > {log} 2>&1"


rule features:
    input:
        config=ancient(RESOLVED),
        prefetch=prefetch_marker(),
    output:
        L.features_dir("{feature}") + "/features.safetensors",
    params:
        out=lambda wc: L.features_dir(wc.feature),
    log:
        log("features", "{feature}"),
    resources:
        gpu=lambda wc: 0 if CFG["world"] == "toy" else 1,
        runtime=lambda wc: 10 if CFG["world"] == "toy" else 60,
    shell:
        "ilf features --config {input.config} --name {wildcards.feature} --out {params.out} > {log} 2>&1"


rule figures:
    input:
        summary=L.summary(),
        features=feature_files(),
    output:
        figure_files(),
    params:
        out=L.figures_dir(),
        features=" ".join(f"--features {L.features_dir(f['name'])}" for f in CFG["features"]),
    log:
        log("figures", "figures"),
    shell:
        "ilf figures --summary {input.summary} --out {params.out} {params.features} > {log} 2>&1"
