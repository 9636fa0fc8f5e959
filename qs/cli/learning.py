"""``qs patches``, ``train``: training patches and network training."""

from __future__ import annotations

import sys
from pathlib import Path

from ..settings import add_group
from .args import add_patch_args


def _patches(args):
    from ..patches import pair_patches_from_files

    kernel = {"alpha": args.alpha, "beta": args.beta, "gamma": args.gamma, "kernel_scales": args.kernel_scales,
              "time_steps": args.time_steps}
    pair_patches_from_files(args.moving, args.target, args.momentum, args.out, patch=args.patch, stride=args.stride,
                            threshold=args.threshold, pair=args.pair, field=args.field, kernel=kernel)


def _train(args):
    from ..device import resolve_device
    from ..train import train

    meta = {
        "alpha": args.alpha, "beta": args.beta, "gamma": args.gamma, "kernel_scales": args.kernel_scales,
        "time_steps": args.time_steps, "sigma": args.sigma, "spacing": [args.spacing] * 3, "modality": args.modality,
        "normalize": args.normalize,
    }
    if args.atlas:
        meta["atlas"] = args.atlas
    if args.cohort or args.run:
        meta["trained_on"] = {"cohort": args.cohort, "results": args.run}
    model = train(
        args.patches, args.out, meta=meta, kind=args.kind, architecture=args.architecture,
        features=args.features, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=resolve_device(args.device),
        dropout=args.dropout, val_fraction=args.val_fraction, loss=args.loss, init=args.init,
        progress=sys.stderr.isatty(),
        resume={"auto": "auto", "require": True, "never": False}[args.resume],
    )
    print(model)


def add_subcommands(sub) -> None:
    p = sub.add_parser("patches", help="training patches (moving, target, momentum) of one pair")
    add_patch_args(p)
    add_group(p, "kernel")  # the kernel K of --field velocity
    p.set_defaults(func=_patches)

    p = sub.add_parser("train", help="train the prediction or correction network on patch files")
    p.add_argument("patches", nargs="+", type=Path, help="patch .npy files or folders of them")
    p.add_argument("--out", required=True, type=Path, help="output folder (checkpoint, loss.tsv, loss.png, model.safetensors)")
    p.add_argument("--kind", default="prediction", choices=["prediction", "correction"])
    add_group(p, "network")
    p.add_argument("--init", type=Path, metavar="MODEL",
                   help="start from this model's weights (same architecture and features), e.g. the correction "
                        "network from the prediction network's")
    add_group(p, "grid", skip=("grid.margin_mm",))  # the working spacing, recorded in the model
    p.add_argument("--modality", default="T1->T1", help="moving->target contrasts, e.g. T1->T2 (recorded in the model)")
    add_group(p, "preprocess")  # the intensity normalisation of the patches' images, recorded in the model
    p.add_argument("--atlas", default="", help="identity of the atlas the working grid is built from (recorded)")
    p.add_argument("--cohort", default="", help="the cohort the patches come from (recorded in the model)")
    p.add_argument("--run", default="", help="the results folder of the training run (recorded in the model)")
    add_group(p, "seed")
    p.add_argument("--resume", default="auto", choices=["auto", "require", "never"],
                   help="OUT/checkpoint.pt of the same data and settings is continued (the log says so); one of "
                        "other data or settings: auto = start over, require = error; never = always start over")
    add_group(p, "kernel")
    p.set_defaults(func=_train)
