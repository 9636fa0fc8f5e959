"""Baselines (ANTsPy SyN) and the evaluation of every test pair against LDDMM optimization."""


rule syn:
    input:
        moving=pair_image("moving"),
        target=pair_image("target"),
        labels=pair_labels("moving"),
    output:
        warp=f"{R}/syn/{{pair}}/warp.nii.gz",
        warped=f"{R}/syn/{{pair}}/warped.nii.gz",
        summary=f"{R}/syn/{{pair}}/summary.json",
    params:
        labels=labels_flag,
        seed=config["seed"],
        out=lambda w, output: os.path.dirname(output.warp),
    log:
        f"{LOGS}/syn/{{pair}}.log",
    benchmark:
        f"{BENCH}/syn/{{pair}}.tsv"
    threads: resources_of("evaluate")["threads"]
    resources:
        **job_resources("evaluate"),
    conda:
        "../envs/qs.yaml"
    shell:
        "qs syn --moving {input.moving:q} --target {input.target:q} {params.labels:q} --seed {params.seed:q} "
        "--threads {threads} --out {params.out:q} > {log:q} 2>&1"


rule evaluate_pair:
    input:
        unpack(evaluation_inputs),
    output:
        errors=f"{R}/evaluate/{{pair}}/deformation_error.npz",
        detj=f"{R}/evaluate/{{pair}}/detj.tsv",
        overlap=f"{R}/evaluate/{{pair}}/overlap.tsv",
        timing=f"{R}/evaluate/{{pair}}/timing.tsv",
    params:
        methods=evaluation_args,
        lddmm=lambda w, input: os.path.dirname(input.lddmm),
        out=lambda w, output: os.path.dirname(output.errors),
    log:
        f"{LOGS}/evaluate/{{pair}}.log",
    threads: resources_of("evaluate")["threads"]
    resources:
        **job_resources("evaluate"),
    conda:
        "../envs/qs.yaml"
    shell:
        "qs evaluate-pair --pair {wildcards.pair:q} --lddmm {params.lddmm:q} {params.methods:q} --mask {input.mask:q} "
        "--out {params.out:q} > {log:q} 2>&1"
