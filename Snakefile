"""qs: Quicksilver (fast predictive LDDMM registration) for cohort studies.

Run the demo:   snakemake --cores all
Your cohort:    snakemake --cores all --configfile config.yaml   (the top-level config.yaml: set the cohort)
The cost first: qs plan --configfile config.yaml

Settings, lowest first (qs.settings.run_config): the schema's defaults (qs/schemas/config.schema.yaml; every key
in config/README.md) < the preset (`preset: cpu | gpu`, config/presets/) < the demo's budget config/demo.yaml
(the demo cohort only: cohort.source demo, the default) < the user's --configfile / --config.
results/provenance/config.yaml shows the effective settings of a run.
"""

import os
import sys

from snakemake.utils import min_version

from qs.plan import hand_config_to_plan
from qs.runlock import record_lock_owner, release_stale_lock
from qs.settings import run_config

min_version("9.0")

# The preset (config/presets/), then the demo's CPU budget for the demo cohort only, under the user's settings
# (qs.settings.run_config). Jobs spawned on a cluster get the same --configfile/--config, so they derive the same
# config.
DEMO_CONFIG = workflow.source_path("config/demo.yaml")
config.update(run_config(config, os.path.join(workflow.basedir, "config", "presets"), DEMO_CONFIG))


report: "report/workflow.rst"


# Resume: the same command restarts a killed run (qs/runlock.py releases the lock it left behind).
if workflow.is_main_process and (released := release_stale_lock()):
    print(f"qs: {released}", file=sys.stderr)


onstart:
    record_lock_owner()


include: "rules/common.smk"


# qs plan (qs/plan.py) reads the run's effective config, defaults filled in, from its dry run (the main process
# only: a variable of qs plan's own dry run, which no cluster job needs).
if workflow.is_main_process:
    hand_config_to_plan(config)


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
