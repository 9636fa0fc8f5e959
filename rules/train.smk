"""Training: patches from the LDDMM momenta, the prediction network, then the correction network."""


rule patches:
    input:
        moving=pair_image("moving"),
        target=pair_image("target", TARGET_CONTRAST),
        momentum=f"{R}/lddmm/{{pair}}/m0.nii.gz",
    output:
        npy=f"{R}/patches/prediction/{{pair}}.npy",
        sidecar=f"{R}/patches/prediction/{{pair}}.json",
    log:
        f"{LOGS}/patches/{{pair}}.log",
    benchmark:
        f"{BENCH}/patches/{{pair}}.tsv"
    conda:
        "../envs/qs.yaml"
    threads: 1
    resources:
        **job_resources("lddmm", threads=1),
    params:
        patch=config["train"]["patch"],
        stride=config["train"]["stride"],
        threshold=config["train"]["background_threshold"],
        field=config["train"]["field"],
        lddmm=lddmm_args(),
    shell:
        "qs patches --moving {input.moving:q} --target {input.target:q} --momentum {input.momentum:q} "
        "--pair {wildcards.pair:q} --patch {params.patch:q} --stride {params.stride:q} "
        "--threshold {params.threshold:q} --field {params.field:q} {params.lddmm:q} --out {output.npy:q} > {log:q} 2>&1"


rule train_prediction:
    input:
        patches=expand(f"{R}/patches/prediction/{{pair}}.npy", pair=TRAIN_PAIRS),
    output:
        model=f"{R}/models/prediction/model.safetensors",
        loss=f"{R}/models/prediction/loss.tsv",
        plot=report(
            f"{R}/models/prediction/loss.png",
            caption="../report/training_loss.rst",
            category="Training",
            labels={"model": "prediction"},
        ),
    log:
        f"{LOGS}/train/prediction.log",
    benchmark:
        f"{BENCH}/train/prediction.tsv"
    conda:
        "../envs/qs.yaml"
    threads: resources_of("train")["threads"]
    resources:
        **job_resources("train"),
    params:
        args=train_args("prediction"),
        trained_on=trained_on_args,
        out=lambda w, output: os.path.dirname(output.model),
    shell:
        "OMP_NUM_THREADS={threads} qs train {input.patches:q} --kind prediction {params.args:q} {params.trained_on:q} --out {params.out:q} > {log:q} 2>&1"


rule correction_patches:
    input:
        model=f"{R}/models/prediction/model.safetensors",
        moving=pair_image("moving"),
        target=pair_image("target", TARGET_CONTRAST),
        momentum=f"{R}/lddmm/{{pair}}/m0.nii.gz",
    output:
        npy=f"{R}/patches/correction/{{pair}}.npy",
        sidecar=f"{R}/patches/correction/{{pair}}.json",
    log:
        f"{LOGS}/patches_correction/{{pair}}.log",
    benchmark:
        f"{BENCH}/patches_correction/{{pair}}.tsv"
    conda:
        "../envs/qs.yaml"
    threads: resources_of("train")["threads"]
    resources:
        **job_resources("train"),
    params:
        patch=config["train"]["patch"],
        stride=config["train"]["stride"],
        threshold=config["train"]["background_threshold"],
        device=config["train"]["device"],
        field=config["train"]["field"],
        prediction=prediction_flags("--predict-stride"),
        lddmm=lddmm_args(),
    shell:
        "OMP_NUM_THREADS={threads} qs correction-patches --model {input.model:q} --moving {input.moving:q} "
        "--target {input.target:q} --momentum {input.momentum:q} --pair {wildcards.pair:q} --patch {params.patch:q} "
        "--stride {params.stride:q} --threshold {params.threshold:q} --field {params.field:q} {params.prediction:q} {params.lddmm:q} "
        "--device {params.device:q} "
        "--out {output.npy:q} > {log:q} 2>&1"


rule train_correction:
    input:
        patches=expand(f"{R}/patches/correction/{{pair}}.npy", pair=TRAIN_PAIRS),
        init=[f"{R}/models/prediction/model.safetensors"] if config["train"]["correction_init"] == "prediction" else [],
    output:
        model=f"{R}/models/correction/model.safetensors",
        loss=f"{R}/models/correction/loss.tsv",
        plot=report(
            f"{R}/models/correction/loss.png",
            caption="../report/training_loss.rst",
            category="Training",
            labels={"model": "correction"},
        ),
    log:
        f"{LOGS}/train/correction.log",
    benchmark:
        f"{BENCH}/train/correction.tsv"
    conda:
        "../envs/qs.yaml"
    threads: resources_of("train")["threads"]
    resources:
        **job_resources("train"),
    params:
        args=train_args("correction"),
        trained_on=trained_on_args,
        init=lambda w, input: ["--init", input.init[0]] if input.init else [],
        correction_init=config["train"]["correction_init"],  # the key itself: init is a function of the input
        out=lambda w, output: os.path.dirname(output.model),
    shell:
        "OMP_NUM_THREADS={threads} qs train {input.patches:q} --kind correction {params.args:q} {params.trained_on:q} {params.init:q} --out {params.out:q} > {log:q} 2>&1"
