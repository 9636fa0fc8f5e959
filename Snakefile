"""qs: Quicksilver (fast predictive LDDMM registration) for cohort studies.

Run the demo:   snakemake --cores all
Your cohort:    snakemake --cores all --config cohort='{source: sheet, sheet: subjects.tsv}'
                (or edit config.yaml; every key is documented in schemas/config.schema.yaml)
"""

from snakemake.utils import min_version

min_version("9.0")


configfile: workflow.source_path("config.yaml")


report: "report/workflow.rst"


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
include: "rules/report.smk"


rule all:
    input:
        get_final_output(),
    default_target: True
