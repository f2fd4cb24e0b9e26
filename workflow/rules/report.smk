# The row summary (summary.csv, rows/<row>.csv), LaTeX and HTML tables beside the paper's numbers, figures,
# the image browser and the report's galleries; all rebuilt from stored results. Outputs marked report() make
# `snakemake --report`.


rule summarize:
    input:
        config=RESOLVED,
        generations=[row_pattern(r["name"], "generation.jsonl") for r in CFG["rows"]],
        metrics=[row_pattern(r["name"], "metrics_summary.json") for r in CFG["rows"]],
    output:
        summary=L.summary(),
        rows=row_csvs(),
    log:
        log("summarize", "summary"),
    conda:
        ENV
    shell:
        "ilf summarize --config {input.config} > {log} 2>&1"


rule tables:
    input:
        summary=L.summary(),
        paper=PAPER_NUMBERS,
    output:
        tex=table_files(),
        html=table_html_outputs(),  # the same tables beside the paper's numbers, for the report
        summary=report(L.summary_html(), caption="../report/summary.rst", category="Provenance",
                       subcategory="summary", labels={"file": "summary.html"}),
    params:
        out=lambda wc, output: os.path.dirname(output.tex[0]),
        about=ABOUT,  # the captions' words (rows and metrics of each table)
    log:
        log("tables", "tables"),
    conda:
        ENV
    shell:
        "ilf tables --summary {input.summary} --paper {input.paper} --out {params.out} > {log} 2>&1"


localrules:
    active_table,


rule active_table:  # results/table1.tex ...: the active config's tables under the names the paper uses
    input:
        lambda wc: f"{L.out_dir}/{wc.table}.tex",
    output:
        "results/{table}.tex",
    wildcard_constraints:
        table=_names(os.path.basename(t)[:-4] for t in table_files()),
    log:
        log("active_table", "{table}"),
    conda:
        ENV
    shell:
        "cp {input} {output} > {log} 2>&1"


rule features:
    input:
        config=ancient(RESOLVED),
        prefetch=prefetch_marker(),
    output:
        feature_file("{feature}"),
    params:
        out=lambda wc: L.features_dir(wc.feature),
    log:
        log("features", "{feature}"),
    priority: 500  # short and independent of training: never left for the end
    resources:
        gpu=by_world(0, 1),
        runtime=by_world(10, 60),
        mem_mb=by_world(2000, 64000),
        cpus_per_task=by_world(1, 8),
    conda:
        ENV
    shell:
        "ilf features --config {input.config} --name {wildcards.feature} --out {params.out} > {log} 2>&1"


rule figures:
    input:
        summary=L.summary(),
        features=feature_files(),
    output:
        figure_outputs(),
    params:
        out=lambda wc, output: os.path.dirname(output[0]),
        about=ABOUT,
        features=" ".join(f"--features {L.features_dir(f['name'])}" for f in CFG["features"]),
        rows=f"{L.out_dir}/rows",
    log:
        log("figures", "figures"),
    conda:
        ENV
    shell:
        "ilf figures --summary {input.summary} --out {params.out} --rows-dir {params.rows} {params.features} > {log} 2>&1"


rule browse:  # the static image browser, and the report's per-row galleries (links to the images, no re-encoding)
    input:
        config=report(RESOLVED, caption="../report/config.rst", category="Provenance", subcategory="config",
                      labels={"file": "workflow_config.json"}),
        generations=[row_pattern(r["name"], "generation.jsonl") for r in CFG["rows"]],
        metrics=[row_pattern(r["name"], "metrics_summary.json") for r in CFG["rows"]],
    output:
        browser=directory(L.browse_dir()),
        gallery=report(directory(L.gallery_dir()), patterns=["{tag}/{gallery_row}/{image}.png"],
                       caption="../report/gallery.rst", category=gallery_category, subcategory="{gallery_row}",
                       labels=gallery_labels),
    params:
        images=GALLERY_IMAGES,
    log:
        log("browse", "browse"),
    resources:
        mem_mb=by_world(2000, 16000),
    conda:
        ENV
    shell:
        "ilf browse --config {input.config} --out {output.browser} --gallery {output.gallery} "
        "--gallery-images {params.images} > {log} 2>&1"
