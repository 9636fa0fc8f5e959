"""Benchmark SyN settings: target overlap and seconds per pair on a run's reference (test) pairs.

Reads a workflow results folder (``--results``, default ``results``): its
``cohort/pairs.tsv`` and the pre-processed T1 images and labels of the test
pairs' subjects (``preprocessed/{subject}/``). Then, in this one process, with
``--threads`` ITK threads (default 1, as the workflow's SyN jobs) and the
seed ``--seed``, registers every test pair with every setting of
:data:`SETTINGS` (or those named by ``--settings``) through
:func:`qs.syn.syn_registration` (the workflow's code path; outputs to a temporary
folder) and measures the Klein et al. 2009 target overlap of the warped
labels (pooled over labels) and the registration's seconds.

Prints one row per setting and pair as it finishes, then a table: mean target
overlap and mean seconds per pair, and the ratios against ``antspy-default``
(ANTsPy's default SyN, the report's ``syn-quick``) measured in the same process.
The machines are shared and noisy: read the ratios, not the seconds.

To get the demo's test subjects without running the whole demo (a few minutes)::

    snakemake --cores 1 --directory /tmp/synbench results/cohort/pairs.tsv
    # then the pre-processed T1w and labels of the test pairs' subjects, e.g.
    snakemake --cores 1 --directory /tmp/synbench \\
        results/preprocessed/sub-03/sub-03_T1w.nii.gz results/preprocessed/sub-03/sub-03_labels.nii.gz ...

Usage: ``python benchmarks/syn.py --results /tmp/synbench/results [--settings NAME ...] [--threads 1] [--seed 0]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from qs.syn import ants_settings, describe

#: name -> ``ants.registration`` keyword arguments; the first is the reference of the ratios
SETTINGS = {
    "antspy-default": ants_settings("syn-quick"),
    "mattes-100x70x50": ants_settings("syn", metric="mattes", iterations=(100, 70, 50)),
    "cc1-100x70x50": ants_settings("syn", metric="CC", radius=1, iterations=(100, 70, 50)),
    "cc2-100x70x50": ants_settings("syn", metric="CC", radius=2, iterations=(100, 70, 50)),
    "cc2-100x70x50x20": ants_settings("syn", metric="CC", radius=2, iterations=(100, 70, 50, 20)),
    # ANTsPy's recreation of antsRegistrationSyN.sh's deformable stage (-t so): CC radius 2,
    # 100x70x50x20, shrink 8x4x2x1, smoothing 3x2x1x0 voxels, convergence 1e-6 over 10 iterations
    "antsRegistrationSyN-so": {"type_of_transform": "antsRegistrationSyN[so]"},
    "cc4-100x70x50": ants_settings("syn", metric="CC", radius=4, iterations=(100, 70, 50)),
}


def test_pairs(results: Path, split: str = "test") -> list[tuple[str, Path, Path, Path, Path]]:
    """(pair, moving T1, target T1, moving labels, target labels) of each ``split`` (test or train) pair of the run."""
    pairs = pd.read_csv(results / "cohort" / "pairs.tsv", sep="\t", keep_default_na=False, dtype=str)
    test = pairs[pairs["split"] == split]
    if test.empty:
        sys.exit(f"{results}/cohort/pairs.tsv has no {split} pair")

    def file(subject, kind):
        path = results / "preprocessed" / subject / f"{subject}_{kind}.nii.gz"
        if not path.is_file():
            sys.exit(f"{path}: missing (pre-process the test subjects first, see the module docstring)")
        return path

    return [(r.pair, file(r.moving, "T1w"), file(r.target, "T1w"), file(r.moving, "labels"), file(r.target, "labels"))
            for r in test.itertuples()]


def target_overlap(warped_labels: Path, target_labels: Path) -> float:
    """Klein et al. 2009 target overlap pooled over the target's labels."""
    from qs.evaluate import label_overlaps, total_target_overlap
    from qs.io import load_labels

    warped = np.asarray(load_labels(warped_labels).dataobj)
    target = np.asarray(load_labels(target_labels).dataobj)
    return total_target_overlap(label_overlaps(warped, target))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", type=Path, default=Path("results"), help="results folder of a run (cohort/, preprocessed/)")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS),
                   help="settings to run (default: all; antspy-default is always run first, for the ratios)")
    p.add_argument("--threads", type=int, default=1, help="ITK threads (the workflow's SyN jobs: 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tsv", type=Path, help="also write the per-pair rows to this TSV")
    args = p.parse_args(argv)

    from qs.syn import syn_registration

    names = ["antspy-default", *(n for n in args.settings if n != "antspy-default")]
    pairs = test_pairs(args.results)
    print(f"{len(pairs)} test pairs: {', '.join(p[0] for p in pairs)}; {args.threads} thread(s), seed {args.seed}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for pair, moving, target, moving_labels, target_labels in pairs:
                out = syn_registration(moving, target, Path(tmp) / name / pair, SETTINGS[name], labels=moving_labels,
                               seed=args.seed, threads=args.threads, method=name)
                seconds = json.loads(out["summary"].read_text())["seconds"]
                to = target_overlap(out["warped_labels"], target_labels)
                rows.append({"setting": name, "pair": pair, "target_overlap": to, "seconds": seconds})
                print(f"{name:24s} {pair:24s} overlap {to:.4f}  {seconds:8.1f} s", flush=True)
    df = pd.DataFrame(rows)
    if args.tsv:
        df.to_csv(args.tsv, sep="\t", index=False, float_format="%.4f")

    per_setting = df.groupby("setting", sort=False).agg(target_overlap=("target_overlap", "mean"), seconds=("seconds", "mean"))
    ref = per_setting.loc["antspy-default"]
    print("\nsetting                  mean overlap  mean s/pair  overlap/default  seconds/default  settings")
    for name, r in per_setting.iterrows():
        print(f"{name:24s} {r.target_overlap:12.4f} {r.seconds:12.1f} {r.target_overlap / ref.target_overlap:16.3f} "
              f"{r.seconds / ref.seconds:16.1f}  {describe(SETTINGS[name])}")
    for column, fmt in (("target_overlap", "{:.4f}"), ("seconds", "{:.1f}")):
        print(f"\n{column} per pair:")
        wide = df.pivot(index="setting", columns="pair", values=column).loc[list(per_setting.index)]
        print(wide.to_string(float_format=fmt.format))
    return 0


if __name__ == "__main__":
    sys.exit(main())
