"""Registrations of the whole cohort (config ``register``): predicted, no LDDMM, in the images' own spaces."""


rule register:
    input:
        model=model_file("prediction"),
        correction=[model_file("correction")] if REGISTER_METHOD == "predict+correct" else [],
        moving_grid=registration_input("moving", "grid"),
        target_grid=registration_input("target", "grid"),
        moving_affine=registration_input("moving", "affine"),
        target_affine=registration_input("target", "affine"),
        moving=registration_input("moving", "image"),
        target=registration_input("target", "image"),
        moving_labels=registration_input("moving", "labels"),
        target_labels=registration_input("target", "labels"),
    output:
        summary=f"{R}/registrations/{{registration}}/summary.json",
        warp=f"{R}/registrations/{{registration}}/warp.nii.gz",
        warped=f"{R}/registrations/{{registration}}/warped.nii.gz",
        transforms=f"{R}/registrations/{{registration}}/transforms.txt",
    log:
        f"{LOGS}/registrations/{{registration}}.log",
    benchmark:
        f"{BENCH}/registrations/{{registration}}.tsv"
    conda:
        "../envs/qs.yaml"
    threads: resources_of("register")["threads"]
    resources:
        **job_resources("register"),
    params:
        correct=correction_flags,
        refine=group_args(config, "refine") if REGISTER_METHOD == "predict+refine" else [],
        # the keys themselves: correct is a function of the input, whose value Snakemake does not count
        method=REGISTER_METHOD,
        corrections=config["predict"]["corrections"],
        correction_stride=config["predict"]["correction_stride"],
        passes=prediction_flags(),
        files=lambda w, input: [
            arg
            for key in ("moving_affine", "target_affine", "moving_labels", "target_labels")
            if input[key]
            for arg in (f"--{key.replace('_', '-')}", input[key][0])
        ],
        # atlas-to-image: the other direction too (subject -> atlas), from the same geodesic
        inverse=["--inverse"] if REGISTER["pairs"] == "atlas-to-image" else [],
        batch_size=config["predict"]["batch_size"],
        device=config["predict"]["device"],
        seed=config["seed"],
        out=lambda w, output: os.path.dirname(output.summary),
    shell:
        "OMP_NUM_THREADS={threads} qs register-pair --model {input.model:q} {params.correct:q} {params.refine:q} "
        "{params.passes:q} --moving-grid {input.moving_grid:q} --target-grid {input.target_grid:q} "
        "--moving {input.moving:q} --target {input.target:q} {params.files:q} {params.inverse:q} "
        "--batch-size {params.batch_size:q} --device {params.device:q} --seed {params.seed:q} --out {params.out:q} "
        "> {log:q} 2>&1"
