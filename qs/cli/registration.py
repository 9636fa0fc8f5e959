"""``qs affine``, ``syn``, ``overlap``, ``lddmm``: pairwise registration and label overlap."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..io import QsInputError
from ..settings import add_group
from .args import add_pair_args


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


def _variant_name(text: str) -> str:
    """argparse type of ``qs syn --variant`` (:func:`qs.syn.check_variant_name`)."""
    from ..syn import check_variant_name

    try:
        return check_variant_name(text)
    except QsInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _overlap(args):
    from ..overlap import parse_method, write_overlap_table

    write_overlap_table(args.pair, args.target_labels, [parse_method(spec) for spec in args.method], args.out)


def _lddmm(args):
    from ..lddmm_run import run_lddmm

    summary = run_lddmm(
        args.moving, args.target, args.out, labels=args.labels, iterations=args.iterations, alpha=args.alpha,
        beta=args.beta, gamma=args.gamma, scales=args.kernel_scales, sigma=args.sigma, time_steps=args.time_steps,
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
    add_group(p, "seed")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=_affine)

    from .. import syn

    p = sub.add_parser("syn", help="ANTsPy SyN baseline of MOVING to TARGET (both on the working grid; docs/syn.md)")
    add_pair_args(p, labels_help="moving label image, warped with genericLabel")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variant", default="syn", type=_variant_name,
                   help="syn: deformable-only SyN at full strength (default); syn-quick: ANTsPy's default SyN; "
                        "syn-NAME: a named setting, deformable-only SyN with --metric, --radius, --iterations")
    add_group(p, "syn", defaults=False)  # not given: the schema's defaults (qs.syn); refused with syn-quick
    p.set_defaults(func=_syn)

    p = sub.add_parser("overlap", help="per-label target overlap and Dice of warped labels against the target labels")
    p.add_argument("--pair", required=True)
    p.add_argument("--target-labels", required=True, type=Path)
    p.add_argument("--method", action="append", required=True, metavar="NAME=LABELS", help="a method and its warped labels (repeatable)")
    p.add_argument("--out", required=True, type=Path, help="TSV: pair, method, label, target_overlap, dice")
    p.set_defaults(func=_overlap)

    p = sub.add_parser("lddmm", help="LDDMM optimization of MOVING to TARGET (both on the working grid)")
    add_pair_args(p, labels_help="moving label image, warped with nearest neighbour")
    add_group(p, "lddmm")
    add_group(p, "kernel")
    p.set_defaults(func=_lddmm)
