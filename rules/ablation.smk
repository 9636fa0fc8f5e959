"""The paper's variant table (`snakemake ablation`, off the default target): qs.report.ablation.

Every variant of ablation.variants gets a network trained from the run's LDDMM momenta of its training pairs
(shared by variants that differ only in samples or correction; one patch set per field and stride), predicts
the reference pairs as the paper did (its training stride, no mirror images, one correction round) and is
evaluated against LDDMM; results/report/ablation.tsv and ablation.png gather one row per variant.
"""


rule ablation:
    input:
        unpack(ablation_outputs),


rule ablation_patches:
    input:
        moving=pair_image("moving"),
        target=pair_image("target", TARGET_CONTRAST),
        momentum=f"{R}/lddmm/{{pair}}/m0.nii.gz",
    output:
        npy=f"{ABL}/patches/{{field}}-stride{{stride}}/{{pair}}.npy",
        sidecar=f"{ABL}/patches/{{field}}-stride{{stride}}/{{pair}}.json",
    log:
        f"{LOGS}/ablation/patches/{{field}}-stride{{stride}}/{{pair}}.log",
    benchmark:
        f"{BENCH}/ablation/patches/{{field}}-stride{{stride}}/{{pair}}.tsv"
    wildcard_constraints:
        field="momentum|velocity|deformation",
        stride=r"\d+",
    conda:
        "../envs/qs.yaml"
    threads: 1
    resources:
        **job_resources("lddmm", threads=1),
    params:
        patch=config["train"]["patch"],
        threshold=config["train"]["background_threshold"],
        lddmm=lddmm_args(),
    shell:
        "qs patches --moving {input.moving:q} --target {input.target:q} --momentum {input.momentum:q} "
        "--pair {wildcards.pair:q} --patch {params.patch:q} --stride {wildcards.stride:q} "
        "--threshold {params.threshold:q} --field {wildcards.field:q} {params.lddmm:q} --out {output.npy:q} > {log:q} 2>&1"


rule ablation_train_prediction:
    input:
        patches=lambda w: expand(f"{ABL}/patches/{{key}}/{{pair}}.npy", key=w.model.rsplit("-", 1)[0], pair=TRAIN_PAIRS),
    output:
        model=f"{ABL}/models/{{model}}/prediction/model.safetensors",
        loss=f"{ABL}/models/{{model}}/prediction/loss.tsv",
    log:
        f"{LOGS}/ablation/train/{{model}}/prediction.log",
    benchmark:
        f"{BENCH}/ablation/train/{{model}}/prediction.tsv"
    wildcard_constraints:
        model=MODEL_PATTERN,
    conda:
        "../envs/qs.yaml"
    threads: resources_of("train")["threads"]
    resources:
        **job_resources("train"),
    params:
        args=lambda w: ablation_train_args("prediction", w.model),
        trained_on=trained_on_args,
        out=lambda w, output: os.path.dirname(output.model),
    shell:
        "OMP_NUM_THREADS={threads} qs train {input.patches:q} --kind prediction {params.args:q} {params.trained_on:q} "
        "--out {params.out:q} > {log:q} 2>&1"


rule ablation_correction_patches:
    input:
        model=f"{ABL}/models/{{model}}/prediction/model.safetensors",
        moving=pair_image("moving"),
        target=pair_image("target", TARGET_CONTRAST),
        momentum=f"{R}/lddmm/{{pair}}/m0.nii.gz",
    output:
        npy=f"{ABL}/patches/{{model}}-correction/{{pair}}.npy",
        sidecar=f"{ABL}/patches/{{model}}-correction/{{pair}}.json",
    log:
        f"{LOGS}/ablation/patches/{{model}}-correction/{{pair}}.log",
    benchmark:
        f"{BENCH}/ablation/patches/{{model}}-correction/{{pair}}.tsv"
    wildcard_constraints:
        model=r"(momentum|velocity)-stride\d+-\d+epochs",
    conda:
        "../envs/qs.yaml"
    threads: resources_of("train")["threads"]
    resources:
        **job_resources("train"),
    params:
        patch=config["train"]["patch"],
        stride=lambda w: w.model.split("-stride")[1].split("-")[0],
        field=lambda w: w.model.split("-")[0],
        threshold=config["train"]["background_threshold"],
        device=config["train"]["device"],
        lddmm=lddmm_args(),
    shell:
        "OMP_NUM_THREADS={threads} qs correction-patches --model {input.model:q} --moving {input.moving:q} "
        "--target {input.target:q} --momentum {input.momentum:q} --pair {wildcards.pair:q} --patch {params.patch:q} "
        "--stride {params.stride:q} --threshold {params.threshold:q} --field {params.field:q} {params.lddmm:q} "
        "--device {params.device:q} --out {output.npy:q} > {log:q} 2>&1"


rule ablation_train_correction:
    input:
        patches=lambda w: expand(f"{ABL}/patches/{w.model}-correction/{{pair}}.npy", pair=TRAIN_PAIRS),
        init=(
            [f"{ABL}/models/{{model}}/prediction/model.safetensors"]
            if config["train"]["correction_init"] == "prediction"
            else []
        ),
    output:
        model=f"{ABL}/models/{{model}}/correction/model.safetensors",
        loss=f"{ABL}/models/{{model}}/correction/loss.tsv",
    log:
        f"{LOGS}/ablation/train/{{model}}/correction.log",
    benchmark:
        f"{BENCH}/ablation/train/{{model}}/correction.tsv"
    wildcard_constraints:
        model=r"(momentum|velocity)-stride\d+-\d+epochs",
    conda:
        "../envs/qs.yaml"
    threads: resources_of("train")["threads"]
    resources:
        **job_resources("train"),
    params:
        args=lambda w: ablation_train_args("correction", w.model),
        trained_on=trained_on_args,
        init=lambda w, input: ["--init", input.init[0]] if input.init else [],
        correction_init=config["train"]["correction_init"],
        out=lambda w, output: os.path.dirname(output.model),
    shell:
        "OMP_NUM_THREADS={threads} qs train {input.patches:q} --kind correction {params.args:q} {params.trained_on:q} "
        "{params.init:q} --out {params.out:q} > {log:q} 2>&1"


rule ablation_predict:
    input:
        model=lambda w: ablation_model(w.variant, "prediction"),
        correction=lambda w: [ablation_model(w.variant, "correction")] if ABLATION[w.variant]["correction"] else [],
        moving=pair_image("moving"),
        target=pair_image("target", TARGET_CONTRAST),
        labels=pair_labels("moving"),
    output:
        **registration_outputs(f"{ABL}/predict/{{variant}}", momentum=False),
    log:
        f"{LOGS}/ablation/predict/{{variant}}/{{pair}}.log",
    benchmark:
        f"{BENCH}/ablation/predict/{{variant}}/{{pair}}.tsv"
    wildcard_constraints:
        variant=VARIANT_PATTERN,
    conda:
        "../envs/qs.yaml"
    threads: resources_of("predict")["threads"]
    resources:
        **job_resources("predict"),
    params:
        labels=labels_flag,
        correct=lambda w, input: ["--correct", input.correction[0]] if input.correction else [],
        samples=lambda w: ABLATION[w.variant]["samples"],
        batch_size=config["predict"]["batch_size"],
        lddmm=lddmm_args(),
        device=config["predict"]["device"],
        seed=config["seed"],
        out=lambda w, output: os.path.dirname(output.warp),
    shell:
        "OMP_NUM_THREADS={threads} qs predict --model {input.model:q} {params.correct:q} --samples {params.samples:q} "
        "--moving {input.moving:q} --target {input.target:q} {params.labels:q} --batch-size {params.batch_size:q} "
        "{params.lddmm:q} --device {params.device:q} --seed {params.seed:q} --out {params.out:q} > {log:q} 2>&1"


rule ablation_evaluate:
    input:
        unpack(ablation_evaluation_inputs),
    output:
        errors=f"{ABL}/evaluate/{{pair}}/deformation_error.npz",
        detj=f"{ABL}/evaluate/{{pair}}/detj.tsv",
        overlap=f"{ABL}/evaluate/{{pair}}/overlap.tsv",
        timing=f"{ABL}/evaluate/{{pair}}/timing.tsv",
    log:
        f"{LOGS}/ablation/evaluate/{{pair}}.log",
    benchmark:
        f"{BENCH}/ablation/evaluate/{{pair}}.tsv"
    conda:
        "../envs/qs.yaml"
    threads: resources_of("evaluate")["threads"]
    resources:
        **job_resources("evaluate"),
    params:
        methods=ablation_evaluation_args,
        lddmm=lambda w, input: os.path.dirname(input.lddmm),
        out=lambda w, output: os.path.dirname(output.errors),
    shell:
        "qs evaluate-pair --pair {wildcards.pair:q} --lddmm {params.lddmm:q} {params.methods:q} --mask {input.mask:q} "
        "--out {params.out:q} > {log:q} 2>&1"


rule ablation_table:
    input:
        pairs=expand(f"{ABL}/evaluate/{{pair}}/deformation_error.npz", pair=TEST_PAIRS),
        losses=ablation_losses()[1],
    output:
        tsv=f"{R}/report/ablation.tsv",
        png=report(
            f"{R}/report/ablation.png",
            caption="../report/ablation.rst",
            category="Ablation",
        ),
    log:
        f"{LOGS}/ablation/table.log",
    benchmark:
        f"{BENCH}/ablation/table.tsv"
    conda:
        "../envs/qs.yaml"
    threads: 1
    resources:
        **job_resources("evaluate", threads=1),
    params:
        pairs=lambda w, input: [os.path.dirname(p) for p in input.pairs],
        variants=json.dumps(list(ABLATION.values())),
        losses=ablation_losses()[0],
        patch=config["train"]["patch"],
        dropout=config["train"]["dropout"],
        out=lambda w, output: os.path.dirname(output.tsv),
    shell:
        "qs ablation {params.pairs:q} --variants-json {params.variants:q} {params.losses:q} --patch {params.patch:q} "
        "--dropout {params.dropout:q} --out {params.out:q} > {log:q} 2>&1"
