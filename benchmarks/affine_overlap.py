"""The affine pre-alignment on a real cohort's reference pairs: its target overlap against the source's own alignment.

Usage: python benchmarks/affine_overlap.py [RESULTS] [--exclude ID ...] [--without-search]

For every reference pair of a finished run (RESULTS/evaluate/*), with the labels of ``--exclude`` left out:

* ``affine``: the report's overlap (both subjects affinely aligned to the atlas, on the working grid);
* ``source_1mm``: the identity in the source space (the subjects' own grids, LPBA40's are one shared,
  mutually aligned grid), at the source resolution;
* ``source_grid``: the same identity resampled onto the working grid the way ``affine`` is: the moving
  subject's labels through the target's affine (one transform for both, so only the resampling differs);
* ``no_search`` (``--without-search``): the affine without the orientation search (``qs preprocess
  --no-orientation-search`` of both subjects into a temporary folder; ~10 s per subject).

Prints one row per pair, then the means, the worst pair and the ratio of differences. Needs the source files
of the run's subject sheet (RESULTS/cohort/subjects.tsv).
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from qs.affine import apply_transforms
from qs.evaluate import label_overlaps, total_target_overlap


def _labels(path, exclude):
    data = np.asarray(nib.load(str(path)).dataobj)
    return np.where(np.isin(data, exclude), 0, data)


def _overlap(moving, target, exclude) -> float:
    return total_target_overlap(label_overlaps(_labels(moving, exclude), _labels(target, exclude)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="?", default="results")
    ap.add_argument("--exclude", type=int, nargs="*", default=[181, 182])
    ap.add_argument("--without-search", action="store_true")
    args = ap.parse_args(argv)
    res = Path(args.results)
    subjects = pd.read_csv(res / "cohort" / "subjects.tsv", sep="\t", keep_default_na=False).set_index("subject")
    report = pd.read_csv(res / "report" / "target_overlap.tsv", sep="\t", dtype={"label": str})
    affine = report[(report["method"] == "affine") & (report["label"] == "all")].set_index("pair")["target_overlap"]
    pairs = pd.read_csv(res / "cohort" / "pairs.tsv", sep="\t").set_index("pair").loc[affine.index]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        plain = {}
        if args.without_search:
            for s in sorted(set(pairs["moving"]) | set(pairs["target"])):
                cmd = ["qs", "preprocess", "--subject", s, "--atlas", str(res / "atlas" / "atlas_T1w.nii.gz"),
                       "--atlas-mask", str(res / "atlas" / "atlas_mask.nii.gz"), "--t1", subjects.loc[s, "t1"],
                       "--labels", subjects.loc[s, "labels"], "--no-orientation-search", "--out", str(tmp / s)]
                subprocess.run(cmd, check=True, capture_output=True)
                plain[s] = tmp / s / f"{s}_labels.nii.gz"
        for pair, p in pairs.iterrows():
            grid = res / "preprocessed" / p["target"]
            same_way = apply_transforms(grid / f"{p['target']}_T1w.nii.gz", subjects.loc[p["moving"], "labels"],
                                        [grid / f"{p['target']}_affine.mat"], tmp / f"{pair}.nii.gz", labels=True)
            row = {"pair": pair, "affine": affine[pair],
                   "source_1mm": _overlap(subjects.loc[p["moving"], "labels"], subjects.loc[p["target"], "labels"], args.exclude),
                   "source_grid": _overlap(same_way, grid / f"{p['target']}_labels.nii.gz", args.exclude)}
            if plain:
                row["no_search"] = _overlap(plain[p["moving"]], plain[p["target"]], args.exclude)
            rows.append(row)
    df = pd.DataFrame(rows)
    print(df.to_string(index=False, float_format="%.4f"))
    print("mean  " + "  ".join(f"{c} {df[c].mean():.4f}" for c in df.columns[1:]))
    print("worst " + "  ".join(f"{c} {df[c].min():.4f}" for c in df.columns[1:]))
    print(f"affine - source_grid per pair: min {(df['affine'] - df['source_grid']).min():+.4f}, "
          f"mean {(df['affine'] - df['source_grid']).mean():+.4f}")


if __name__ == "__main__":
    sys.exit(main())
