"""Resume: a run killed with SIGKILL, started again with the same command, ends as an uninterrupted run.

One real run of the tiny workflow is killed three times, at three stages (during LDDMM optimization, during
training after the first epoch's checkpoint, during prediction), each time with everything in its process
group (Snakemake and its jobs), and started again with the same command after each kill. The last start
completes. Each start reruns exactly the jobs that were killed and those not yet run; no job that finished
is run again; training continues from its checkpoint; and the results equal those of an uninterrupted run
(``tiny_run``, shared with test_workflow.py): report tables identical apart from wall times, images within
float tolerance, network weights bit-identical.

Also fast unit tests of the two pieces that make "the same command" work: the stale lock release
(qs.runlock) and the removal of a killed writer's temporary file (qs.io.atomic_path).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, TINY, TINY_RESULTS, planned_jobs
from qs.io import atomic_path
from qs.runlock import record_lock_owner, release_stale_lock

COMMAND = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--cores", "2",
           "--configfile", str(TINY)]
STAGE_TIMEOUT = 900  # s, per start; the whole tiny run takes 2-7 minutes on a shared 2-core machine

#: wall-clock columns of the report tables: the only values allowed to differ from the uninterrupted run
TIMING_COLUMNS = {"timing.tsv": ["seconds"], "accuracy_time.tsv": ["median_s"]}


def _any_file(folder: Path, pattern: str) -> bool:
    return folder.is_dir() and any(folder.glob(pattern))


def _lddmm_running(res: Path) -> bool:
    """An LDDMM job has started (Snakemake opened its log) at least a second ago: inside ``qs lddmm``."""
    logs = [p for p in (res / "logs" / "lddmm").glob("*.log")] if (res / "logs" / "lddmm").is_dir() else []
    return any(time.time() - p.stat().st_mtime > 1.0 for p in logs)


#: (stage, the rules the kill should hit (one of them), condition on results/ that says such a job is running)
KILLS = [
    ("LDDMM", {"lddmm"}, _lddmm_running),
    ("training", {"train_prediction"}, lambda res: (res / "models" / "prediction" / "checkpoint.pt").exists()),
    ("prediction", {"predict", "predict_mc"}, lambda res: _any_file(res / "logs" / "predict", "*/*.log")),
]


# --- Snakemake's output: which jobs a start ran, finished, left incomplete ---------------------------------

_BLOCK = re.compile(r"^(?:local)?rule (\w+):\n((?:    .*\n)+)", re.M)
_FINISHED = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)", re.M)


def parse_jobs(output: str) -> tuple[dict, set]:
    """The jobs a Snakemake start began, ``{jobid: (rule, wildcards, outputs)}``, and the ids it finished."""
    started = {}
    for rule, body in _BLOCK.findall(output):
        fields = dict(line.strip().split(": ", 1) for line in body.splitlines() if ": " in line)
        if "jobid" in fields:
            outputs = tuple(fields["output"].split(", ")) if "output" in fields else ()
            started[int(fields["jobid"])] = (rule, fields.get("wildcards", ""), outputs)
    finished = {int(j) for j, _ in _FINISHED.findall(output)}
    return started, finished


def job_name(job) -> str:
    rule, wildcards, _ = job
    return f"{rule}[{wildcards}]" if wildcards else rule


def mtimes(res: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in res.rglob("*") if p.is_file()}


def start(cwd: Path, log: Path) -> subprocess.Popen:
    """The workflow's command in its own process group (session), output to ``log``."""
    with open(log, "w") as fh:
        return subprocess.Popen([*COMMAND, "--directory", str(cwd)], cwd=ROOT, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)


def kill_when(proc: subprocess.Popen, condition, res: Path, log: Path, what: str) -> None:
    """SIGKILL the whole process group of ``proc`` as soon as ``condition(res)`` holds."""
    deadline = time.monotonic() + STAGE_TIMEOUT
    while not condition(res):
        if proc.poll() is not None:
            pytest.fail(f"the run ended (status {proc.returncode}) before {what}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no {what} within {STAGE_TIMEOUT} s:\n{log.read_text()[-4000:]}")
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # nothing of the group survives (Snakemake runs its jobs in its own process group)
    for _ in range(100):
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("processes of the killed run survive the SIGKILL of its process group")


@pytest.fixture(scope="module")
def reference(tiny_run):
    cwd, run = tiny_run
    if run.returncode != 0:
        pytest.fail(f"the uninterrupted tiny run failed:\n{run.output[-4000:]}")
    return cwd / TINY_RESULTS


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """The tiny run, killed at each stage of KILLS and started again after each kill; the last start completes.

    Returns the results folder and one record per start: its output, the jobs it began and finished, the
    files (and their mtimes) present right after its kill, and the rule and stage the kill hit.
    """
    cwd = tmp_path_factory.mktemp("killed_run")
    res = cwd / "results"
    starts = []
    for n, (stage, rules, running) in enumerate(KILLS):
        log = cwd / f"start{n}.log"
        t0 = time.monotonic()
        kill_when(start(cwd, log), running, res, log, f"{stage} was running")
        output = log.read_text()
        started, finished = parse_jobs(output)
        starts.append(dict(stage=stage, rules=rules, output=output, started=started, finished=finished,
                           files=mtimes(res), seconds=time.monotonic() - t0))
    log = cwd / f"start{len(KILLS)}.log"
    t0 = time.monotonic()
    with open(log, "w") as fh:
        last = subprocess.run([*COMMAND, "--directory", str(cwd)], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                              timeout=STAGE_TIMEOUT)
    output = log.read_text()
    assert last.returncode == 0, output[-6000:]
    started, finished = parse_jobs(output)
    starts.append(dict(stage=None, rules=set(), output=output, started=started, finished=finished,
                       files=mtimes(res), seconds=time.monotonic() - t0))
    for n, s in enumerate(starts):  # shown with -s, and in the report of a failure
        ran = sorted(job_name(s["started"][j]) for j in s["started"])
        killed = sorted(job_name(s["started"][j]) for j in set(s["started"]) - s["finished"])
        print(f"start {n} ({s['seconds']:.0f} s), killed during {s['stage']}: ran {ran}; killed {killed}")
    return res, starts


# --- the kill-and-restart sequence ------------------------------------------------------------------------


@pytest.mark.slow
def test_each_start_reruns_only_what_was_incomplete(killed_run):
    res, starts = killed_run
    done = {}  # (rule, wildcards) -> the start that finished it
    for n, s in enumerate(starts):
        began = {j: s["started"][j][:2] for j in s["started"]}
        finished = {began[j] for j in s["finished"] if j in began}
        again = {job for job in began.values() if job in done}
        assert not again, f"start {n} ran jobs again that finished in an earlier start: {again}"
        if n:
            prev = starts[n - 1]
            unfinished = [prev["started"][j] for j in set(prev["started"]) - prev["finished"]]
            # a job killed after its last output was in place (Snakemake had cleared its incomplete mark, not yet
            # logged "Finished") is complete: left alone, it counts as done in the start that was killed
            complete = {job[:2] for job in unfinished
                        if job[2] and all(res.parent / f in prev["files"] for f in job[2])}
            killed = {job[:2] for job in unfinished} - complete
            assert killed <= set(began.values()), f"start {n} did not rerun the killed jobs {killed - set(began.values())}"
            done.update({job: n - 1 for job in complete - set(began.values())})
            assert "qs: removed the lock of a Snakemake run that was killed" in s["output"], s["output"][:3000]
        if s["rules"]:  # the kill hit a job of the stage it aimed at
            killed_rules = {began[j][0] for j in set(began) - s["finished"]}
            assert s["rules"] & killed_rules, f"the kill during {s['stage']} hit {killed_rules}, not {s['rules']}"
        else:  # the last start, not killed, finished every job it began
            assert set(began) <= s["finished"], sorted(job_name(s["started"][j]) for j in set(began) - s["finished"])
        done.update({job: n for job in finished})
    # every job of the DAG finished exactly once over the four starts
    planned = planned_jobs(starts[0]["output"])
    assert planned and sum(planned.values()) == len(done), (planned, sorted(done))
    assert {rule for rule, _ in done} == set(planned)
    assert {job for job, n in done.items() if n == len(starts) - 1} >= {("all", "")}


@pytest.mark.slow
def test_outputs_of_finished_jobs_are_left_alone(killed_run):
    res, starts = killed_run
    final = starts[-1]["files"]
    for n, s in enumerate(starts[:-1]):
        outputs = {res.parent / f for j in s["finished"] if j in s["started"] for f in s["started"][j][2]}
        assert outputs, n
        changed = sorted(str(p) for p in outputs if p in s["files"] and final.get(p) != s["files"][p])
        assert not changed, f"outputs of jobs finished before kill {n} were rewritten: {changed}"


@pytest.mark.slow
def test_kills_leave_no_half_written_output(killed_run):
    res, starts = killed_run
    # every image present right after a kill (or at the end) reads completely
    images = {p for s in starts for p in s["files"] if p.name.endswith(".nii.gz") and not p.name.startswith(".")}
    assert images
    for p in images:
        if p.exists():
            np.asarray(nib.load(str(p)).dataobj)
    # the killed LDDMM jobs' outputs are all there now (written by the rerun)
    first = starts[0]
    killed = [first["started"][j] for j in set(first["started"]) - first["finished"]]
    lddmm_outputs = [res.parent / f for rule, _, outputs in killed if rule == "lddmm" for f in outputs]
    assert lddmm_outputs, f"the first kill hit no LDDMM job: {sorted(job_name(job) for job in killed)}"
    assert all(p.exists() for p in lddmm_outputs), [str(p) for p in lddmm_outputs if not p.exists()]
    assert not [p for p in res.rglob("*.tmp*")], "temporary files of killed writers are left behind"
    again = subprocess.run([*COMMAND, "--directory", str(res.parent), "-n"], cwd=ROOT, capture_output=True, text=True)
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]


@pytest.mark.slow
def test_training_resumes_from_its_checkpoint(killed_run, reference):
    res, starts = killed_run
    n = next(i for i, s in enumerate(starts) if s["stage"] == "training")
    assert any(rule == "train_prediction" for rule, _, _ in starts[n + 1]["started"].values())
    log = (res / "logs" / "train" / "prediction.log").read_text()
    resumed = re.search(r"resuming from checkpoint \S*checkpoint\.pt at epoch (\d+) of (\d+)", log)
    assert resumed and 1 <= int(resumed[1]) <= int(resumed[2]), log
    assert "from scratch" not in log
    for kind in ("prediction", "correction"):
        a = load_file(str(res / "models" / kind / "model.safetensors"))
        b = load_file(str(reference / "models" / kind / "model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{kind} weights differ"
        la = pd.read_csv(res / "models" / kind / "loss.tsv", sep="\t").drop(columns="seconds")
        lb = pd.read_csv(reference / "models" / kind / "loss.tsv", sep="\t").drop(columns="seconds")
        pd.testing.assert_frame_equal(la, lb, check_exact=True)


@pytest.mark.slow
def test_results_equal_an_uninterrupted_run(killed_run, reference):
    res, _ = killed_run
    tables = sorted(p.name for p in (reference / "report").glob("*.tsv"))
    assert {"deformation_error.tsv", "target_overlap.tsv", "timing.tsv"} <= set(tables)
    for name in tables:
        a = pd.read_csv(res / "report" / name, sep="\t", keep_default_na=False)
        b = pd.read_csv(reference / "report" / name, sep="\t", keep_default_na=False)
        drop = TIMING_COLUMNS.get(name, [])
        pd.testing.assert_frame_equal(a.drop(columns=drop), b.drop(columns=drop), check_exact=True, obj=name)
    # summary.md: identical but for the times per pair and the provenance (creation time)
    def sections(path):
        parts = ("\n" + path.read_text()).split("\n## ")
        timed = ("Time per pair", "Accuracy against time", "Provenance")
        return {p.split("\n", 1)[0]: p for p in parts if not p.startswith(timed)}
    assert sections(res / "report" / "summary.md") == sections(reference / "report" / "summary.md")
    # every image of the run: LDDMM momenta and warps, predicted warps, uncertainty, pre-processed images...
    images = sorted(p.relative_to(reference) for p in reference.rglob("*.nii.gz"))
    assert len(images) > 40 and any(p.parts[0] == "predict" for p in images)
    for rel in images:
        a = np.asarray(nib.load(str(res / rel)).dataobj, dtype=np.float64)
        b = np.asarray(nib.load(str(reference / rel)).dataobj, dtype=np.float64)
        assert a.shape == b.shape and np.allclose(a, b, rtol=1e-5, atol=1e-6 * max(np.abs(b).max(), 1e-12)), rel


# --- the pieces, fast -------------------------------------------------------------------------------------


def _fake_lock(workdir: Path) -> Path:
    locks = workdir / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text("results/x\n")
    (locks / "0.output.lock").write_text("results/y\n")
    return locks


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_of_a_killed_run_is_released(tmp_path):
    locks = _fake_lock(tmp_path)
    owner = locks / f"qs-owner.{socket.gethostname()}.1.json"
    owner.write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "start": None}))
    said = release_stale_lock(tmp_path)
    assert said and "killed" in said
    assert not list(locks.iterdir())


def test_lock_of_a_live_run_or_another_host_or_without_owner_is_kept(tmp_path):
    # a live owner: this process
    live = tmp_path / "live"
    locks = _fake_lock(live)
    record_lock_owner(live)
    assert release_stale_lock(live) is None and (locks / "0.input.lock").exists()
    # a pid reused by another process (other start time) is not the owner any more
    record = next(locks.glob("qs-owner.*.json"))
    record.write_text(json.dumps({**json.loads(record.read_text()), "start": "1"}))
    if Path(f"/proc/{os.getpid()}/stat").exists():
        assert release_stale_lock(live) and not (locks / "0.input.lock").exists()
    else:  # no start times to compare: a live pid keeps its lock
        assert release_stale_lock(live) is None and (locks / "0.input.lock").exists()
    # another host's run, however dead its pid is here
    other = tmp_path / "other"
    locks = _fake_lock(other)
    (locks / "qs-owner.elsewhere.1.json").write_text(json.dumps({"host": "elsewhere", "pid": _dead_pid()}))
    assert release_stale_lock(other) is None and (locks / "0.input.lock").exists()
    # no owner record: Snakemake killed before it started jobs, or a lock we know nothing about
    bare = tmp_path / "bare"
    locks = _fake_lock(bare)
    assert release_stale_lock(bare) is None and (locks / "0.output.lock").exists()
    assert release_stale_lock(tmp_path / "none") is None


def test_a_killed_writers_temporary_file_is_removed_by_the_next_writer(tmp_path):
    script = ("import os, signal, sys\nfrom qs.io import atomic_path\n"
              "with atomic_path(sys.argv[1]) as tmp:\n"
              "    open(tmp, 'w').write('half')\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    target = tmp_path / "m0.nii.gz"
    proc = subprocess.run([sys.executable, "-c", script, str(target)])
    assert proc.returncode == -signal.SIGKILL
    assert not target.exists() and len(list(tmp_path.glob(".m0.*.tmp.nii.gz"))) == 1
    keep = [tmp_path / ".m0.x.tmp.a.nii.gz", tmp_path / ".m0x.abc.tmp.nii.gz", tmp_path / "m0.a.nii.gz"]
    for p in keep:  # other files' temporaries and files are not touched
        p.write_text("other")
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m0.nii.gz", *(p.name for p in keep)])
