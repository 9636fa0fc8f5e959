"""``qs demo``, ``atlas``, ``grid``, ``validate``, ``cohort-tables``, ``preprocess``: the cohort's data."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..io import write_json, write_text
from ..settings import add_group


def _demo(args):
    from ..demo import make_demo_cohort

    sheet = make_demo_cohort(args.out, n_subjects=args.subjects, spacing=args.spacing, seed=args.seed,
                             test_fraction=args.test_fraction, max_displacement_mm=args.max_displacement)
    print(sheet)


def _atlas(args):
    from ..atlas import write_atlas

    for path in write_atlas(args.out, subfolder="").values():
        print(path)


def _grid(args):
    from ..preprocess import build_atlas_grid

    out = build_atlas_grid(
        args.t1, args.mask, args.out, spacing=args.spacing, margin_mm=args.margin, atlas_labels=args.labels, atlas_t2=args.t2
    )
    print(json.dumps({k: str(v) for k, v in out.items()}))


def _validate(args):
    from ..validate import validate_subject

    report = validate_subject(args.subject, args.t1, t2=args.t2, labels=args.labels)
    write_json(report, args.out)


def _cohort_tables(args):
    from ..cohort import cohort_tables

    subjects, pairs, notes = cohort_tables(
        source=args.source, sheet=args.sheet, bids=args.bids, label_suffixes=tuple(args.label_suffixes),
        test_fraction=args.test_fraction, seed=args.seed, demo_root=args.demo_root, demo_subjects_n=args.demo_subjects,
        mode=args.mode, max_train_pairs=args.max_train_pairs, max_test_pairs=args.max_test_pairs,
        train_pairs_optional=args.train_pairs_optional, reference_pairs=not args.no_reference_pairs,
    )
    for note in notes:
        print(f"qs: warning: {note}", file=sys.stderr)
    write_text(subjects.to_csv(sep="\t", index=False), args.out_subjects)
    write_text(pairs.to_csv(sep="\t", index=False), args.out_pairs)


def _preprocess(args):
    from ..preprocess import preprocess_subject

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
        orientation_search=args.orientation_search,
    )
    print(json.dumps({k: str(v) for k, v in out.items()}))


def add_subcommands(sub) -> None:
    p = sub.add_parser("demo", help="write the built-in demo cohort (from the MNI ICBM152 2009a template)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    add_group(p, "demo")
    add_group(p, "seed")
    p.set_defaults(func=_demo)

    p = sub.add_parser("atlas", help="write the built-in atlas (MNI ICBM152 2009a T1, T2-like, mask, labels) at 1 mm")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=_atlas)

    p = sub.add_parser("grid", help="resample the atlas onto the working grid (cropped, FFT-friendly)")
    p.add_argument("--t1", required=True, type=Path)
    p.add_argument("--mask", required=True, type=Path)
    p.add_argument("--labels", type=Path)
    p.add_argument("--t2", type=Path)
    add_group(p, "grid")
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
    add_group(p, "cohort")
    add_group(p, "seed")
    p.add_argument("--demo-root", default="", help="folder of the demo cohort (--source demo)")
    p.add_argument("--train-pairs-optional", action="store_true",
                   help="no training pairs is no error (a run that reuses trained models, config models.*)")
    p.add_argument("--no-reference-pairs", action="store_true",
                   help="no test (reference) pairs: a run that only registers the cohort (config pairs.reference false)")
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
    p.add_argument("--orientation-search", action=argparse.BooleanOptionalAction, default=True,
                   help="start the affine from the best of the 24 axis rotations (scans stored rotated against their "
                        "header); config preprocess.orientation_search; default on")
    add_group(p, "preprocess")
    add_group(p, "seed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=_preprocess)
