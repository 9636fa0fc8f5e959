"""qs: Quicksilver (fast predictive LDDMM registration) for cohort studies.

Run the demo:   snakemake --cores all
Your cohort:    snakemake --cores all --config cohort='{source: sheet, sheet: subjects.tsv}'
                (or edit config.yaml; every key is documented in qs/schemas/config.schema.yaml)
"""

import sys

from snakemake.utils import min_version

from qs.runlock import record_lock_owner, release_stale_lock

min_version("9.0")


configfile: workflow.source_path("config.yaml")


report: "report/workflow.rst"


# Resume: the same command restarts a killed run (qs/runlock.py releases the lock it left behind).
if workflow.is_main_process and (released := release_stale_lock()):
    print(f"qs: {released}", file=sys.stderr)


onstart:
    record_lock_owner()


include: "rules/common.smk"


wildcard_constraints:
    subject="|".join(SUBJECTS),
    pair="|".join(pairs.index),


include: "rules/data.smk"
include: "rules/preprocess.smk"
include: "rules/lddmm.smk"
include: "rules/train.smk"
include: "rules/predict.smk"
include: "rules/evaluate.smk"
include: "rules/provenance.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        get_final_output(),
