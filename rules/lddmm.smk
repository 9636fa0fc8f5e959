"""LDDMM optimization on every pair: training targets (train pairs) and the reference (test pairs)."""


rule lddmm:
    input:
        moving=pair_image("moving"),
        target=pair_image("target"),
        labels=pair_labels("moving"),
    output:
        **registration_outputs(f"{R}/lddmm"),
        energy=f"{R}/lddmm/{{pair}}/energy.tsv",
    params:
        labels=labels_flag,
        lddmm=lddmm_args(),
        iterations=config["lddmm"]["iterations"],
        coarse_iterations=config["lddmm"]["coarse_iterations"],
        optimizer=config["lddmm"]["optimizer"],
        similarity=config["lddmm"]["similarity"],
        window=config["lddmm"]["window"],
        device=config["lddmm"]["device"],
        seed=config["seed"],
        out=lambda w, output: os.path.dirname(output.m0),
    log:
        f"{LOGS}/lddmm/{{pair}}.log",
    benchmark:
        f"{BENCH}/lddmm/{{pair}}.tsv"
    threads: resources_of("lddmm")["threads"]
    resources:
        **job_resources("lddmm"),
    conda:
        "../envs/qs.yaml"
    shell:
        "OMP_NUM_THREADS={threads} qs lddmm --moving {input.moving} --target {input.target} {params.labels} "
        "--out {params.out} --iterations {params.iterations} "
        "--coarse-iterations {params.coarse_iterations} --optimizer {params.optimizer} "
        "--similarity {params.similarity} --window {params.window} {params.lddmm} --device {params.device} "
        "--seed {params.seed} > {log} 2>&1"
