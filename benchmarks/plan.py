"""Benchmark Snakemake's planning (``snakemake -n``) of large cohorts: wall time, peak memory, jobs.

For each cohort size N (``--subjects``, default 100 1000 10000) the script
writes N tiny distinct NIfTI T1 images (4x4x4 voxels; the sheet validator
refuses one file given to two subjects, even through a link) and a subject
sheet into a temporary folder, a config with that sheet, ``results`` in the
folder, ``pairs.max_train_pairs: 8``, ``pairs.max_test_pairs: 2`` and
``register.pairs: atlas-to-image`` (change them with repeated ``--set
KEY=VALUE``, dotted keys, YAML values, e.g. ``--set register.pairs=none``),
then runs ``snakemake -n`` on the workflow in a subprocess and reports its
wall seconds, peak memory (the child's maximum RSS) and job count (from the
job-stats table), with the ratio of each N's wall time to the smallest N's:
planning time per job is what to read, since the machines are noisy.
``snakemake -n`` reads no image, so the images' size does not matter.

Usage: ``python benchmarks/plan.py [--subjects 100 1000 10000] [--set KEY=VALUE ...] [--keep DIR]``
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = {"pairs.max_train_pairs": 8, "pairs.max_test_pairs": 2, "register.pairs": "atlas-to-image"}


def write_cohort(folder: Path, n: int) -> Path:
    """N tiny distinct T1 images (written once, reused by smaller N) and a sheet of the first N; returns the sheet."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = ["subject\tt1"]
    for k in range(n):
        path = images / f"s{k:05d}_T1w.nii.gz"
        if not path.exists():
            nib.save(nib.Nifti1Image(np.full((4, 4, 4), 1.0 + k, np.float32), np.eye(4)), path)
        rows.append(f"s{k:05d}\t{path}")
    sheet = folder / f"subjects_{n}.tsv"
    sheet.write_text("\n".join(rows) + "\n")
    return sheet


def config_for(folder: Path, sheet: Path, settings: dict) -> Path:
    cfg = {"cohort": {"source": "sheet", "sheet": str(sheet)}, "results": str(folder / "results")}
    for key, value in settings.items():
        node = cfg
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path = folder / f"config_{sheet.stem}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def total_jobs(output: str) -> int:
    """The ``total`` row of Snakemake's first job-stats table."""
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "total" and parts[1].isdigit():
            return int(parts[1])
    return 0


def plan(config: Path, folder: Path) -> tuple[float, float, int]:
    """``snakemake -n`` with ``config``: (wall seconds, peak RSS of the child in MB, jobs)."""
    cmd = [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(ROOT / "Snakefile"), "--directory",
           str(folder), "--configfile", str(config)]
    t0 = time.perf_counter()
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if run.returncode != 0:
        sys.exit(f"snakemake -n failed ({config}):\n{(run.stdout + run.stderr)[-3000:]}")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child so far
    return seconds, peak_mb, total_jobs(run.stdout + run.stderr)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subjects", type=int, nargs="+", default=[100, 1000, 10000])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config setting, dotted key, YAML value (repeatable)")
    p.add_argument("--keep", type=Path, help="write the cohorts here and keep them (default: a temporary folder)")
    args = p.parse_args(argv)
    settings = dict(DEFAULTS)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            sys.exit(f"--set {item!r}: give KEY=VALUE")
        settings[key] = yaml.safe_load(value)
    sizes = sorted(args.subjects)
    print("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()), flush=True)
    with tempfile.TemporaryDirectory(prefix="qs-bench-plan-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        write_cohort(folder, sizes[-1])  # all images once
        rows = []
        for n in sizes:
            seconds, peak, jobs = plan(config_for(folder, write_cohort(folder, n), settings), folder)
            rows.append((n, jobs, seconds, peak))
            print(f"  {n:6d} subjects: {jobs:6d} jobs, {seconds:7.1f} s, peak RSS <= {peak:7.0f} MB", flush=True)
    n0, jobs0, s0, _ = rows[0]
    print("\nsubjects    jobs   wall s  peak MB  s per 1,000 jobs  wall / wall(N={})".format(n0))
    for n, jobs, seconds, peak in rows:
        print(f"{n:8d} {jobs:7d} {seconds:8.1f} {peak:8.0f} {1000 * seconds / max(jobs, 1):17.2f} {seconds / s0:18.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
