"""``qs predict`` and ``qs correction-patches``: the arguments of the prediction stage (:mod:`qs.predict`)."""

from __future__ import annotations

import json
from pathlib import Path

from ..settings import GROUPS, add_group
from .args import add_patch_args


def add_lddmm_expect(p) -> None:
    """Optional ``--alpha --beta --gamma --sigma --time-steps`` (settings group ``kernel``, no defaults): the
    run's LDDMM settings the model must match."""
    g = p.add_argument_group("LDDMM settings the model must have been trained with (checked when given)")
    add_group(g, "kernel", defaults=False)


def expect_from_args(args) -> dict:
    """The kernel settings given on the command line, by name (``alpha`` ... ``time_steps``)."""
    names = [key.split(".")[-1] for key in GROUPS["kernel"]]
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def add_mirror_axes(p) -> None:
    """``--mirror-axes``, shared by ``qs predict``, ``qs correction-patches`` and ``qs register``."""
    p.add_argument("--mirror-axes", type=int, nargs="*", default=[], choices=[0, 1, 2], metavar="AXIS",
                   help="average the networks' predictions over the pair mirrored along every subset of these voxel "
                        "axes (0 1 2: 8 passes per network call; default: none)")


def _predict(args):
    from ..predict.files import run_predict

    summary = run_predict(
        args.model, args.moving, args.target, args.out, correction_model=args.correction_model,
        corrections=args.corrections, correction_stride=args.correction_stride, mirror_axes=args.mirror_axes,
        samples=args.samples, device=args.device, batch_size=args.batch_size, seed=args.seed, labels=args.labels,
        expect=expect_from_args(args), stride=args.stride, refinement=refinement_from_args(args),
    )
    keys = ("seconds", "seconds_total", "device", "detj_min", "detj_max", "samples", "corrected", "corrections",
            "mirror_axes", "refine")
    print(json.dumps({k: summary[k] for k in keys}))


def add_refinement(p) -> None:
    """``--refine --refine-coarse --similarity --window`` (settings group ``refine``): test-time refinement."""
    g = p.add_argument_group("test-time refinement: LDDMM energy evaluations started from the prediction "
                             "(the model's kernel, time steps and sigma)")
    add_group(g, "refine")


def refinement_from_args(args):
    """The :class:`qs.predict.refine.Refinement` of ``--refine`` ..., or None when no evaluation is asked for."""
    from ..predict.refine import Refinement

    refinement = Refinement(args.refine, args.refine_coarse, args.similarity, args.window)
    return refinement if refinement.active else None


def _correction_patches(args):
    from ..predict.files import run_correction_patches

    npy, _ = run_correction_patches(
        args.model, args.moving, args.target, args.momentum, args.out, patch=args.patch, stride=args.stride,
        threshold=args.threshold, pair=args.pair, device=args.device, batch_size=args.batch_size,
        expect=expect_from_args(args), field=args.field, predict_stride=args.predict_stride,
        mirror_axes=args.mirror_axes,
    )
    print(npy)


def add_subcommands(sub) -> None:
    """Add ``qs predict`` and ``qs correction-patches`` to the ``qs`` parser's subparsers."""
    p = sub.add_parser("predict", help="predict the LDDMM registration of MOVING to TARGET with a trained model")
    p.add_argument("--model", required=True, type=Path, help="prediction model (model.safetensors)")
    p.add_argument("--moving", required=True, type=Path, help="moving image on the working grid")
    p.add_argument("--target", required=True, type=Path, help="target image on the same grid")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--correct", "--correction-model", dest="correction_model", type=Path,
                   metavar="CORRECTION_MODEL", help="correction model: add its predicted residual momentum")
    p.add_argument("--corrections", type=int, default=1,
                   help="rounds of correction with --correct (paper: 1); each corrects what the rounds before left")
    p.add_argument("--samples", type=int, default=1, help="MC-dropout samples (> 1 writes uncertainty.nii.gz)")
    p.add_argument("--labels", type=Path, help="moving label image, warped with nearest neighbour")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--batch-size", type=int, default=64, help="patches per network call")
    p.add_argument("--stride", type=int, help="patch stride of both networks (default: each model's training stride; "
                                              "smaller = overlapping patches averaged, slower)")
    p.add_argument("--correction-stride", type=int,
                   help="patch stride of the correction network (default: --stride); smaller = more overlap, slower")
    p.add_argument("--seed", type=int, default=0, help="seed of the MC-dropout samples")
    add_mirror_axes(p)
    add_refinement(p)
    add_lddmm_expect(p)
    p.set_defaults(func=_predict)

    p = sub.add_parser("correction-patches",
                       help="training patches of the correction network for one pair (moving, warped-back target, residual)")
    p.add_argument("--model", required=True, type=Path, help="the trained prediction model")
    add_patch_args(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--predict-stride", type=int,
                   help="the prediction's patch stride, as qs predict --stride (default: the model's training stride)")
    add_mirror_axes(p)
    add_lddmm_expect(p)
    p.set_defaults(func=_correction_patches)
