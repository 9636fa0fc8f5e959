"""Arguments shared by several ``qs`` commands."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_pair_args(p, *, labels_help):
    """``--moving --target --labels --out --seed`` of the pairwise registration commands."""
    p.add_argument("--moving", required=True, type=Path, help="moving image on the working grid")
    p.add_argument("--target", required=True, type=Path, help="target image on the same grid")
    p.add_argument("--labels", type=Path, help=labels_help)
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--seed", type=int, default=0)


def add_patch_args(p):
    """Arguments shared by ``qs patches`` and ``qs correction-patches``."""
    p.add_argument("--moving", required=True, type=Path)
    p.add_argument("--target", required=True, type=Path)
    p.add_argument("--momentum", required=True, type=Path, help="the pair's LDDMM m0.nii.gz (I, J, K, 3) on the same grid")
    p.add_argument("--out", required=True, type=Path, help="output .npy (a .json sidecar is written beside it)")
    p.add_argument("--pair", help="pair id recorded in the sidecar")
    p.add_argument("--patch", type=int, default=15)
    p.add_argument("--stride", type=int, default=14)
    p.add_argument("--threshold", type=float, default=0.0, help="a patch is background when all voxels are <= this in both images")
    p.add_argument("--field", default="momentum", choices=["momentum", "velocity"],
                   help="what the network learns: the momentum m0 (the paper's best) or the velocity v0 = K m0")


def add_lddmm_params(p):
    from ..lddmm import DEFAULTS

    p.add_argument("--alpha", type=float, default=DEFAULTS["alpha"], help="kernel (-alpha Lap - beta grad div + gamma)^2")
    p.add_argument("--beta", type=float, default=DEFAULTS["beta"])
    p.add_argument("--gamma", type=float, default=DEFAULTS["gamma"])
    p.add_argument("--sigma", type=float, default=0.2, help="noise level of the image match (images in [0, 1])")
    p.add_argument("--time-steps", type=int, default=10, help="RK4 steps of geodesic shooting")


def odd_int(text: str) -> int:
    """argparse type: an odd integer >= 1 (a window centred on its voxel)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an odd integer >= 1, got {text!r}") from None
    if value < 1 or value % 2 == 0:
        raise argparse.ArgumentTypeError(f"must be an odd integer >= 1, got {value}")
    return value
