"""``qs affine``, ``syn``, ``overlap``, ``lddmm``: pairwise registration and label overlap."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..io import QsInputError, write_text
from .args import add_lddmm_params, add_pair_args, odd_int


def _affine(args):
    from ..affine import run_affine

    out = run_affine(args.fixed, args.moving, args.out, labels=args.labels, seed=args.seed, threads=args.threads)
    print(json.dumps({k: str(v) for k, v in out.items()}))


def _syn(args):
    from ..syn import run_syn

    settings = {k: v for k in ("metric", "radius", "iterations") if (v := getattr(args, k)) is not None}
    if args.variant == "syn-quick" and settings:
        raise QsInputError(f"--{', --'.join(settings)}: settings of --variant syn; syn-quick runs ANTsPy's defaults")
    out = run_syn(args.moving, args.target, args.out, labels=args.labels, seed=args.seed, threads=args.threads,
                  variant=args.variant, **settings)
    print(json.dumps({k: str(v) for k, v in out.items()}))


def _overlap(args):
    import numpy as np
    import pandas as pd

    from ..evaluate import OVERLAP_COLUMNS, overlap_rows
    from ..io import check_same_grid, load_labels

    target = load_labels(args.target_labels)
    rows = []
    for spec in args.method:
        method, _, path = spec.partition("=")
        if not path:
            raise QsInputError(f"--method must be NAME=LABELS, got '{spec}'")
        warped = load_labels(path)
        check_same_grid(target, warped, args.target_labels, path)
        rows += overlap_rows(args.pair, method, np.asarray(warped.dataobj), np.asarray(target.dataobj))
    write_text(pd.DataFrame(rows, columns=OVERLAP_COLUMNS).to_csv(sep="\t", index=False, float_format="%.6f"), args.out)


def _lddmm(args):
    from ..lddmm import run_lddmm

    summary = run_lddmm(
        args.moving, args.target, args.out, labels=args.labels, iterations=args.iterations, alpha=args.alpha,
        beta=args.beta, gamma=args.gamma, sigma=args.sigma, time_steps=args.time_steps,
        optimizer=args.optimizer, coarse_iterations=args.coarse_iterations, similarity=args.similarity,
        window=args.window, device=args.device, seed=args.seed, progress=sys.stderr.isatty(),
    )
    print(json.dumps({k: v for k, v in summary.items() if k != "outputs"}, default=str))


def add_subcommands(sub) -> None:
    p = sub.add_parser("affine", help="ANTsPy affine registration of MOVING to FIXED")
    p.add_argument("--fixed", required=True, type=Path)
    p.add_argument("--moving", required=True, type=Path)
    p.add_argument("--labels", type=Path, help="label image on the moving grid, resampled with genericLabel")
    p.add_argument("--out", required=True, help="output prefix")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=_affine)

    from .. import syn

    p = sub.add_parser("syn", help="ANTsPy SyN baseline of MOVING to TARGET (both on the working grid; docs/syn.md)")
    add_pair_args(p, labels_help="moving label image, warped with genericLabel")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variant", default="syn", choices=syn.VARIANTS,
                   help="syn: deformable-only SyN at full strength (default); syn-quick: ANTsPy's default SyN")
    p.add_argument("--metric", choices=syn.METRICS, help=f"metric of syn (default {syn.DEFAULT_METRIC})")
    p.add_argument("--radius", type=int, help=f"CC window radius of syn, voxels (default {syn.DEFAULT_RADIUS})")
    p.add_argument("--iterations", type=int, nargs="+",
                   help=f"iterations of syn per level, coarse to fine (default {' '.join(map(str, syn.DEFAULT_ITERATIONS))})")
    p.set_defaults(func=_syn)

    p = sub.add_parser("overlap", help="per-label target overlap and Dice of warped labels against the target labels")
    p.add_argument("--pair", required=True)
    p.add_argument("--target-labels", required=True, type=Path)
    p.add_argument("--method", action="append", required=True, metavar="NAME=LABELS", help="a method and its warped labels (repeatable)")
    p.add_argument("--out", required=True, type=Path, help="TSV: pair, method, label, target_overlap, dice")
    p.set_defaults(func=_overlap)

    p = sub.add_parser("lddmm", help="LDDMM optimization of MOVING to TARGET (both on the working grid)")
    add_pair_args(p, labels_help="moving label image, warped with nearest neighbour")
    p.add_argument("--iterations", type=int, default=50, help="energy evaluations (shootings)")
    p.add_argument("--optimizer", default="lbfgs", choices=["lbfgs", "gd", "gd-V"],
                   help="lbfgs (default), gd (gradient descent, the original code's) or gd-V (in the metric of V)")
    p.add_argument("--coarse-iterations", type=int, default=0,
                   help="evaluations on a grid twice as coarse first (coarse-to-fine; 0 = off)")
    p.add_argument("--similarity", default="ssd", choices=["ssd", "lncc"],
                   help="image match: ssd (sum of squared differences, default) or lncc (local cross-correlation)")
    p.add_argument("--window", type=odd_int, default=5, help="lncc window (voxels, odd)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    add_lddmm_params(p)
    p.set_defaults(func=_lddmm)
