"""Provenance: the config, package versions, device, seed and workflow commit behind results/ (qs.provenance)."""

import json

from qs.provenance import FILES as PROVENANCE_FILES
from qs.provenance import resources as config_resources
from qs.provenance import settings as config_settings

PROVENANCE = f"{R}/provenance"


rule provenance:
    output:
        **{key: f"{PROVENANCE}/{name}" for key, name in PROVENANCE_FILES.items()},
    log:
        f"{LOGS}/provenance.log",
    benchmark:
        f"{BENCH}/provenance.tsv"
    conda:
        "../envs/qs.yaml"
    threads: 1
    resources:
        **job_resources("evaluate", threads=1),
    params:
        # Every setting: a config change reruns this rule (and the report that reads it), no other rule.
        settings=json.dumps(config_settings(config), sort_keys=True),
        # Resources change no result: a function of the output, which Snakemake does not count
        # among the params that trigger a rerun, so changing them reruns nothing.
        resources=lambda w, output: json.dumps(config_resources(config), sort_keys=True),
        workflow=workflow.basedir,
        out=lambda w, output: os.path.dirname(output.summary),
    shell:
        "qs provenance --config-json {params.settings:q} --resources-json {params.resources:q} "
        "--workflow-dir {params.workflow:q} --out {params.out:q} > {log:q} 2>&1"
