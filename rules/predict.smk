"""Prediction on the test pairs: predict, predict + correct, predict + refine, and MC-dropout uncertainty."""


rule predict:
    input:
        model=model_file("prediction"),
        correction=lambda w: [model_file("correction")] if w.method == "predict-correct" else [],
        moving=pair_image("moving"),
        target=pair_image("target", TARGET_CONTRAST),
        labels=pair_labels("moving"),
    output:
        **registration_outputs(f"{R}/predict/{{method}}", momentum=PREDICTS_MOMENTUM),
    log:
        f"{LOGS}/predict/{{method}}/{{pair}}.log",
    benchmark:
        f"{BENCH}/predict/{{method}}/{{pair}}.tsv"
    wildcard_constraints:
        method="predict|predict-correct|predict-refine",
    conda:
        "../envs/qs.yaml"
    threads: resources_of("predict")["threads"]
    resources:
        **job_resources("predict"),
    params:
        labels=labels_flag,
        correct=correction_flags,
        # the keys themselves: correct is a function of the input, whose value Snakemake does not count
        corrections=config["predict"]["corrections"],
        correction_stride=config["predict"]["correction_stride"],
        batch_size=config["predict"]["batch_size"],
        passes=prediction_flags(),
        refine=refine_flags,
        lddmm=lddmm_args(),
        device=config["predict"]["device"],
        seed=config["seed"],
        out=lambda w, output: os.path.dirname(output.warp),
    shell:
        "OMP_NUM_THREADS={threads} qs predict --model {input.model:q} {params.correct:q} {params.refine:q} --moving {input.moving:q} "
        "--target {input.target:q} {params.labels:q} --batch-size {params.batch_size:q} {params.passes:q} {params.lddmm:q} "
        "--device {params.device:q} --seed {params.seed:q} --out {params.out:q} > {log:q} 2>&1"


rule predict_mc:
    input:
        model=model_file("prediction"),
        moving=pair_image("moving"),
        target=pair_image("target", TARGET_CONTRAST),
        labels=pair_labels("moving"),
    output:
        **registration_outputs(f"{R}/predict/predict-mc", momentum=PREDICTS_MOMENTUM),
        uncertainty=f"{R}/predict/predict-mc/{{pair}}/uncertainty.nii.gz",
    log:
        f"{LOGS}/predict/predict-mc/{{pair}}.log",
    benchmark:
        f"{BENCH}/predict/predict-mc/{{pair}}.tsv"
    conda:
        "../envs/qs.yaml"
    threads: resources_of("predict")["threads"]
    resources:
        **job_resources("predict"),
    params:
        labels=labels_flag,
        samples=config["predict"]["samples"],
        batch_size=config["predict"]["batch_size"],
        passes=prediction_flags(mirror=False),  # the MC samples are the ensemble (mirror images: 8x each)
        lddmm=lddmm_args(),
        device=config["predict"]["device"],
        seed=config["seed"],
        out=lambda w, output: os.path.dirname(output.warp),
    shell:
        "OMP_NUM_THREADS={threads} qs predict --model {input.model:q} --samples {params.samples:q} "
        "--moving {input.moving:q} --target {input.target:q} {params.labels:q} --batch-size {params.batch_size:q} "
        "{params.passes:q} {params.lddmm:q} --device {params.device:q} --seed {params.seed:q} --out {params.out:q} > {log:q} 2>&1"
