"""Baselines (ANTs SyN) and the evaluation of every test pair against LDDMM optimization."""


# The SyN baselines of evaluate.syn_variants (qs/syn.py, docs/syn.md): syn (full strength, settings from
# config), syn-quick (ANTsPy's defaults) and named settings syn-*, each in its own folder results/{variant}/{pair}/.
rule syn:
    input:
        moving=pair_image("moving"),
        target=pair_image("target"),
        labels=pair_labels("moving"),
    output:
        warp=f"{R}/{{variant}}/{{pair}}/warp.nii.gz",
        warped=f"{R}/{{variant}}/{{pair}}/warped.nii.gz",
        summary=f"{R}/{{variant}}/{{pair}}/summary.json",
    log:
        f"{LOGS}/{{variant}}/{{pair}}.log",
    benchmark:
        f"{BENCH}/{{variant}}/{{pair}}.tsv"
    wildcard_constraints:
        variant="|".join(SYN_VARIANTS) or "syn",
    conda:
        "../envs/qs.yaml"
    threads: resources_of("evaluate")["threads"]
    resources:
        **job_resources("evaluate"),
    params:
        labels=labels_flag,
        settings=syn_args,
        seed=config["seed"],
        out=lambda w, output: os.path.dirname(output.warp),
    shell:
        "qs syn --variant {wildcards.variant:q} --moving {input.moving:q} --target {input.target:q} {params.labels:q} "
        "{params.settings:q} --seed {params.seed:q} --threads {threads} --out {params.out:q} > {log:q} 2>&1"


rule evaluate_pair:
    input:
        unpack(evaluation_inputs),
    output:
        errors=f"{R}/evaluate/{{pair}}/deformation_error.npz",
        detj=f"{R}/evaluate/{{pair}}/detj.tsv",
        overlap=f"{R}/evaluate/{{pair}}/overlap.tsv",
        timing=f"{R}/evaluate/{{pair}}/timing.tsv",
    log:
        f"{LOGS}/evaluate/{{pair}}.log",
    benchmark:
        f"{BENCH}/evaluate/{{pair}}.tsv"
    conda:
        "../envs/qs.yaml"
    threads: resources_of("evaluate")["threads"]
    resources:
        **job_resources("evaluate"),
    params:
        methods=evaluation_args,
        lddmm=lambda w, input: os.path.dirname(input.lddmm),
        out=lambda w, output: os.path.dirname(output.errors),
    shell:
        "qs evaluate-pair --pair {wildcards.pair:q} --lddmm {params.lddmm:q} {params.methods:q} --mask {input.mask:q} "
        "--out {params.out:q} > {log:q} 2>&1"
