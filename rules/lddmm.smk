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
        device=config["lddmm"]["device"],
        seed=config["seed"],
        out=lambda w, output: os.path.dirname(output.m0),
    log:
        f"{LOGS}/lddmm/{{pair}}.log",
    benchmark:
        f"{BENCH}/lddmm/{{pair}}.tsv"
    threads: resources_of("lddmm")["threads"]
    resources:
        mem_mb=resources_of("lddmm")["mem_mb"],
        runtime=resources_of("lddmm")["runtime"],
        gpu=resources_of("lddmm")["gpu"],
    conda:
        "../envs/qs.yaml"
    shell:
        "OMP_NUM_THREADS={threads} qs lddmm --moving {input.moving} --target {input.target} {params.labels} "
        "--out {params.out} --iterations {params.iterations} {params.lddmm} --device {params.device} "
        "--seed {params.seed} > {log} 2>&1"
