"""Affine recovery on a demo run: mean distance (mm) over the atlas brain between
the ANTs affine that `qs preprocess` found and the demo's known affine part.

Usage: python benchmarks/affine_recovery.py [RESULTS]   (default: results)
Prints one row per subject, the working voxel size and the ratio error/voxel.
"""

import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from qs.affine import affine_matrix_ras


def main(results="results"):
    res = Path(results)
    mask = nib.load(str(res / "atlas" / "atlas_mask.nii.gz"))
    voxel = float(abs(mask.affine[0, 0]))
    idx = np.argwhere(np.asarray(mask.dataobj) > 0)
    pts = mask.affine @ np.c_[idx, np.ones(len(idx))].T
    print("subject\terror_mm\tidentity_mm\terror/voxel")
    errors = []
    for mat in sorted(res.glob("preprocessed/*/*_affine.mat")):
        subject = mat.parent.name
        truth = np.loadtxt(res / "demo" / "truth" / f"{subject}_affine.txt")
        err = np.linalg.norm(((affine_matrix_ras(mat) - truth) @ pts)[:3], axis=0).mean()
        ident = np.linalg.norm(((np.eye(4) - truth) @ pts)[:3], axis=0).mean()
        errors.append(err)
        print(f"{subject}\t{err:.3f}\t{ident:.3f}\t{err / voxel:.3f}")
    print(f"mean\t{np.mean(errors):.3f}\t\t{np.mean(errors) / voxel:.3f}  (working voxel {voxel:g} mm)")


if __name__ == "__main__":
    main(*sys.argv[1:])
