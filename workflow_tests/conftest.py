"""Shared fixtures: small real NIfTI images and sheets written to tmp_path, the report tests' results tree, and
the guard that fails the test run when it writes into the checkout's own results/ or .snakemake/."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from qs.io import save_array, write_text
from qs.report.build import build_report
from qs.report.methods import method_folder
from qs.report.pair import evaluate_pair
from qs.transforms import write_ants_displacement

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


# --- the checkout's own results/ and .snakemake/: never changed by a test ---------------------------------

#: what a user's run in the checkout writes: the default config's results folder and Snakemake's metadata
CHECKOUT_OUTPUTS = ("results", ".snakemake")


def _entry(path: Path) -> tuple:
    st = path.lstat()
    if stat.S_ISDIR(st.st_mode):
        return ("dir",)
    if stat.S_ISLNK(st.st_mode):
        return ("link", os.readlink(path))
    return ("file", st.st_size, st.st_mtime_ns)


def checkout_state(root=ROOT) -> dict[str, tuple]:
    """Every entry of ``root``'s results/ and .snakemake/ (the folders included, when they exist): relative
    path -> ("dir",), ("link", target) or ("file", size, mtime_ns)."""
    state = {}
    for top in CHECKOUT_OUTPUTS:
        base = Path(root) / top
        if not base.exists() and not base.is_symlink():
            continue
        state[top] = _entry(base)
        if state[top] != ("dir",):
            continue
        for folder, dirs, files in os.walk(base):  # links are listed, not followed
            for name in dirs + files:
                path = Path(folder, name)
                try:
                    state[str(path.relative_to(root))] = _entry(path)
                except FileNotFoundError:  # removed while being listed: left out
                    pass
    return state


def checkout_changes(before: dict, after: dict) -> list[str]:
    """What differs between two :func:`checkout_state` snapshots, one line per path; [] when nothing does."""
    changes = []
    for path in sorted(before.keys() | after.keys()):
        if path not in after:
            changes.append(f"removed: {path}")
        elif path not in before:
            changes.append(f"appeared: {path}")
        elif before[path] != after[path]:
            changes.append(f"changed: {path} {before[path]} -> {after[path]}")
    return changes


@pytest.fixture(scope="session", autouse=True)
def checkout_left_alone():
    """Fails the test run (an error at the teardown of its last test) when anything under the checkout's own
    results/ or .snakemake/ appeared, disappeared or changed: the tests plan and run in temporary folders
    (``--directory``), so a user's finished run in the checkout survives ``pytest`` unchanged."""
    before = checkout_state()
    yield
    changes = checkout_changes(before, checkout_state())
    assert not changes, (f"the tests changed the checkout's {' and '.join(CHECKOUT_OUTPUTS)} ({ROOT}); "
                         "every snakemake or qs run of a test must work in a temporary folder:\n"
                         + "\n".join(changes[:40]) + (f"\n... {len(changes) - 40} more" if len(changes) > 40 else ""))


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


# --- the report tests' results tree: two test pairs with known errors (see test_report.py) ---------------

SHAPE = (16, 18, 14)
H = 1.5
AFFINE = np.diag([H, H, H, 1.0])
AFFINE[:3, 3] = (-12.0, -14.0, 3.0)
PAIRS = ("sub-01_to_sub-02", "sub-03_to_sub-04")
LDDMM = np.array([0.0, 1.2, 1.6])  # |d| = 2.0 mm
OFFSET = {  # method -> per pair: constant offset from LDDMM (mm), or "fold"
    "predict": [(0.5, 0, 0), (1.5, 0, 0)],
    "predict+correct": [(0, 0, 0.25), (0, 0, 0.25)],
    "predict-mc": ["fold", (0.1, 0, 0)],
}
SECONDS = {"lddmm": 100.0, "syn": 30.0, "predict": 2.0, "predict+correct": 4.0, "predict-mc": 20.0}


def _const(v):
    return np.broadcast_to(np.asarray(v, np.float64)[:, None, None, None], (3, *SHAPE)).copy()


def _fold():
    """A field whose map folds: d phi_0 / d x_0 = 1 - 1.53 at the middle of axis 0."""
    i = np.arange(SHAPE[0], dtype=np.float64)
    d = _const(LDDMM)
    d[0] += -6.0 * np.sin(2 * np.pi * (i - 8) / 16)[:, None, None]
    return d


def tree_labels(shift=0):
    lab = np.zeros(SHAPE, np.int32)
    lab[3:8, 3:15, 3:11] = 1001
    lab[8:13, 3:15, 3:7] = 2035
    lab[8:13, 3:15, 7:11] = 41000
    return np.roll(lab, shift, axis=0)


def _image(shift=0):
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij"))
    img = np.exp(-3 * (g**2).sum(0)) * (1 + 0.3 * np.sin(6 * g[1]))
    return np.roll(img, shift, axis=0).astype(np.float32)


def _method_dir(root, pair, m, disp, labels_shift, summary):
    d = root / ("lddmm" if m == "lddmm" else "syn" if m == "syn" else f"predict/{method_folder(m)}") / pair
    d.mkdir(parents=True)
    if disp is not None:
        write_ants_displacement(disp, AFFINE, d / "warp.nii.gz")
    save_array(tree_labels(labels_shift), AFFINE, d / "warped_labels.nii.gz")
    write_text(json.dumps(summary), d / "summary.json")
    return d


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """The report tests' synthetic results tree (test_report.py, whose docstring gives its known answers; also
    test_provenance.py): the pairs' method folders, the per-pair evaluations and the report."""
    root = tmp_path_factory.mktemp("results")
    save_array(tree_labels(), AFFINE, root / "pre/target_labels.nii.gz")
    save_array(tree_labels(3), AFFINE, root / "pre/moving_labels.nii.gz")
    save_array(_image(), AFFINE, root / "pre/target_T1w.nii.gz")
    save_array(_image(1), AFFINE, root / "pre/moving_T1w.nii.gz")
    pair_dirs, method_dirs = [], {}
    for p, pair in enumerate(PAIRS):
        lddmm = _method_dir(root, pair, "lddmm", _const(LDDMM), 0, {"seconds": SECONDS["lddmm"], "device": "cpu", "threads": 2, "detj_min": 1.0})
        dirs = {"syn": _method_dir(root, pair, "syn", None, 2, {"method": "syn", "seconds": SECONDS["syn"], "threads": 1})}
        for m, offsets in OFFSET.items():
            disp = _fold() if offsets[p] == "fold" else _const(LDDMM + np.asarray(offsets[p]))
            # the summary's det J is wrong on purpose: evaluate_pair must compute its own
            summary = {"device": "cuda:0", "detj_min": 0.9, "detj_max": 1.1}
            summary["time" if m == "predict+correct" else "seconds"] = SECONDS[m]  # tolerant of the key
            dirs[method_folder(m)] = _method_dir(root, pair, m, disp, 1 if m == "predict" else 0, summary)
        save_array(np.ones(SHAPE, np.float32), AFFINE, dirs["predict-mc"] / "uncertainty.nii.gz")
        out = root / "evaluation" / pair
        evaluate_pair(pair, out, lddmm_dir=lddmm, method_dirs=dirs, target_labels=root / "pre/target_labels.nii.gz",
                      moving_labels=root / "pre/moving_labels.nii.gz")
        pair_dirs.append(out)
        method_dirs[pair] = (lddmm, dirs)
    # the prediction network's loss.tsv as written now, the correction's as older runs wrote it (no val_zero_l1)
    write_text("epoch\ttrain_l1\tval_l1\tval_zero_l1\tseconds\n1\t0.9\t1.0\t0.9\t3.0\n2\t0.5\t0.6\t0.9\t3.1\n"
               "3\t0.3\t0.45\t0.9\t3.0\n", root / "models/prediction/loss.tsv")
    write_text("epoch\ttrain_l1\tval_l1\tseconds\n1\t0.9\t1.0\t3.0\n2\t0.5\t0.6\t3.1\n3\t0.3\t0.45\t3.0\n",
               root / "models/correction/loss.tsv")
    example = {"target": root / "pre/target_T1w.nii.gz", "moving": root / "pre/moving_T1w.nii.gz",
               "warp": method_dirs[PAIRS[1]][1]["predict-mc"] / "warp.nii.gz",
               "uncertainty": method_dirs[PAIRS[1]][1]["predict-mc"] / "uncertainty.nii.gz", "pair": PAIRS[1]}
    report = build_report(pair_dirs, root / "report",
                          loss_tsvs={k: root / f"models/{k}/loss.tsv" for k in ("prediction", "correction")},
                          example=example, provenance={"config": "tiny.yaml", "qs": "0.1.0"})
    return {"root": root, "pairs": pair_dirs, "dirs": method_dirs, "report": report, "example": example}
