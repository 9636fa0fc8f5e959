"""Glue shared by the workflow files: config validation, the cohort table, pairs, resources."""

import hashlib
import json
import os
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

import pandas as pd

from qs.cohort import SUBJECT_PATTERN as SUBJECT_ID
from qs.cohort import check_config_paths, cohort_tables, ordered_pairs
from qs.io import QsInputError
from qs.report.ablation import model_key, variants as ablation_variants
from qs.reuse import atlas_identity, check_model_fits, trained_on
from qs.settings import group_args
from qs.syn import variant_specs
from qs.validate import config_error

try:
    validate(config, schema="../qs/schemas/config.schema.yaml")
except WorkflowError as exc:
    # the workflow's own config.yaml is read through Snakemake's source cache: show its name
    sources = [os.path.basename(f) if "source-cache" in str(f) else f for f in workflow.configfiles]
    message = config_error(exc, sources)
    if message is None:
        raise
    sys.exit(message)

R = config["results"]
# Every job's shell: bash's strict mode (Snakemake's own default prefix) and the size limit of the qs
# commands' inputs (qs.io.open_nifti), an integer from the validated config.
shell.prefix(f"set -euo pipefail; export QS_MAX_VOXELS={int(config['limits']['max_voxels'])}; ")
LOGS = f"{R}/logs"
BENCH = f"{R}/benchmarks"
DEMO = f"{R}/demo"


def cohort_settings():
    """The keyword arguments of ``qs.cohort.cohort_tables`` from config (also ``qs cohort-tables``' flags)."""
    c, p = config["cohort"], config["pairs"]
    return dict(
        source=c["source"],
        sheet=c["sheet"],
        bids=c["bids"],
        label_suffixes=c["bids_label_suffixes"],
        test_fraction=c["test_fraction"],
        seed=config["seed"],
        demo_root=DEMO,
        demo_subjects_n=c["demo"]["subjects"],
        mode=p["mode"],
        max_train_pairs=p["max_train_pairs"],
        max_test_pairs=p["max_test_pairs"],
        train_pairs_optional=bool(config["models"]["prediction"]),  # reused models need no training pairs
        reference_pairs=config["pairs"]["reference"],  # false: no test pairs (a run that only registers)
    )


def cohort_args():
    """``qs cohort-tables``' arguments: :func:`cohort_settings` as flags (empty paths and False left out, True: the
    flag alone)."""
    flags = []
    for key, value in cohort_settings().items():
        if key == "reference_pairs":
            flags += [] if value else ["--no-reference-pairs"]
            continue
        if value == "" or value is False:
            continue
        flag = "--" + {"demo_subjects_n": "demo_subjects"}.get(key, key).replace("_", "-")
        flags += [flag, *value] if isinstance(value, list) else [flag] if value is True else [flag, value]
    return flags


def tables_digest(*tables):
    """sha256 of tables' TSV text."""
    return hashlib.sha256("".join(t.to_csv(sep="\t", index=False) for t in tables).encode()).hexdigest()


# Snakemake hands the --config arguments to every job it spawns (cluster jobs) inside a shell command,
# rendered with Python's repr, not shell quoting: a value with a quote would end the quoting there.
for arg in workflow.config_settings.config_args or []:
    if "'" in str(arg):
        sys.exit(
            f"qs: error: --config {arg}: a value with a quote (') cannot be given on the command line, since "
            "Snakemake passes --config to cluster jobs without shell quoting; put it in a config file (--configfile)"
        )

try:
    check_config_paths(config)
    subjects, pairs, cohort_notes = cohort_tables(**cohort_settings())
    validate(subjects, schema="../qs/schemas/subjects.schema.yaml")
except QsInputError as exc:
    sys.exit(f"qs: error: {exc}")
for note in cohort_notes:
    print(f"qs: warning: {note}", file=sys.stderr)
subjects = subjects.set_index("subject", drop=False)
pairs = pairs.set_index("pair", drop=False)
SUBJECTS = list(subjects.index)
HAS_T2 = bool((subjects["t2"] != "").all())
HAS_LABELS = bool((subjects["labels"] != "").all())
if config["train"]["target_contrast"] == "T2" and not HAS_T2:
    sys.exit(
        "qs: error: config: train.target_contrast is T2 (multimodal) but the cohort has no t2 image for every subject"
    )


#: the SyN baselines of evaluate.syn_variants: name -> settings (qs.syn.variant_specs; None: syn-quick)
try:
    _ev = config["evaluate"]
    SYN_VARIANTS = variant_specs(
        _ev["syn_variants"], metric=_ev["syn_metric"], radius=_ev["syn_radius"], iterations=_ev["syn_iterations"]
    )
except QsInputError as exc:
    sys.exit(f"qs: error: {exc}")

MODELS = {kind: config["models"][kind] for kind in ("prediction", "correction")}
REUSE = bool(MODELS["prediction"])  # models of an earlier run: no LDDMM on training pairs, no training
REGISTER = config["register"]
USES_CORRECTION = bool(MODELS["correction"]) if REUSE else config["train"]["correction"]
#: whether the networks predict a momentum (momentum or velocity: shot) or the deformation itself (no m0 file)
PREDICTS_MOMENTUM = config["train"]["field"] != "deformation"
#: whether the run has the predict+refine method (LDDMM evaluations started from the prediction)
REFINES = config["predict"]["refine_iterations"] + config["predict"]["refine_coarse_iterations"] > 0
#: the register block's method; auto follows the models: the correction network where there is one, else the
#: refinement where the run has one, else the prediction alone
REGISTER_METHOD = (
    REGISTER["method"]
    if REGISTER["method"] != "auto"
    else "predict+correct" if USES_CORRECTION else "predict+refine" if REFINES else "predict"
)


def check_models():
    """Refuse, before any job, models.* that do not fit this config (qs.reuse.check_model_fits); returns the
    one-line description of the run that trained each given model."""
    if MODELS["correction"] and not REUSE:
        raise QsInputError("config: models.correction is set but models.prediction is empty; give both models")
    if REUSE and config["train"]["correction"] and not MODELS["correction"]:
        raise QsInputError(
            "config: models.prediction is set and train.correction is true, but models.correction "
            "is empty; give the correction model too, or set train.correction: false"
        )
    if not PREDICTS_MOMENTUM and config["train"]["correction"]:
        raise QsInputError(
            "config: train.field is deformation (the network predicts the displacement itself) but "
            "train.correction is true; a deformation has no correction network: set train.correction: false"
        )
    if not PREDICTS_MOMENTUM and REFINES:
        raise QsInputError(
            "config: predict.refine_iterations / refine_coarse_iterations are set but train.field is "
            "deformation: the refinement optimises a momentum; set both to 0 or train a momentum or velocity model"
        )
    if not PREDICTS_MOMENTUM and REGISTER["pairs"] != "none":
        raise QsInputError(
            f"config: register.pairs is {REGISTER['pairs']} but train.field is deformation: the cohort's "
            "registrations need a shot (diffeomorphic) transform; train a momentum or velocity model"
        )
    if REGISTER["pairs"] != "none" and REGISTER_METHOD == "predict+correct" and not USES_CORRECTION:
        raise QsInputError(
            "config: register.method is predict+correct but this run has no correction network "
            "(train.correction: false); use register.method: auto, predict or predict+refine"
        )
    if not config["pairs"]["reference"] and REGISTER["pairs"] == "none":
        raise QsInputError(
            "config: pairs.reference is false (no reference pairs, no evaluation) and register.pairs is none: "
            "the run would register nothing; set register.pairs (atlas-to-image or image-to-image)"
        )
    if REGISTER["pairs"] != "none" and REGISTER_METHOD == "predict+refine" and not REFINES:
        raise QsInputError(
            "config: register.method is predict+refine but predict.refine_iterations and "
            "refine_coarse_iterations are both 0; set them (e.g. 10 and 10) or use register.method: predict"
        )
    return {kind: trained_on(check_model_fits(path, kind, config)) for kind, path in MODELS.items() if path}


try:
    MODEL_ORIGIN = check_models()
except QsInputError as exc:
    sys.exit(f"qs: error: {exc}")


def model_file(kind):
    """The ``kind`` (prediction, correction) model this run uses: ``models.<kind>`` or the one it trains."""
    return os.path.abspath(MODELS[kind]) if MODELS[kind] else f"{R}/models/{kind}/model.safetensors"


def cohort_description():
    """What the models of this run are trained on, as recorded in them (``qs train --cohort``)."""
    c = config["cohort"]
    if c["source"] == "demo":
        return f"demo ({c['demo']['subjects']} subjects at {c['demo']['spacing']} mm, seed {config['seed']})"
    return f"{c['source']} {os.path.abspath(c[c['source']])}"


def resources_of(stage):
    """Resources of a stage from config (threads, mem_mb, runtime, gpu, partition)."""
    return config[stage]["resources"]


def job_resources(stage, threads=None):
    """The ``resources:`` of a stage's jobs, all from ``config[stage]["resources"]``; ``threads``: a
    single-threaded rule's own (then ``cpus_per_task`` is that, not the stage's threads).

    ``mem_mb`` and ``runtime`` grow with the attempt, so that with ``--retries N`` a job
    killed for memory or wall time is retried with 2x, 3x ...; ``cpus_per_task`` is the
    rule's threads; ``gpu`` becomes ``--gpus`` on SLURM; ``slurm_partition`` is set only
    when the stage names a partition (else the profile's or the cluster's default).
    """
    r = resources_of(stage)
    out = {
        "mem_mb": lambda wildcards, attempt: r["mem_mb"] * attempt,
        "runtime": lambda wildcards, attempt: r["runtime"] * attempt,
        "cpus_per_task": r["threads"] if threads is None else threads,
        "gpu": r["gpu"],
    }
    if r["partition"]:
        out["slurm_partition"] = r["partition"]
    return out


def subject_file(kind):
    """Input function: the subject's raw file of ``kind`` (t1, t2, labels), [] if absent."""

    def get(wildcards):
        path = subjects.loc[wildcards.subject, kind]
        return [path] if path else []

    return get


def preprocess_flags(wildcards):
    """Params function: :func:`optional_files_flags`, and ``--no-orientation-search`` when
    ``preprocess.orientation_search`` is off (nothing when on: the default of ``qs preprocess``)."""
    off = [] if config["preprocess"]["orientation_search"] else ["--no-orientation-search"]
    return optional_files_flags(wildcards) + off


def optional_files_flags(wildcards):
    """Params function: ``["--t2", PATH, "--labels", PATH]`` for the files the subject has.

    Flag builders return lists of arguments: the rules render them with ``:q``, which quotes
    each argument on its own, so that a path with spaces or shell characters stays one argument.
    """
    return [
        arg
        for kind in ("t2", "labels")
        if subjects.loc[wildcards.subject, kind]
        for arg in (f"--{kind}", subjects.loc[wildcards.subject, kind])
    ]


def atlas_source(kind):
    """The atlas file of ``kind`` (t1, mask, labels, t2) the working grid is built from."""
    if config["atlas"]["source"] == "builtin":
        name = {"t1": "T1w", "mask": "mask", "labels": "labels", "t2": "T2w"}[kind]
        return f"{R}/atlas/source/atlas_{name}.nii.gz"
    return config["atlas"][kind]


def atlas_grid_outputs():
    """Named outputs of the working-grid rule: the atlas on the working grid."""
    out = {"t1": f"{R}/atlas/atlas_T1w.nii.gz", "mask": f"{R}/atlas/atlas_mask.nii.gz", "grid": f"{R}/atlas/grid.json"}
    for kind, name in (("labels", "labels"), ("t2", "T2w")):
        if atlas_source(kind):
            out[kind] = f"{R}/atlas/atlas_{name}.nii.gz"
    return out


def preprocessed(subject, kind):
    return f"{R}/preprocessed/{subject}/{subject}_{kind}"


PAIRS = list(pairs.index)
TRAIN_PAIRS = list(pairs.index[pairs["split"] == "train"])
TEST_PAIRS = list(pairs.index[pairs["split"] == "test"])
CONTRAST = {"T1": "T1w", "T2": "T2w"}
TARGET_CONTRAST = CONTRAST[config["train"]["target_contrast"]]  # the networks' target image (T2w: multimodal)


def image_of(subject, contrast="T1w"):
    """A subject's (or the atlas') image on the working grid."""
    if subject == "atlas":
        return f"{R}/atlas/atlas_{contrast}.nii.gz"
    return preprocessed(subject, f"{contrast}.nii.gz")


def labels_of(subject):
    """A subject's (or the atlas') label image on the working grid."""
    return f"{R}/atlas/atlas_labels.nii.gz" if subject == "atlas" else preprocessed(subject, "labels.nii.gz")


def pair_image(role, contrast="T1w"):
    """Input function: the ``role`` (moving/target) image of ``{pair}``."""
    return lambda w: image_of(pairs.loc[w.pair, role], contrast)


def pair_labels(role):
    """Input function: the ``role`` labels of ``{pair}``; [] when the cohort has none."""
    return lambda w: [labels_of(pairs.loc[w.pair, role])] if HAS_LABELS else []


def labels_flag(wildcards, input):
    """Params function: ``["--labels", PATH]`` for the rule's ``labels`` input, or []."""
    return ["--labels", input.labels[0]] if input.labels else []


def correction_flags(wildcards, input):
    """Params function: ``qs predict``'s correction flags when the rule has a ``correction`` model input, else []
    (``--corrections`` from ``predict.corrections``; ``--correction-stride`` from ``predict.correction_stride``,
    0: the prediction's)."""
    if not input.correction:
        return []
    flags = ["--correct", input.correction[0], "--corrections", config["predict"]["corrections"]]
    stride = config["predict"]["correction_stride"]
    return flags + (["--correction-stride", stride] if stride else [])


def prediction_flags(stride_flag="--stride", mirror=True):
    """How the networks predict (config ``predict.stride``, 0: the models' training stride, and, with
    ``mirror``, ``predict.mirror_axes``), as flags of ``qs predict`` or, with
    ``stride_flag="--predict-stride"``, of ``qs correction-patches`` (the correction network learns the
    residuals of the same prediction)."""
    stride, axes = config["predict"]["stride"], config["predict"]["mirror_axes"] if mirror else []
    flags = [stride_flag, stride] if stride else []
    if axes:
        flags += ["--mirror-axes", *axes]
    return flags


def lddmm_args():
    """The LDDMM kernel and shooting settings as arguments (qs.settings group ``kernel``: --alpha ... --time-steps)."""
    return group_args(config, "kernel")


def train_args(kind):
    """Arguments of ``qs train`` for the ``kind`` network, all from config (``T1->T2``: ``:q`` keeps the '>')."""
    modality = "T1->T2" if config["train"]["target_contrast"] == "T2" else "T1->T1"
    return [
        *group_args(config, "network"),
        *group_args(config, "seed"),
        "--spacing",
        config["grid"]["spacing"],
        "--modality",
        modality,
        *lddmm_args(),
        *group_args(config, "preprocess"),
        "--atlas",
        atlas_identity(config),
    ]


def trained_on_args(wildcards, output):
    """``qs train``'s record of the cohort and run (absolute paths): a function of the output, which Snakemake
    does not count among the params that trigger a rerun, so that a moved project folder trains nothing again."""
    return ["--cohort", cohort_description(), "--run", os.path.abspath(R)]


def registration_outputs(folder, momentum=True):
    """Named outputs shared by LDDMM and the predicted registrations of ``{pair}`` (``m0`` with ``momentum``)."""
    out = {"m0": f"{folder}/{{pair}}/m0.nii.gz"} if momentum else {}
    out |= {
        "warp": f"{folder}/{{pair}}/warp.nii.gz",
        "warped": f"{folder}/{{pair}}/warped.nii.gz",
        "summary": f"{folder}/{{pair}}/summary.json",
    }
    if HAS_LABELS:
        out["warped_labels"] = f"{folder}/{{pair}}/warped_labels.nii.gz"
    return out


def predicted_methods():
    """Folder names of the predicted methods this config runs, in report order."""
    methods = ["predict"]
    if USES_CORRECTION:
        methods.append("predict-correct")
    if REFINES:
        methods.append("predict-refine")
    if config["predict"]["samples"] > 1 and config["train"]["dropout"] > 0:
        methods.append("predict-mc")
    return methods


def refine_flags(wildcards):
    """Params function: ``qs predict``'s refinement flags (settings group ``refine``) for the predict-refine
    method, else [] (so that the other methods' jobs do not depend on them)."""
    return group_args(config, "refine") if wildcards.method == "predict-refine" else []


def syn_args(wildcards):
    """``qs syn``'s flags of the ``{variant}`` (:data:`SYN_VARIANTS`): ``syn``'s settings (``evaluate.syn_metric``,
    ``syn_radius``, ``syn_iterations``), a named setting's own (its keys defaulting to ``syn``'s); none for
    ``syn-quick`` (ANTsPy's defaults)."""
    spec = SYN_VARIANTS[wildcards.variant]
    if spec is None:
        return []
    return ["--metric", spec["metric"], "--radius", spec["radius"], "--iterations", *spec["iterations"]]


def syn_runs_on(variant, pair):
    """Whether the SyN setting ``variant`` runs on the reference pair ``pair``: syn-quick on every one, the others
    on the first evaluate.syn_max_pairs (0: every one)."""
    limit = config["evaluate"]["syn_max_pairs"]
    return variant == "syn-quick" or not limit or TEST_PAIRS.index(pair) < limit


def evaluation_inputs(w):
    """Everything ``qs evaluate-pair`` reads for one test pair, by method folder."""
    out = {"lddmm": f"{R}/lddmm/{w.pair}/warp.nii.gz", "mask": f"{R}/atlas/atlas_mask.nii.gz"}
    for m in predicted_methods():
        out[m] = f"{R}/predict/{m}/{w.pair}/warp.nii.gz"
    for v in SYN_VARIANTS:
        if syn_runs_on(v, w.pair):
            out[v] = f"{R}/{v}/{w.pair}/summary.json"
    if HAS_LABELS:
        out["target_labels"] = labels_of(pairs.loc[w.pair, "target"])
        out["moving_labels"] = labels_of(pairs.loc[w.pair, "moving"])
    return out


def exclude_flags():
    """``--exclude-labels ID ...`` of ``qs evaluate-pair`` and ``qs report`` (evaluate.exclude_labels), or []."""
    excluded = config["evaluate"]["exclude_labels"]
    return ["--exclude-labels", *excluded] if excluded else []


def label_flags(input):
    """``qs evaluate-pair``'s label arguments from its inputs, and the labels the evaluation leaves out."""
    flags = []
    for key in ("target_labels", "moving_labels"):
        if key in input.keys():
            flags += [f"--{key.replace('_', '-')}", input[key]]
    return flags + exclude_flags()


def report_label_flags(w, input):
    """``qs report``'s label arguments: the ids the evaluation left out and the label names' TSV."""
    names = ["--label-names", input.label_names[0]] if input.label_names else []
    return exclude_flags() + names


def evaluation_args(w, input):
    """Arguments of ``qs evaluate-pair`` built from its inputs (``--method NAME=FOLDER`` ...)."""
    methods = [m for m in (*SYN_VARIANTS, *predicted_methods()) if m in input.keys()]
    flags = [arg for m in methods for arg in ("--method", f"{m}={os.path.dirname(input[m])}")]
    return flags + label_flags(input)


def report_example():
    """The example pair of the report: the first test pair, with MC uncertainty when run."""
    pair = TEST_PAIRS[0]
    method = "predict-mc" if "predict-mc" in predicted_methods() else predicted_methods()[-1]
    out = {
        "pair": pair,
        "target": image_of(pairs.loc[pair, "target"]),
        "moving": image_of(pairs.loc[pair, "moving"]),
        "warp": f"{R}/predict/{method}/{pair}/warp.nii.gz",
        "warped": f"{R}/predict/{method}/{pair}/warped.nii.gz",
    }
    if method == "predict-mc":
        out["uncertainty"] = f"{R}/predict/predict-mc/{pair}/uncertainty.nii.gz"
    return out


def registration_table():
    """The ``register`` block's pairs (columns pair, moving, target; index pair): none, the atlas to every
    subject, or ordered pairs of subjects of the whole cohort (a seeded sample of ``register.max_pairs``)."""
    mode = REGISTER["pairs"]
    if mode == "atlas-to-image":
        combos = [("atlas", s) for s in SUBJECTS]
    elif mode == "image-to-image":
        combos = ordered_pairs(sorted(SUBJECTS), REGISTER["max_pairs"], [config["seed"], 2])
    else:
        combos = []
    table = pd.DataFrame(combos, columns=["moving", "target"])
    table.insert(0, "pair", [f"{m}_to_{t}" for m, t in combos])
    return table.set_index("pair", drop=False)


registrations = registration_table()


def registration_input(role, kind):
    """Input function of the ``register`` rule: the ``role`` (moving/target) image's file of ``kind``: ``grid``
    (on the working grid, what the networks see), ``affine`` (its pre-processing affine; none for the atlas),
    ``image`` (its own T1, the outputs' space), ``labels`` (its own labels; [] when it has none)."""

    def get(w):
        name = registrations.loc[w.registration, role]
        contrast = TARGET_CONTRAST if role == "target" else "T1w"
        if name == "atlas":
            labels = [f"{R}/atlas/atlas_labels.nii.gz"] if atlas_source("labels") else []
            return {"grid": image_of(name, contrast), "affine": [], "image": image_of(name), "labels": labels}[kind]
        labels = [subjects.loc[name, "labels"]] if HAS_LABELS else []
        return {
            "grid": image_of(name, contrast),
            "affine": [preprocessed(name, "affine.mat")],
            "image": subjects.loc[name, "t1"],
            "labels": labels,
        }[kind]

    return get


def get_final_output():
    """Targets of the default target: everything the implemented stages produce."""
    out = [f"{R}/cohort/subjects.tsv", f"{R}/cohort/pairs.tsv"]
    out += [preprocessed(s, "T1w.nii.gz") for s in SUBJECTS]
    out += [f"{R}/lddmm/{p}/summary.json" for p in (TEST_PAIRS if REUSE else PAIRS)]
    out += [f"{R}/registrations/{p}/summary.json" for p in registrations.index]
    # pairs.reference false: no reference pairs, no evaluation report (the registrations and their QC)
    out += [f"{R}/report/{name}" for name in REPORT_FILES] if TEST_PAIRS else []
    out += [f"{R}/provenance/provenance.json"]
    return out


REPORT_FILES = [
    "deformation_error.tsv",
    "target_overlap.tsv",
    "timing.tsv",
    "affine_qc.tsv",
    "label_overlap.tsv",
    "accuracy_time.tsv",
    "summary.md",
]


def preprocess_outputs():
    """Named outputs of the pre-processing rule; T2 and labels when the cohort has them."""
    out = {
        "t1": preprocessed("{subject}", "T1w.nii.gz"),
        "affine": preprocessed("{subject}", "affine.mat"),
        "qc_json": preprocessed("{subject}", "preprocess.json"),
    }
    if HAS_T2:
        out["t2"] = preprocessed("{subject}", "T2w.nii.gz")
    if HAS_LABELS:
        out["labels"] = preprocessed("{subject}", "labels.nii.gz")
    return out


# --- the ablation target (rules/ablation.smk, qs.report.ablation) ---

ABL = f"{R}/ablation"
try:
    ABLATION = ablation_variants(config)
except QsInputError as exc:
    ABLATION, ABLATION_ERROR = {}, str(exc)
else:
    ABLATION_ERROR = ""
#: a variant's name (qs.report.ablation.variant_name) and its network's (model_key)
VARIANT_PATTERN = r"(momentum|velocity|deformation)-stride\d+-\d+epochs(-mc\d+)?(-corrected)?"
MODEL_PATTERN = r"(momentum|velocity|deformation)-stride\d+-\d+epochs"


def ablation_model(variant, kind):
    return f"{ABL}/models/{model_key(ABLATION[variant])}/{kind}/model.safetensors"


def ablation_train_args(kind, model):
    """``train_args(kind)`` with the epochs of the network ``model`` (``{field}-stride{S}-{E}epochs``)."""
    args = list(train_args(kind))
    args[args.index("--epochs") + 1] = int(model.rsplit("-", 1)[1].removesuffix("epochs"))
    return args


def ablation_losses():
    """``--loss VARIANT=TSV`` of every network each variant uses, and the files."""
    flags, files = [], []
    for name, v in ABLATION.items():
        kinds = ["prediction", "correction"] if v["correction"] else ["prediction"]
        for kind in kinds:
            tsv = f"{ABL}/models/{model_key(v)}/{kind}/loss.tsv"
            flags += ["--loss", f"{name}={tsv}"]
            files.append(tsv)
    return flags, files


def ablation_outputs(w):
    """The ablation's table and figure; the config's errors about the ablation, raised only when it is asked for."""
    if ABLATION_ERROR:
        raise WorkflowError(f"qs: error: {ABLATION_ERROR}")
    if not TRAIN_PAIRS:
        raise WorkflowError("qs: error: snakemake ablation trains networks, but this run has no training pairs")
    return {"tsv": f"{R}/report/ablation.tsv", "png": f"{R}/report/ablation.png"}


def ablation_evaluation_inputs(w):
    out = {"lddmm": f"{R}/lddmm/{w.pair}/warp.nii.gz", "mask": f"{R}/atlas/atlas_mask.nii.gz"}
    out |= {name: f"{ABL}/predict/{name}/{w.pair}/summary.json" for name in ABLATION}
    if HAS_LABELS:
        out["target_labels"] = labels_of(pairs.loc[w.pair, "target"])
        out["moving_labels"] = labels_of(pairs.loc[w.pair, "moving"])
    return out


def ablation_evaluation_args(w, input):
    flags = [arg for name in ABLATION for arg in ("--method", f"{name}={os.path.dirname(input[name])}")]
    return flags + label_flags(input)
