"""The ``qs`` command line: one subcommand per pipeline step; file I/O lives here and in ``qs.io``.

Bad input ends the program with exit status 2 and one line ``qs: error: FILE: problem``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from . import __version__
from .io import QsInputError, write_json, write_text


#: modules that add their own subcommands through ``add_subcommands(subparsers)``
STAGE_MODULES: tuple[str, ...] = ("predict", "register", "report", "provenance")


def _demo(args):
    from .demo import make_demo_cohort

    sheet = make_demo_cohort(args.out, n_subjects=args.subjects, spacing=args.spacing, seed=args.seed, test_fraction=args.test_fraction)
    print(sheet)


def _atlas(args):
    from .demo import write_atlas

    for path in write_atlas(args.out, subfolder="").values():
        print(path)


def _grid(args):
    from .preprocess import build_atlas_grid

    out = build_atlas_grid(
        args.t1, args.mask, args.out, spacing=args.spacing, margin_mm=args.margin, atlas_labels=args.labels, atlas_t2=args.t2
    )
    print(json.dumps({k: str(v) for k, v in out.items()}))


def _validate(args):
    from .validate import validate_subject

    report = validate_subject(args.subject, args.t1, t2=args.t2, labels=args.labels)
    write_json(report, args.out)


def _cohort_tables(args):
    from .cohort import cohort_tables

    subjects, pairs, notes = cohort_tables(
        source=args.source, sheet=args.sheet, bids=args.bids, label_suffixes=tuple(args.label_suffixes),
        test_fraction=args.test_fraction, seed=args.seed, demo_root=args.demo_root, demo_subjects_n=args.demo_subjects,
        mode=args.mode, max_train_pairs=args.max_train_pairs, max_test_pairs=args.max_test_pairs,
    )
    for note in notes:
        print(f"qs: warning: {note}", file=sys.stderr)
    write_text(subjects.to_csv(sep="\t", index=False), args.out_subjects)
    write_text(pairs.to_csv(sep="\t", index=False), args.out_pairs)


def _preprocess(args):
    from .preprocess import preprocess_subject

    out = preprocess_subject(
        args.subject,
        args.atlas,
        args.atlas_mask,
        args.t1,
        args.out,
        t2=args.t2,
        labels=args.labels,
        normalize=args.normalize,
        seed=args.seed,
        threads=args.threads,
    )
    print(json.dumps({k: str(v) for k, v in out.items()}))


def _affine(args):
    from .affine import run_affine

    out = run_affine(args.fixed, args.moving, args.out, labels=args.labels, seed=args.seed, threads=args.threads)
    print(json.dumps({k: str(v) for k, v in out.items()}))


def _syn(args):
    from .syn import run_syn

    settings = {k: v for k in ("metric", "radius", "iterations") if (v := getattr(args, k)) is not None}
    if args.variant == "syn-quick" and settings:
        raise QsInputError(f"--{', --'.join(settings)}: settings of --variant syn; syn-quick runs ANTsPy's defaults")
    out = run_syn(args.moving, args.target, args.out, labels=args.labels, seed=args.seed, threads=args.threads,
                  variant=args.variant, **settings)
    print(json.dumps({k: str(v) for k, v in out.items()}))


def _overlap(args):
    import numpy as np
    import pandas as pd

    from .evaluate import OVERLAP_COLUMNS, overlap_rows
    from .io import check_same_grid, load_labels

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
    from .lddmm import run_lddmm

    summary = run_lddmm(
        args.moving, args.target, args.out, labels=args.labels, iterations=args.iterations, alpha=args.alpha,
        beta=args.beta, gamma=args.gamma, sigma=args.sigma, time_steps=args.time_steps,
        optimizer=args.optimizer, coarse_iterations=args.coarse_iterations, similarity=args.similarity,
        window=args.window, device=args.device, seed=args.seed, progress=sys.stderr.isatty(),
    )
    print(json.dumps({k: v for k, v in summary.items() if k != "outputs"}, default=str))


def _patches(args):
    import numpy as np

    from .io import check_same_grid, load_image, load_momentum
    from .patches import write_pair_patches

    moving = load_image(args.moving, what="moving image")
    target = load_image(args.target, what="target image")
    check_same_grid(moving, target, args.moving, args.target)
    m0 = load_momentum(args.momentum, moving, args.moving)
    if args.field != "momentum":
        import torch

        from .fields import to_field
        from .io import spacing

        kernel = {"alpha": args.alpha, "beta": args.beta, "gamma": args.gamma, "time_steps": args.time_steps}
        m0 = to_field(torch.from_numpy(np.asarray(m0, np.float32)), args.field, spacing(moving), kernel).numpy()
    write_pair_patches(
        np.asarray(moving.dataobj), np.asarray(target.dataobj), m0, args.out,
        patch=args.patch, stride=args.stride, threshold=args.threshold, pair=args.pair, field=args.field,
    )


def _train(args):
    from .device import resolve_device
    from .train import train

    meta = {
        "alpha": args.alpha, "beta": args.beta, "gamma": args.gamma, "time_steps": args.time_steps,
        "sigma": args.sigma, "spacing": [args.spacing] * 3, "modality": args.modality,
    }
    model = train(
        args.patches, args.out, meta=meta, kind=args.kind, architecture=args.architecture,
        features=args.features, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=resolve_device(args.device),
        dropout=args.dropout, val_fraction=args.val_fraction, loss=args.loss, init=args.init,
        progress=sys.stderr.isatty(),
        resume={"auto": "auto", "require": True, "never": False}[args.resume],
    )
    print(model)


def _add_pair_args(p, *, labels_help):
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


def _add_lddmm_params(p):
    from .lddmm import DEFAULTS

    p.add_argument("--alpha", type=float, default=DEFAULTS["alpha"], help="kernel (-alpha Lap - beta grad div + gamma)^2")
    p.add_argument("--beta", type=float, default=DEFAULTS["beta"])
    p.add_argument("--gamma", type=float, default=DEFAULTS["gamma"])
    p.add_argument("--sigma", type=float, default=0.2, help="noise level of the image match (images in [0, 1])")
    p.add_argument("--time-steps", type=int, default=10, help="RK4 steps of geodesic shooting")


def _odd_int(text: str) -> int:
    """argparse type: an odd integer >= 1 (a window centred on its voxel)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an odd integer >= 1, got {text!r}") from None
    if value < 1 or value % 2 == 0:
        raise argparse.ArgumentTypeError(f"must be an odd integer >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qs", description="Quicksilver: fast predictive LDDMM registration for cohort studies")
    parser.add_argument("--version", action="version", version=f"qs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="write the built-in demo cohort (from the MNI ICBM152 2009a template)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--subjects", type=int, default=8, help="number of subjects (default 8)")
    p.add_argument("--spacing", type=float, default=2.0, help="voxel size of the subject images in mm (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-fraction", type=float, default=0.25, help="fraction of subjects in the test split")
    p.set_defaults(func=_demo)

    p = sub.add_parser("atlas", help="write the built-in atlas (MNI ICBM152 2009a T1, T2-like, mask, labels) at 1 mm")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=_atlas)

    p = sub.add_parser("grid", help="resample the atlas onto the working grid (cropped, FFT-friendly)")
    p.add_argument("--t1", required=True, type=Path)
    p.add_argument("--mask", required=True, type=Path)
    p.add_argument("--labels", type=Path)
    p.add_argument("--t2", type=Path)
    p.add_argument("--spacing", type=float, required=True, help="working spacing in mm")
    p.add_argument("--margin", type=float, default=8.0, help="margin around the brain mask in mm")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=_grid)

    p = sub.add_parser("validate", help="check one subject's input files; write a JSON summary")
    p.add_argument("--subject", required=True)
    p.add_argument("--t1", required=True, type=Path)
    p.add_argument("--t2", type=Path)
    p.add_argument("--labels", type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=_validate)

    p = sub.add_parser("cohort-tables", help="the cohort's subject and pair tables (subjects.tsv, pairs.tsv)")
    p.add_argument("--source", required=True, choices=["demo", "sheet", "bids"])
    p.add_argument("--sheet", default="", help="subject sheet (TSV) of --source sheet")
    p.add_argument("--bids", default="", help="BIDS root of --source bids")
    p.add_argument("--label-suffixes", nargs="+", default=["dseg", "labels"], help="BIDS label image suffixes, in order")
    p.add_argument("--test-fraction", type=float, default=0.25, help="share of subjects without a split that become test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--demo-root", default="", help="folder of the demo cohort (--source demo)")
    p.add_argument("--demo-subjects", type=int, default=0, help="subjects of the demo cohort (--source demo)")
    p.add_argument("--mode", default="image-to-image", choices=["image-to-image", "atlas-to-image"])
    p.add_argument("--max-train-pairs", type=int, default=0)
    p.add_argument("--max-test-pairs", type=int, default=0)
    p.add_argument("--out-subjects", required=True, type=Path)
    p.add_argument("--out-pairs", required=True, type=Path)
    p.set_defaults(func=_cohort_tables)

    p = sub.add_parser("preprocess", help="affine to the atlas, resample to the working grid, normalize")
    p.add_argument("--subject", required=True)
    p.add_argument("--atlas", required=True, type=Path, help="atlas T1 on the working grid")
    p.add_argument("--atlas-mask", required=True, type=Path)
    p.add_argument("--t1", required=True, type=Path)
    p.add_argument("--t2", type=Path)
    p.add_argument("--labels", type=Path)
    p.add_argument("--normalize", default="percentile", choices=["percentile", "max", "histeq"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=_preprocess)

    p = sub.add_parser("affine", help="ANTsPy affine registration of MOVING to FIXED")
    p.add_argument("--fixed", required=True, type=Path)
    p.add_argument("--moving", required=True, type=Path)
    p.add_argument("--labels", type=Path, help="label image on the moving grid, resampled with genericLabel")
    p.add_argument("--out", required=True, help="output prefix")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=_affine)

    from . import syn

    p = sub.add_parser("syn", help="ANTsPy SyN baseline of MOVING to TARGET (both on the working grid; docs/syn.md)")
    _add_pair_args(p, labels_help="moving label image, warped with genericLabel")
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
    _add_pair_args(p, labels_help="moving label image, warped with nearest neighbour")
    p.add_argument("--iterations", type=int, default=50, help="energy evaluations (shootings)")
    p.add_argument("--optimizer", default="lbfgs", choices=["lbfgs", "gd", "gd-V"],
                   help="lbfgs (default), gd (gradient descent, the original code's) or gd-V (in the metric of V)")
    p.add_argument("--coarse-iterations", type=int, default=0,
                   help="evaluations on a grid twice as coarse first (coarse-to-fine; 0 = off)")
    p.add_argument("--similarity", default="ssd", choices=["ssd", "lncc"],
                   help="image match: ssd (sum of squared differences, default) or lncc (local cross-correlation)")
    p.add_argument("--window", type=_odd_int, default=5, help="lncc window (voxels, odd)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    _add_lddmm_params(p)
    p.set_defaults(func=_lddmm)

    p = sub.add_parser("patches", help="training patches (moving, target, momentum) of one pair")
    add_patch_args(p)
    _add_lddmm_params(p)  # the kernel K of --field velocity
    p.set_defaults(func=_patches)

    p = sub.add_parser("train", help="train the prediction or correction network on patch files")
    p.add_argument("patches", nargs="+", type=Path, help="patch .npy files or folders of them")
    p.add_argument("--out", required=True, type=Path, help="output folder (checkpoint, loss.tsv, loss.png, model.safetensors)")
    p.add_argument("--kind", default="prediction", choices=["prediction", "correction"])
    p.add_argument("--architecture", default="quicksilver", choices=["quicksilver", "dilated", "dilated-match"],
                   help="quicksilver: the paper's encoder-decoder; dilated: a CPU-sized early-fusion dilated CNN; "
                        "dilated-match: the same fed with image-match features (docs/learning.md)")
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--loss", default="l1", choices=["l1", "l2", "lowpass"],
                   help="loss on the scaled momentum: l1 (paper), l2, lowpass (squared error of the smoothed difference)")
    p.add_argument("--dropout", type=float, default=0.2, help="0 = deterministic network (no MC dropout)")
    p.add_argument("--init", type=Path, metavar="MODEL",
                   help="start from this model's weights (same architecture and features), e.g. the correction "
                        "network from the prediction network's")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--spacing", type=float, required=True, help="working spacing in mm (recorded in the model)")
    p.add_argument("--modality", default="T1->T1", help="moving->target contrasts, e.g. T1->T2 (recorded in the model)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", default="auto", choices=["auto", "require", "never"],
                   help="OUT/checkpoint.pt of the same data and settings is continued (the log says so); one of "
                        "other data or settings: auto = start over, require = error; never = always start over")
    _add_lddmm_params(p)
    p.set_defaults(func=_train)

    for module in STAGE_MODULES:
        importlib.import_module(f"qs.{module}").add_subcommands(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except QsInputError as exc:
        print(f"qs: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
