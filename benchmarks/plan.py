"""Benchmark Snakemake's planning (``snakemake -n``) of large cohorts: wall time, peak memory, jobs.

For each cohort size N (``--subjects``, default 100 1000 10000) the script
writes N tiny distinct NIfTI T1 images (4x4x4 voxels; the sheet validator
refuses one file given to two subjects, even through a link) and a subject
sheet into a temporary folder, a config with that sheet, ``results`` in the
folder, ``pairs.max_train_pairs: 8``, ``pairs.max_test_pairs: 2`` and
``register.pairs: atlas-to-image``, then the YAML files of ``--extra-config
FILE`` (merged key by key, in order), then repeated ``--set KEY=VALUE``
(dotted keys, YAML values, e.g. ``--set register.pairs=none``), and runs ``snakemake -n`` on the workflow in a subprocess and reports its
wall seconds, peak memory (that child's maximum RSS, from ``os.wait4``) and job count (from the
job-stats table), with the ratio of each N's wall time to the smallest N's:
planning time per job is what to read, since the machines are noisy.
``snakemake -n`` reads no image, so the images' size does not matter.

Usage: ``python benchmarks/plan.py [--subjects 100 1000 10000] [--extra-config FILE ...] [--set KEY=VALUE ...]
[--keep DIR]``
"""

from __future__ import annotations

import argparse
import os
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


def merge(base: dict, extra: dict) -> dict:
    """``extra`` merged into ``base`` (in place) key by key: nested mappings are merged, other values replaced."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def config_for(folder: Path, sheet: Path, settings: dict, extra: list[dict]) -> Path:
    """The config of one run: the cohort and results, :data:`DEFAULTS`, the ``extra`` configs, then ``settings``."""
    cfg = {"cohort": {"source": "sheet", "sheet": str(sheet)}, "results": str(folder / "results")}
    for key, value in DEFAULTS.items():
        _set(cfg, key, value)
    for more in extra:
        merge(cfg, more)
    for key, value in settings.items():
        _set(cfg, key, value)
    path = folder / f"config_{sheet.stem}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _set(cfg: dict, key: str, value) -> None:
    """Set the dotted ``key`` (``register.pairs``) of ``cfg`` to ``value``."""
    node = cfg
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


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
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: the child never blocks on a full pipe
        t0 = time.perf_counter()
        child = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak RSS (KB on Linux)
        seconds = time.perf_counter() - t0
        child.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read()
    if child.returncode != 0:
        sys.exit(f"snakemake -n failed (exit {child.returncode}, {config}):\n{output[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, total_jobs(output)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subjects", type=int, nargs="+", default=[100, 1000, 10000])
    p.add_argument("--extra-config", action="append", default=[], type=Path, metavar="FILE",
                   help="a YAML config merged over the defaults (repeatable), e.g. one with register: {pairs: none}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config setting, dotted key, YAML value (repeatable)")
    p.add_argument("--keep", type=Path, help="write the cohorts here and keep them (default: a temporary folder)")
    args = p.parse_args(argv)
    extra = []
    for path in args.extra_config:
        more = yaml.safe_load(path.read_text()) or {}
        if not isinstance(more, dict):
            sys.exit(f"--extra-config {path}: not a YAML mapping")
        extra.append(more)
    settings = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            sys.exit(f"--set {item!r}: give KEY=VALUE")
        settings[key] = yaml.safe_load(value)
    sizes = sorted(args.subjects)
    shown = {**DEFAULTS, **settings}
    print("settings: " + ", ".join(f"{k}={v}" for k, v in shown.items())
          + "".join(f", extra config {p}" for p in args.extra_config), flush=True)
    with tempfile.TemporaryDirectory(prefix="qs-bench-plan-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        write_cohort(folder, sizes[-1])  # all images once
        rows = []
        for n in sizes:
            seconds, peak, jobs = plan(config_for(folder, write_cohort(folder, n), settings, extra), folder)
            rows.append((n, jobs, seconds, peak))
            print(f"  {n:6d} subjects: {jobs:6d} jobs, {seconds:7.1f} s, peak RSS {peak:7.0f} MB", flush=True)
    n0, _, s0, _ = rows[0]
    print(f"\nsubjects    jobs   wall s  peak MB  s per 1,000 jobs  wall / wall(N={n0})")
    for n, jobs, seconds, peak in rows:
        print(f"{n:8d} {jobs:7d} {seconds:8.1f} {peak:8.0f} {1000 * seconds / max(jobs, 1):17.2f} {seconds / s0:18.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
