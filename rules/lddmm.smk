"""LDDMM optimization on every pair: training targets (train pairs) and the reference (test pairs)."""


rule lddmm:
    input:
        moving=pair_image("moving"),
        target=pair_image("target"),
        labels=pair_labels("moving"),
    output:
        **registration_outputs(f"{R}/lddmm"),
        energy=f"{R}/lddmm/{{pair}}/energy.tsv",
    log:
        f"{LOGS}/lddmm/{{pair}}.log",
    benchmark:
        f"{BENCH}/lddmm/{{pair}}.tsv"
    conda:
        "../envs/qs.yaml"
    threads: resources_of("lddmm")["threads"]
    resources:
        **job_resources("lddmm"),
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
    shell:
        "OMP_NUM_THREADS={threads} qs lddmm --moving {input.moving:q} --target {input.target:q} {params.labels:q} "
        "--out {params.out:q} --iterations {params.iterations:q} "
        "--coarse-iterations {params.coarse_iterations:q} --optimizer {params.optimizer:q} "
        "--similarity {params.similarity:q} --window {params.window:q} {params.lddmm:q} --device {params.device:q} "
        "--seed {params.seed:q} > {log:q} 2>&1"
