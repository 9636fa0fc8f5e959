"""Per-subject pre-processing: ANTsPy affine to the atlas, working grid, normalization, QC."""


rule preprocess:
    input:
        validated=f"{R}/validated/{{subject}}.json",
        atlas=f"{R}/atlas/atlas_T1w.nii.gz",
        atlas_mask=f"{R}/atlas/atlas_mask.nii.gz",
        t1=subject_file("t1"),
        t2=subject_file("t2"),
        labels=subject_file("labels"),
    output:
        **preprocess_outputs(),
        qc=report(
            f"{R}/preprocessed/{{subject}}/{{subject}}_qc.png",
            caption="../report/preprocess_qc.rst",
            category="Pre-processing",
            labels={"subject": "{subject}"},
        ),
    log:
        f"{LOGS}/preprocess/{{subject}}.log",
    benchmark:
        f"{BENCH}/preprocess/{{subject}}.tsv"
    conda:
        "../envs/qs.yaml"
    threads: resources_of("preprocess")["threads"]
    resources:
        **job_resources("preprocess"),
    params:
        extra=preprocess_flags,
        normalize=config["preprocess"]["normalize"],
        seed=config["seed"],
        out=lambda w, output: os.path.dirname(output.t1),
    shell:
        "qs preprocess --subject {wildcards.subject:q} --atlas {input.atlas:q} --atlas-mask {input.atlas_mask:q} "
        "--t1 {input.t1:q} {params.extra:q} --normalize {params.normalize:q} --seed {params.seed:q} "
        "--threads {threads} --out {params.out:q} > {log:q} 2>&1"
