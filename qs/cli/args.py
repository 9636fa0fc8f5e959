"""Arguments shared by several ``qs`` commands (settings' flags come from :mod:`qs.settings`)."""

from __future__ import annotations

from pathlib import Path

from ..settings import add_group


def add_pair_args(p, *, labels_help):
    """``--moving --target --labels --out --seed`` of the pairwise registration commands."""
    p.add_argument("--moving", required=True, type=Path, help="moving image on the working grid")
    p.add_argument("--target", required=True, type=Path, help="target image on the same grid")
    p.add_argument("--labels", type=Path, help=labels_help)
    p.add_argument("--out", required=True, type=Path, help="output folder")
    add_group(p, "seed")


def add_patch_args(p):
    """Arguments shared by ``qs patches`` and ``qs correction-patches``: the pair, the output, the patches' settings."""
    p.add_argument("--moving", required=True, type=Path)
    p.add_argument("--target", required=True, type=Path)
    p.add_argument("--momentum", required=True, type=Path, help="the pair's LDDMM m0.nii.gz (I, J, K, 3) on the same grid")
    p.add_argument("--out", required=True, type=Path, help="output .npy (a .json sidecar is written beside it)")
    p.add_argument("--pair", help="pair id recorded in the sidecar")
    add_group(p, "patches")
