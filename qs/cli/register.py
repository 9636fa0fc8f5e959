"""``qs register``: the arguments of the raw-image registration stage (:mod:`qs.register`)."""

from __future__ import annotations

import json
from pathlib import Path

from .predict import add_mirror_axes, add_refinement, refinement_from_args


def _register(args):
    from ..register import run_register

    summary = run_register(
        args.moving, args.target, args.model, args.out, correction_model=args.correction_model,
        corrections=args.corrections, stride=args.stride, correction_stride=args.correction_stride,
        mirror_axes=args.mirror_axes, atlas=args.atlas,
        atlas_mask=args.atlas_mask, labels=args.labels, samples=args.samples, device=args.device, seed=args.seed,
        threads=args.threads, normalize=args.normalize, margin_mm=args.margin, batch_size=args.batch_size,
        refinement=refinement_from_args(args),
    )
    print(json.dumps({k: summary[k] for k in ("seconds_total", "seconds_predict", "device", "detj_min",
                                              "ncc_with_target", "transformlist")}))


def _register_pair(args):
    from ..registrations import register_pair

    summary = register_pair(
        args.model, args.moving_grid, args.target_grid, args.moving, args.target, args.out,
        moving_affine=args.moving_affine, target_affine=args.target_affine, moving_labels=args.moving_labels,
        target_labels=args.target_labels, inverse=args.inverse, correction_model=args.correction_model,
        corrections=args.corrections, stride=args.stride, correction_stride=args.correction_stride,
        mirror_axes=args.mirror_axes, device=args.device, batch_size=args.batch_size, seed=args.seed,
        refinement=refinement_from_args(args),
    )
    print(json.dumps({k: summary[k] for k in ("seconds_total", "device", "detj_min", "outputs")}))


def _add_model_args(p) -> None:
    """The models and how they predict: the flags ``qs register`` and ``qs register-pair`` share."""
    p.add_argument("--model", required=True, type=Path, help="prediction model (model.safetensors)")
    p.add_argument("--correct", "--correction-model", dest="correction_model", type=Path, metavar="CORRECTION_MODEL",
                   help="correction model (predict+correct)")
    p.add_argument("--corrections", type=int, default=1, help="rounds of correction with --correct (paper: 1)")
    p.add_argument("--stride", type=int, help="patch stride of both networks (default: each model's training stride)")
    p.add_argument("--correction-stride", type=int, help="patch stride of the correction network (default: --stride)")
    add_mirror_axes(p)
    add_refinement(p)


def add_subcommands(sub) -> None:
    """Add ``qs register`` to the ``qs`` parser's subparsers."""
    p = sub.add_parser("register", help="register two raw images with a trained model (affine + predicted deformation, ANTs-compatible)")
    p.add_argument("moving", type=Path, help="raw moving image (any grid and orientation)")
    p.add_argument("target", type=Path, help="raw target image")
    _add_model_args(p)
    p.add_argument("--out", required=True, help="output prefix, e.g. out/sub1_to_sub2")
    p.add_argument("--atlas", type=Path, help="atlas T1 on the model's working grid (default: built-in MNI at the model's spacing)")
    p.add_argument("--atlas-mask", type=Path, help="brain mask of --atlas")
    p.add_argument("--labels", type=Path, help="label image of the raw moving image (warped with nearest neighbour)")
    p.add_argument("--samples", type=int, default=1, help="MC-dropout samples (> 1: uncertainty in PREFIX_atlas/predict)")
    p.add_argument("--normalize", choices=["percentile", "max", "histeq"],
                   help="intensity normalisation (default: the model's, recorded at training)")
    p.add_argument("--margin", type=float, default=8.0, help="margin of the built-in atlas grid around the brain, mm")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="ITK threads of the affine registrations")
    p.set_defaults(func=_register)

    p = sub.add_parser("register-pair", help="one registration of the workflow's register block (pre-processed "
                                             "images in, outputs in the images' own spaces)")
    _add_model_args(p)
    p.add_argument("--moving-grid", required=True, type=Path, help="the pre-processed moving image (working grid)")
    p.add_argument("--target-grid", required=True, type=Path, help="the pre-processed target image (working grid)")
    p.add_argument("--moving", required=True, type=Path, help="the moving image in its own space (outputs' source)")
    p.add_argument("--target", required=True, type=Path, help="the target image in its own space (outputs' grid)")
    p.add_argument("--moving-affine", type=Path, help="pre-processing affine of the moving image (default: identity, the atlas)")
    p.add_argument("--target-affine", type=Path, help="pre-processing affine of the target image (default: identity, the atlas)")
    p.add_argument("--moving-labels", type=Path, help="labels on the moving image's grid (warped with nearest neighbour)")
    p.add_argument("--target-labels", type=Path, help="labels on the target image's grid (with --inverse)")
    p.add_argument("--inverse", action="store_true", help="also write the inverse direction (inverse_*)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.set_defaults(func=_register_pair)
