"""qs: Quicksilver (fast predictive LDDMM registration) for cohort studies.

Run the demo:   snakemake --cores all
Your cohort:    snakemake --cores all --configfile my_cohort.yaml   (start from config/cohort.yaml)

Settings: the schema's defaults (qs/schemas/config.schema.yaml: every key, its default and meaning) under the
user's --configfile / --config. The demo cohort (cohort.source: demo, the default) also takes the demo's CPU
budget, config/demo.yaml, under the user's settings; no other cohort does. results/provenance/config.yaml
shows the effective settings of a run.
"""

import sys

from snakemake.utils import min_version

from qs.runlock import record_lock_owner, release_stale_lock
from qs.settings import with_demo_budget

min_version("9.0")

# The demo's CPU budget applies to the demo cohort only (qs.settings.with_demo_budget); every other cohort runs with
# the schema's defaults and the user's settings. Jobs spawned on a cluster get the same --configfile/--config,
# so they derive the same config.
DEMO_CONFIG = workflow.source_path("config/demo.yaml")
config.update(with_demo_budget(config, DEMO_CONFIG))


report: "report/workflow.rst"


# Resume: the same command restarts a killed run (qs/runlock.py releases the lock it left behind).
if workflow.is_main_process and (released := release_stale_lock()):
    print(f"qs: {released}", file=sys.stderr)


onstart:
    record_lock_owner()


include: "rules/common.smk"


# Patterns, not lists of the cohort's names: Snakemake writes a constraint into every output pattern and scans
# it on every job's file names (a list of 10,000 subjects took ~45% of planning; docs/scale.md). Subject ids are
# validated to this pattern (qs.cohort), and the input functions look names up in the cohort's tables.
wildcard_constraints:
    subject=SUBJECT_ID,
    pair=f"{SUBJECT_ID}_to_{SUBJECT_ID}",
    registration=f"{SUBJECT_ID}_to_{SUBJECT_ID}",


include: "rules/data.smk"
include: "rules/preprocess.smk"
include: "rules/lddmm.smk"
include: "rules/train.smk"
include: "rules/predict.smk"
include: "rules/register.smk"
include: "rules/evaluate.smk"
include: "rules/provenance.smk"
include: "rules/report.smk"
include: "rules/ablation.smk"


rule all:
    default_target: True
    input:
        get_final_output(),
