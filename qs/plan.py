"""What a run costs before it runs (``qs plan``): jobs per stage from Snakemake's dry run and an order of magnitude of
CPU and GPU hours from per-job figures measured on this project.

The figures (seconds of one job, 1 CPU thread unless its stage has more, on the 2 mm working grid; docs/lpba40.md,
docs/performance.md, docs/learning.md, docs/scale.md) are for a 2-core CPU. The stages that scale with the
working grid's voxels are scaled by ``(2 / grid.spacing)^3``. No GPU was measured: a job whose resources ask for a
GPU is costed as its CPU time divided by an assumed speed-up (docs/scale.md's assumptions), marked as such.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

#: GPU speed-ups over one CPU thread: assumptions (docs/scale.md), not measured on this project
GPU_SPEEDUP = {"lddmm": 30.0, "train_prediction": 50.0, "train_correction": 50.0, "predict": 20.0,
               "predict_mc": 20.0, "register": 20.0, "correction_patches": 20.0}

#: seconds of the small jobs (start-up dominated; the measured ones from docs/scale.md and docs/performance.md)
FIXED = {"demo": (60, "assumed"), "builtin_atlas": (10, "assumed"), "working_grid": (10, "assumed"),
         "cohort_tables": (5, "assumed"), "validate_subject": (5, "assumed"),
         "preprocess": (15, "measured: ~15 s per subject at 2 mm, orientation search included"),
         "patches": (5, "assumed"), "evaluate_pair": (10, "assumed"), "provenance": (10, "assumed"),
         "report": (60, "assumed")}

#: seconds of one RK4 step of one LDDMM energy evaluation on the 2 mm grid, 1 thread (the demo's 42 s for
#: 3 steps x (10 + 30/8) evaluations, docs/lpba40.md; 247 s for 5 steps x 40 evaluations, docs/learning.md)
LDDMM_STEP_S = 1.0
#: patches of one pair at 2 mm and stride 14 (90x108x90 grid: 6x7x6 windows, ~60% not background; assumption)
PATCHES_PER_PAIR = 150
#: training seconds per patch and epoch: the dilated networks at 16 features (~17 s per epoch for 10 pairs on
#: 2 cores, docs/learning.md); the paper's encoder-decoder at 64 features (1.3-5 h per epoch per 10,000 patches
#: on 2 cores, docs/scale.md)
TRAIN_S_PER_PATCH = {"dilated": (0.011, 16), "dilated-match": (0.011, 16), "quicksilver": (1.0, 64)}
#: a prediction of a pair at 2 mm, 1 thread: (seconds apart from the network, seconds per network pass over the
#: pair); the dilated-match net at stride 12: 3.5 s with one pass, 10.8 s with 8 mirror passes (docs/lpba40.md);
#: the encoder-decoder: assumed 60 s per pass on a CPU (not measured)
PREDICT_S = {"dilated": (2.5, 1.05), "dilated-match": (2.5, 1.05), "quicksilver": (2.5, 60.0)}


@dataclass
class Job:
    rule: str
    wildcards: dict = field(default_factory=dict)
    threads: int = 1
    gpu: int = 0
    inputs: int = 0


def parse_jobs(output: str) -> list[Job]:
    """The jobs of a dry run's output (``snakemake -n``): rule, wildcards, threads, GPUs, number of inputs."""
    jobs: list[Job] = []
    for line in output.splitlines():
        head = re.match(r"^(?:local)?rule (\w+):$", line)
        if head:
            jobs.append(Job(head.group(1)))
            continue
        if not jobs or not line.startswith("    "):
            continue
        key, _, value = line.strip().partition(": ")
        if key == "wildcards":
            jobs[-1].wildcards = dict(kv.split("=", 1) for kv in value.split(", ") if "=" in kv)
        elif key == "threads":
            jobs[-1].threads = int(value)
        elif key == "input":
            jobs[-1].inputs = len(value.split(", "))
        elif key == "resources":
            found = re.search(r"(?:^|, )gpu=(\d+)", value)
            jobs[-1].gpu = int(found.group(1)) if found else 0
    return [j for j in jobs if j.rule != "all"]


def _voxels(config) -> float:
    return (2.0 / float(config["grid"]["spacing"])) ** 3


def _lddmm_s(config, iterations, coarse) -> float:
    return LDDMM_STEP_S * config["lddmm"]["time_steps"] * (iterations + coarse / 8) * _voxels(config)


def _predict_s(config, method: str) -> float:
    fixed, per_pass = PREDICT_S[config["train"]["architecture"]]
    passes = 2 ** len(config["predict"].get("mirror_axes", []))
    base = (fixed + per_pass * passes) * _voxels(config)
    if method == "predict-correct":
        return base * (1 + 1.5 * config["predict"]["corrections"])  # ~46 s per round beside 30 s (docs/scale.md)
    if method == "predict-refine":
        p = config["predict"]
        return base + _lddmm_s(config, p["refine_iterations"], p["refine_coarse_iterations"])
    return base


def _syn_s(config, variant: str) -> float:
    if variant == "syn-quick":
        return 9.0  # docs/lpba40.md: 8.8 s per pair at 2 mm
    ev = config["evaluate"]
    iterations = ev["syn_iterations"]
    for spec in ev["syn_variants"]:
        if isinstance(spec, dict) and spec.get("name") == variant:
            iterations = spec.get("iterations", iterations)
    return 500.0 * sum(iterations) / 220 * _voxels(config)  # syn (100x70x50): ~500 s per 2 mm pair (docs/lpba40.md)


def job_seconds(job: Job, config: dict) -> tuple[float, str]:
    """Seconds of one job on a CPU at its threads, and the basis of the figure."""
    rule, t = job.rule, config["train"]
    if rule in FIXED:
        return FIXED[rule]
    if rule == "lddmm":
        lddmm = config["lddmm"]
        return _lddmm_s(config, lddmm["iterations"], lddmm["coarse_iterations"]), "measured per RK4 step and evaluation"
    if rule in ("train_prediction", "train_correction"):
        per_patch, features = TRAIN_S_PER_PATCH[t["architecture"]]
        patches = PATCHES_PER_PAIR * _voxels(config) * (14 / t["stride"]) ** 3 * max(job.inputs, 1)
        seconds = t["epochs"] * patches * per_patch * (t["features"] / features) ** 2
        return seconds, "measured per epoch (dilated); 1.3-5 h per 10,000 patches (encoder-decoder, CPU)"
    if rule == "correction_patches":
        return _predict_s(config, "predict"), "one prediction"
    if rule == "predict":
        return _predict_s(config, job.wildcards.get("method", "predict")), "measured (demo settings); encoder-decoder assumed"
    if rule == "predict_mc":
        per = 2.0 if t["architecture"] != "quicksilver" else 6.0
        return 10 + per * config["predict"]["samples"] * _voxels(config), "measured: 5 samples ~20 s"
    if rule == "register":
        method = config["register"]["method"]
        method = {"predict+correct": "predict-correct", "predict+refine": "predict-refine"}.get(method, "predict")
        if config["register"]["method"] == "auto":
            refines = config["predict"]["refine_iterations"] + config["predict"]["refine_coarse_iterations"] > 0
            method = ("predict-correct" if (t["correction"] or config["models"]["correction"]) else
                      "predict-refine" if refines else "predict")
        return 25 + _predict_s(config, method), "measured: 60 s with predict (both directions)"
    if rule == "syn":
        return _syn_s(config, job.wildcards.get("variant", "syn")), "measured: syn-quick 9 s, syn ~500 s"
    return 30.0, "assumed"


@dataclass
class Row:
    rule: str
    jobs: int = 0
    cpu_h: float = 0.0
    gpu_h: float = 0.0
    core_h: float = 0.0
    all_cpu_h: float = 0.0  # the same jobs on a CPU (the GPU jobs' CPU figures)
    basis: str = ""


def estimate(jobs: list[Job], config: dict) -> list[Row]:
    """Per rule: jobs, CPU hours (job time), GPU hours (assumed speed-ups), core hours (job time x threads)."""
    rows: dict[str, Row] = {}
    for job in jobs:
        seconds, basis = job_seconds(job, config)
        row = rows.setdefault(job.rule, Row(job.rule, basis=basis))
        row.jobs += 1
        row.all_cpu_h += seconds / 3600
        if job.gpu and job.rule in GPU_SPEEDUP:
            row.gpu_h += seconds / GPU_SPEEDUP[job.rule] / 3600
            row.basis = f"CPU figure / {GPU_SPEEDUP[job.rule]:g} (GPU speed-up assumed, not measured)"
        else:
            row.cpu_h += seconds / 3600
            row.core_h += seconds * job.threads / 3600
    return list(rows.values())


def _hours(h: float) -> str:
    return "" if h == 0 else f"{h:.2g}" if h < 10 else f"{h:,.0f}"


def format_plan(rows: list[Row], config: dict, cores: int) -> str:
    """The plan as a table: jobs, CPU and GPU hours per rule, totals and a wall-clock order of magnitude."""
    lines = [f"qs plan: preset {config['preset']}, grid {config['grid']['spacing']} mm, "
             f"cohort {config['cohort']['source']}; order-of-magnitude estimates (see docs/scale.md)", "",
             f"{'rule':<20} {'jobs':>6} {'CPU h':>8} {'GPU h':>8}  basis"]
    for r in rows:
        lines.append(f"{r.rule:<20} {r.jobs:>6} {_hours(r.cpu_h):>8} {_hours(r.gpu_h):>8}  {r.basis}")
    jobs, cpu, gpu, core = (sum(getattr(r, k) for r in rows) for k in ("jobs", "cpu_h", "gpu_h", "core_h"))
    lines.append(f"{'total':<20} {jobs:>6} {_hours(cpu) or '0':>8} {_hours(gpu) or '0':>8}")
    lines.append("")
    wall = core / max(cores, 1) + gpu
    lines.append(f"CPU: {cpu:.2g} h of job time ({core:.2g} core-h); on {cores} cores about {wall:.2g} h of wall time"
                 + (f", the GPU hours on one GPU included" if gpu else ""))
    if gpu:
        everything = sum(r.all_cpu_h for r in rows)
        lines.append(f"The same run without a GPU (every job on one CPU thread's figures): about {everything:,.0f} CPU h")
        lines.append("GPU hours are CPU figures divided by assumed speed-ups (LDDMM 30x, training 50x, prediction 20x); "
                     "no GPU was measured: check results/benchmarks/ of a first small run.")
    elif config["preset"] == "gpu":
        lines.append("preset gpu without GPU resources: the paper's settings on CPUs; expect the hours above.")
    return "\n".join(lines)


#: the environment variable naming the file where the workflow writes its effective config for :func:`plan`
PLAN_CONFIG = "QS_PLAN_CONFIG"


def hand_config_to_plan(config: dict) -> None:
    """Called by the Snakefile: write the effective ``config`` (JSON) to ``$QS_PLAN_CONFIG`` when :func:`plan`'s
    dry run set it; nothing otherwise."""
    path = os.environ.get(PLAN_CONFIG)
    if path:
        with open(path, "w") as f:
            json.dump(config, f)


def default_snakefile() -> Path:
    """The workflow's Snakefile: ./Snakefile, else the one beside this package (a checkout)."""
    here = Path("Snakefile")
    return here if here.exists() else Path(__file__).resolve().parents[1] / "Snakefile"


def plan(*, snakefile=None, configfiles=(), config_args=(), directory=None, targets=(), cores=None) -> str:
    """Dry-run the workflow (``snakemake -n``) with these arguments and return :func:`format_plan`'s text.

    The workflow writes its effective config (preset and defaults filled in) to ``$QS_PLAN_CONFIG`` on a dry run.
    Raises RuntimeError with Snakemake's output when the dry run fails.
    """
    snakefile = Path(snakefile) if snakefile else default_snakefile()
    with tempfile.TemporaryDirectory() as tmp:
        config_json = os.path.join(tmp, "config.json")
        cmd = [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(snakefile), "--cores", "1024"]  # threads as declared
        if directory:
            cmd += ["--directory", str(directory)]
        if configfiles:
            cmd += ["--configfile", *map(str, configfiles)]
        if config_args:
            cmd += ["--config", *config_args]
        cmd += list(targets)
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, PLAN_CONFIG: config_json})
        output = done.stdout + done.stderr
        if done.returncode != 0 or not os.path.exists(config_json):
            raise RuntimeError(output[-4000:])
        with open(config_json) as f:
            config = json.load(f)
    jobs = parse_jobs(output)
    return format_plan(estimate(jobs, config), config, cores or os.cpu_count() or 1)
