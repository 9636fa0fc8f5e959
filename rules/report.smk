"""The report: contract tables, figures and summary.md under results/report/."""


rule report:
    input:
        pairs=expand(f"{R}/evaluate/{{pair}}/timing.tsv", pair=TEST_PAIRS),
        losses=[
            f"{R}/models/{m}/loss.tsv"
            for m in ("prediction", "correction")
            if not REUSE and (m == "prediction" or USES_CORRECTION)
        ],
        example=lambda w: [v for k, v in report_example().items() if k != "pair"],
        provenance=rules.provenance.output,
        affine_qc=expand(preprocessed("{subject}", "preprocess.json"), subject=SUBJECTS),
        label_names=[config["evaluate"]["label_names"]] if config["evaluate"]["label_names"] else [],
    output:
        tables=[f"{R}/report/{name}" for name in REPORT_FILES],
        overlap=report(f"{R}/report/target_overlap.png", caption="../report/target_overlap.rst", category="Evaluation"),
        error=report(
            f"{R}/report/deformation_error.png", caption="../report/deformation_error.rst", category="Evaluation"
        ),
        example=report(f"{R}/report/example_pair.png", caption="../report/example_pair.rst", category="Evaluation"),
        loss=report(f"{R}/report/loss.png", caption="../report/training_loss.rst", category="Training"),
        accuracy_time=report(
            f"{R}/report/accuracy_time.png", caption="../report/accuracy_time.rst", category="Evaluation"
        ),
        label_overlap=report(
            f"{R}/report/label_overlap.png", caption="../report/label_overlap.rst", category="Evaluation"
        ),
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{BENCH}/report.tsv"
    conda:
        "../envs/qs.yaml"
    threads: 1
    resources:
        **job_resources("evaluate", threads=1),
    params:
        pair_dirs=lambda w, input: [os.path.dirname(p) for p in input.pairs],
        losses=lambda w, input: [
            a for p in input.losses for a in ("--loss", f"{os.path.basename(os.path.dirname(p))}={p}")
        ],
        example=lambda w: [a for k, v in report_example().items() for a in ("--example", f"{k}={v}")],
        provenance=lambda w, input: os.path.dirname(input.provenance[0]),
        # which cohort and run trained the models (models.*: from their metadata)
        models=[a for kind, origin in MODEL_ORIGIN.items() for a in ("--provenance", f"{kind} model={origin}")],
        field=config["train"]["field"],
        labels=report_label_flags,
        out=lambda w, output: os.path.dirname(output.overlap),
    shell:
        "qs report {params.pair_dirs:q} {params.losses:q} {params.example:q} --provenance-dir {params.provenance:q} {params.models:q} --field {params.field:q} --affine-qc {input.affine_qc:q} {params.labels:q} --out {params.out:q} > {log:q} 2>&1"
