"""The report: contract tables, figures and summary.md under results/report/."""


rule report:
    input:
        pairs=expand(f"{R}/evaluate/{{pair}}/timing.tsv", pair=TEST_PAIRS),
        losses=[f"{R}/models/{m}/loss.tsv" for m in ("prediction", "correction") if m == "prediction" or config["train"]["correction"]],
        example=lambda w: [v for k, v in report_example().items() if k != "pair"],
        provenance=rules.provenance.output,
    output:
        tables=[f"{R}/report/{name}" for name in REPORT_FILES],
        overlap=report(f"{R}/report/target_overlap.png", caption="../report/target_overlap.rst", category="Evaluation"),
        error=report(f"{R}/report/deformation_error.png", caption="../report/deformation_error.rst", category="Evaluation"),
        example=report(f"{R}/report/example_pair.png", caption="../report/example_pair.rst", category="Evaluation"),
        loss=report(f"{R}/report/loss.png", caption="../report/training_loss.rst", category="Training"),
    params:
        pair_dirs=lambda w, input: " ".join(os.path.dirname(p) for p in input.pairs),
        losses=lambda w, input: " ".join(f"--loss {os.path.basename(os.path.dirname(p))}={p}" for p in input.losses),
        example=lambda w: " ".join(f"--example {k}={v}" for k, v in report_example().items()),
        provenance=lambda w, input: f"--provenance-dir {os.path.dirname(input.provenance[0])}",
        field=config["train"]["field"],
        out=lambda w, output: os.path.dirname(output.overlap),
    log:
        f"{LOGS}/report.log",
    conda:
        "../envs/qs.yaml"
    shell:
        "qs report {params.pair_dirs} {params.losses} {params.example} {params.provenance} --field {params.field} --out {params.out} > {log} 2>&1"
