"""Shared fixtures: small real NIfTI images and sheets written to tmp_path."""

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "workflow_tests" / "config" / "tiny.yaml"


def snakemake(*args, cwd):
    """Run the workflow's Snakefile with working directory ``cwd``; ``.output`` is stdout + stderr."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(cwd), *args]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    run.output = run.stdout + run.stderr
    return run


#: the tiny run's results folder: spaces, unicode, quotes and shell syntax that would run commands if a
#: path reached a shell unquoted (they would create files named PWNED*), so every path of every rule is
#: tested quoted in the one end-to-end run
TINY_RESULTS = "rés ults;touch PWNED1;$(touch PWNED2) `touch PWNED3` 'q' \"dq\" || touch PWNED4"


def tiny_args(cwd) -> list[str]:
    """``--configfile`` arguments of the tiny run in ``cwd``: the tiny config and ``cwd/paths.yaml``, which sets
    ``results`` to :data:`TINY_RESULTS` (in a file: the workflow refuses quotes in ``--config`` values)."""
    paths = Path(cwd) / "paths.yaml"
    paths.write_text(yaml.safe_dump({"results": TINY_RESULTS}, allow_unicode=True))
    return ["--configfile", str(TINY), str(paths)]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One uninterrupted run of the whole DAG on the tiny config: (working directory, finished run).

    The results go to ``cwd / TINY_RESULTS``. Shared by the end-to-end test (test_workflow.py) and the
    resume tests (test_resume.py), which only read it, so that CI runs the tiny workflow once for both.
    """
    cwd = tmp_path_factory.mktemp("tiny_run")
    return cwd, snakemake("--cores", "2", *tiny_args(cwd), cwd=cwd)


def planned_jobs(output: str) -> dict[str, int]:
    """Rule -> job count from the first "Job stats" table of a (dry) run's output; {} when nothing is to be done."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.split() == ["job", "count"]:
            jobs = {}
            for row in lines[i + 2:]:
                parts = row.split()
                if len(parts) != 2 or parts[0] == "total":
                    break
                jobs[parts[0]] = int(parts[1])
            return jobs
    return {}



def write_nifti(path, data, affine=None, dtype=None):
    """Write ``data`` as NIfTI (no validation: tests use this to make bad files too)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(data)
    img = nib.Nifti1Image(data if dtype is None else data.astype(dtype), np.eye(4) if affine is None else affine)
    nib.save(img, str(path))
    return path


def blob(shape=(12, 14, 10), seed=0):
    """A smooth positive 'brain' image: an ellipsoid with some texture."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r = np.sqrt((grid**2).sum(0))
    return ((r < 0.8) * (100 + 20 * rng.standard_normal(shape))).astype(np.float32)


@pytest.fixture
def subject_files(tmp_path):
    """Factory: write a subject's T1 (and labels) under tmp_path; returns paths."""

    def make(name, *, labels=True, shape=(12, 14, 10)):
        t1 = write_nifti(tmp_path / name / f"{name}_T1w.nii.gz", blob(shape))
        out = {"t1": t1}
        if labels:
            lab = np.zeros(shape, np.int32)
            lab[2:6, 2:8, 2:6] = 2035
            lab[6:10, 2:8, 2:6] = 1001
            out["labels"] = write_nifti(tmp_path / name / f"{name}_labels.nii.gz", lab)
        return out

    return make
