"""The cluster profile on a real SLURM scheduler: the tiny workflow through ``snakemake --profile profiles/slurm``.

Needs a reachable SLURM cluster (``sinfo`` answers) and snakemake-executor-plugin-slurm; without
them the test skips, so ``pytest`` on a laptop passes. ``.ci/run`` brings up a one-node cluster
(``.ci/slurm-up.sh``: all CPUs and one fake ``gpu`` gres) and sets ``QS_REQUIRE_SLURM=1``, which
turns the skip into a failure. On a multi-node cluster set ``QS_SLURM_WORKDIR`` to a folder on the
shared file system (the default, pytest's tmp folder, is node-local).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

TINY = ROOT / "workflow_tests" / "config" / "tiny.yaml"
REPORT_FILES = ("deformation_error.tsv", "target_overlap.tsv", "timing.tsv", "summary.md")
GPU_STAGES = ("train",)  # given gpu: 1 here; their rules must get a GPU from SLURM
GPU_RULES = ("train_prediction", "correction_patches", "train_correction")
SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+) \(log: (\S+)\)")


def _slurm_missing():
    """Why the SLURM test cannot run here, or None when a cluster answers."""
    if not shutil.which("sbatch"):
        return "no sbatch on PATH (install SLURM or run .ci/run, which brings up a one-node cluster)"
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return 'snakemake-executor-plugin-slurm is not installed (pip install -e ".[slurm]")'
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo timed out: no SLURM controller reachable"
    if states.returncode != 0:
        return f"no SLURM cluster reachable (sinfo: {states.stderr.strip()[:200]})"
    if not {s.strip("*~#") for s in states.stdout.split()} & {"idle", "mix", "alloc", "comp"}:
        return f"no SLURM node is up (sinfo states: {states.stdout.split()})"
    return None


@pytest.fixture(scope="module")
def slurm():
    reason = _slurm_missing()
    if reason:
        if os.environ.get("QS_REQUIRE_SLURM") == "1":
            pytest.fail(f"QS_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)


@pytest.fixture
def workdir(tmp_path):
    shared = os.environ.get("QS_SLURM_WORKDIR")
    if not shared:
        yield tmp_path
        return
    Path(shared).mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="qs-slurm-", dir=shared))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def scontrol_job(jobid):
    """``scontrol show job`` as a dict (jobs stay visible for MinJobAge after they end)."""
    out = subprocess.run(["scontrol", "-o", "show", "job", jobid], capture_output=True, text=True).stdout
    return dict(field.split("=", 1) for field in out.split() if "=" in field)


@pytest.mark.slow
def test_tiny_workflow_runs_on_slurm(slurm, workdir):
    config = yaml.safe_load(TINY.read_text())
    for stage in GPU_STAGES:
        config[stage]["resources"]["gpu"] = 1
    (workdir / "slurm.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [
        sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
        "--profile", str(ROOT / "profiles" / "slurm"), "--configfile", "slurm.yaml",
        # squeue: works without SLURM accounting (sacct needs it); keep the logs of successful jobs to check them
        "--slurm-status-command", "squeue", "--slurm-keep-successful-logs",
        "--slurm-init-seconds-before-status-checks", "2",
        # two subjects (pairs) per grouped SLURM job, and (tiny's jobs all use one thread) one CPU per
        # group job: the 4 subjects run as 2 jobs side by side on a two-CPU node
        "--group-components", "subjects=2", "syn=2", "evaluate=2", "--resources", "cpus_per_task=1", "mem_mb=4000",
    ]
    start = time.monotonic()
    run = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=1200)
    seconds = time.monotonic() - start
    output = run.stdout + run.stderr
    (workdir / "snakemake.log").write_text(output)
    print(f"tiny workflow on SLURM: {seconds:.0f} s")
    assert run.returncode == 0, output[-6000:]

    res = workdir / "results"
    for name in REPORT_FILES:
        assert (res / "report" / name).stat().st_size > 0, name
    assert "Nothing to be done" in subprocess.run([*cmd, "-n"], cwd=workdir, capture_output=True, text=True).stdout

    # every job went through sbatch: one SLURM job id and log per submission
    submitted = SUBMITTED.findall(output)
    assert len(submitted) >= 15, output[-3000:]
    kinds = {}
    for jobid, log in submitted:
        assert Path(log).is_file(), log
        kind = Path(log).relative_to(workdir / ".snakemake" / "slurm_logs").parts[0]
        kinds.setdefault(kind, []).append(jobid)
    # profile groups: validation + pre-processing of 2 subjects per SLURM job, LDDMM + patches per pair
    assert len(kinds.get("group_subjects_preprocess_validate_subject", [])) == 2, sorted(kinds)
    assert len(kinds.get("group_pair_lddmm_patches", [])) + len(kinds.get("group_pair_lddmm", [])) == 4, sorted(kinds)
    assert not any(k in kinds for k in ("rule_validate_subject", "rule_preprocess", "rule_lddmm")), sorted(kinds)
    # the scheduler saw the jobs, with the resources from config
    lddmm = scontrol_job(kinds["group_pair_lddmm_patches"][-1])
    if lddmm:  # still within MinJobAge
        assert lddmm["JobState"] == "COMPLETED" and lddmm["MinMemoryNode"] == f"{config['lddmm']['resources']['mem_mb']}M"
    assert all(f"rule_{rule}" in kinds for rule in GPU_RULES), sorted(kinds)
    gpu_jobs = [scontrol_job(j) for rule in GPU_RULES for j in kinds[f"rule_{rule}"]]
    seen = [j for j in gpu_jobs if j]
    assert seen, "no GPU job visible to scontrol any more (MinJobAge too short?)"
    for job in seen:
        assert job["JobState"] == "COMPLETED", job
        assert "gpu:1" in job.get("TresPerJob", "") + job.get("TresPerNode", ""), job
    if subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True).stdout.split() == ["gpu:1"]:
        # one GPU in the whole cluster (.ci/slurm-up.sh): SLURM must have run the GPU jobs one at a time
        spans = sorted((j["StartTime"], j["EndTime"]) for j in seen)
        assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), spans
    # jobs left Snakemake benchmark files (the per-stage times and memory of docs/scale.md)
    bench = json.dumps(sorted(str(p.relative_to(res)) for p in (res / "benchmarks").rglob("*.tsv")))
    for stage in ("preprocess", "lddmm", "train", "predict", "syn"):
        assert f'"benchmarks/{stage}/' in bench, bench
