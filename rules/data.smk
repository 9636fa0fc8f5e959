"""Inputs: the built-in demo cohort and atlas, the working grid, the cohort table, validation."""

if config["cohort"]["source"] == "demo":

    rule demo:
        output:
            sheet=f"{DEMO}/subjects.tsv",
            images=[subjects.loc[s, k] for s in SUBJECTS for k in ("t1", "t2", "labels")],
        log:
            f"{LOGS}/demo.log",
        benchmark:
            f"{BENCH}/demo.tsv"
        conda:
            "../envs/qs.yaml"
        threads: 1
        resources:
            **job_resources("preprocess", threads=1),
        params:
            n=config["cohort"]["demo"]["subjects"],
            spacing=config["cohort"]["demo"]["spacing"],
            max_displacement=config["cohort"]["demo"]["max_displacement_mm"],
            test_fraction=config["cohort"]["test_fraction"],
            seed=config["seed"],
            out=lambda w, output: os.path.dirname(output.sheet),
        shell:
            "qs demo --out {params.out:q} --subjects {params.n:q} --spacing {params.spacing:q} "
            "--test-fraction {params.test_fraction:q} --max-displacement {params.max_displacement:q} "
            "--seed {params.seed:q} > {log:q} 2>&1"


rule builtin_atlas:
    output:
        t1=f"{R}/atlas/source/atlas_T1w.nii.gz",
        t2=f"{R}/atlas/source/atlas_T2w.nii.gz",
        mask=f"{R}/atlas/source/atlas_mask.nii.gz",
        labels=f"{R}/atlas/source/atlas_labels.nii.gz",
    log:
        f"{LOGS}/builtin_atlas.log",
    benchmark:
        f"{BENCH}/builtin_atlas.tsv"
    conda:
        "../envs/qs.yaml"
    threads: 1
    resources:
        **job_resources("preprocess", threads=1),
    params:
        out=lambda w, output: os.path.dirname(output.t1),
    shell:
        "qs atlas --out {params.out:q} > {log:q} 2>&1"


rule working_grid:
    input:
        t1=atlas_source("t1"),
        mask=atlas_source("mask"),
        labels=[atlas_source("labels")] if atlas_source("labels") else [],
        t2=[atlas_source("t2")] if atlas_source("t2") else [],
    output:
        **atlas_grid_outputs(),
    log:
        f"{LOGS}/working_grid.log",
    benchmark:
        f"{BENCH}/working_grid.tsv"
    conda:
        "../envs/qs.yaml"
    threads: 1
    resources:
        **job_resources("preprocess", threads=1),
    params:
        spacing=config["grid"]["spacing"],
        margin=config["grid"]["margin_mm"],
        out=lambda w, output: os.path.dirname(output.t1),
        extra=lambda w, input: [arg for k in ("labels", "t2") if input[k] for arg in (f"--{k}", input[k][0])],
    shell:
        "qs grid --t1 {input.t1:q} --mask {input.mask:q} {params.extra:q} --spacing {params.spacing:q} "
        "--margin {params.margin:q} --out {params.out:q} > {log:q} 2>&1"


rule cohort_tables:
    input:
        sheet=[config["cohort"]["sheet"]] if config["cohort"]["source"] == "sheet" else [],
    output:
        subjects=f"{R}/cohort/subjects.tsv",
        pairs=f"{R}/cohort/pairs.tsv",
    log:
        f"{LOGS}/cohort_tables.log",
    benchmark:
        f"{BENCH}/cohort_tables.tsv"
    conda:
        "../envs/qs.yaml"
    threads: 1
    resources:
        **job_resources("preprocess", threads=1),
    params:
        args=cohort_args(),
        # the tables themselves: a BIDS folder or sheet whose content changes reruns the rule
        tables=tables_digest(subjects, pairs),
    shell:
        "qs cohort-tables {params.args:q} --out-subjects {output.subjects:q} --out-pairs {output.pairs:q} > {log:q} 2>&1"


rule validate_subject:
    input:
        t1=subject_file("t1"),
        t2=subject_file("t2"),
        labels=subject_file("labels"),
    output:
        f"{R}/validated/{{subject}}.json",
    log:
        f"{LOGS}/validate/{{subject}}.log",
    benchmark:
        f"{BENCH}/validate/{{subject}}.tsv"
    conda:
        "../envs/qs.yaml"
    threads: 1
    resources:
        **job_resources("preprocess", threads=1),
    params:
        extra=optional_files_flags,
    shell:
        "qs validate --subject {wildcards.subject:q} --t1 {input.t1:q} {params.extra:q} --out {output:q} > {log:q} 2>&1"
