"""``qs evaluate-pair``, ``report``: evaluation of the test pairs against LDDMM, and the report (:mod:`qs.report`)."""

from __future__ import annotations

import json
from pathlib import Path

from ..fields import FIELDS
from ..io import QsInputError


def _pairs_of(specs, what) -> dict:
    """``NAME=VALUE`` arguments as a dict; :class:`QsInputError` for a malformed or repeated name."""
    out = {}
    for spec in specs or []:
        key, sep, value = spec.partition("=")
        if not sep or not key or not value:
            raise QsInputError(f"{what} must be NAME=VALUE, got '{spec}'")
        if key in out:
            raise QsInputError(f"{what}: '{key}' given twice")
        out[key] = value
    return out


def _evaluate_pair_cli(args):
    from ..report.pair import evaluate_pair

    methods = _pairs_of(args.method, "--method")
    out = evaluate_pair(args.pair, args.out, lddmm_dir=args.lddmm, method_dirs=methods,
                        target_labels=args.target_labels, moving_labels=args.moving_labels, mask=args.mask,
                        exclude_labels=args.exclude_labels)
    print(json.dumps({k: str(v) for k, v in out.items()}))


def _report_cli(args):
    from ..provenance import read_provenance, report_items
    from ..report.build import build_report

    provenance = report_items(read_provenance(args.provenance_dir)) if args.provenance_dir else {}
    if args.provenance_json:
        path = Path(args.provenance_json)
        try:
            provenance.update(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise QsInputError(f"{path}: cannot read provenance as a JSON object ({exc})") from exc
    provenance.update(_pairs_of(args.provenance, "--provenance"))
    out = build_report(args.pairs, args.out, loss_tsvs=_pairs_of(args.loss, "--loss"),
                       example=_pairs_of(args.example, "--example") or None, paper_table=not args.no_paper_table,
                       provenance=provenance or None, field=args.field, affine_qc=args.affine_qc,
                       exclude_labels=args.exclude_labels, label_names=args.label_names)
    print(json.dumps({k: str(v) for k, v in out.items()}))


def _ablation_cli(args):
    from ..report.ablation import variants, write_ablation

    try:
        given = json.loads(args.variants_json)
        assert isinstance(given, list)
    except (ValueError, AssertionError):
        raise QsInputError(f"--variants-json must be a JSON list of variants, got {args.variants_json!r}") from None
    specs = variants({"train": {"patch": args.patch, "dropout": args.dropout}, "ablation": {"variants": given}})
    losses = {name: [] for name in specs}
    for spec in args.loss or []:
        name, sep, path = spec.partition("=")
        if not sep or name not in losses:
            raise QsInputError(f"--loss must be VARIANT=TSV with a variant of --variants-json, got '{spec}'")
        losses[name].append(Path(path))
    out = write_ablation(args.pairs, specs, losses, args.out)
    print(json.dumps({k: str(v) for k, v in out.items()}))


def add_subcommands(subparsers) -> None:
    """Add ``qs evaluate-pair``, ``qs report`` and ``qs ablation`` to the ``qs`` command line."""
    p = subparsers.add_parser("evaluate-pair", help="evaluate one test pair against LDDMM (deformation error, det J, overlap, time)")
    p.add_argument("--pair", required=True, help="pair id, e.g. sub-01_to_sub-02")
    p.add_argument("--lddmm", required=True, type=Path, help="LDDMM result folder of the pair (warp.nii.gz, summary.json...)")
    p.add_argument("--method", action="append", metavar="NAME=DIR",
                   help="a compared method and its result folder (repeatable): syn, syn-quick, predict, predict+correct "
                        "(or predict-correct), predict-mc")
    p.add_argument("--target-labels", type=Path, help="target labels on the working grid (> 0 = brain mask)")
    p.add_argument("--moving-labels", type=Path, help="moving labels on the working grid (the affine method's warped labels)")
    p.add_argument("--mask", type=Path, help="brain mask on the working grid, used when there are no target labels")
    p.add_argument("--exclude-labels", type=int, nargs="+", default=[], metavar="ID",
                   help="label ids left out of the evaluation (overlap and brain mask); config evaluate.exclude_labels")
    p.add_argument("--out", required=True, type=Path,
                   help="output folder: deformation_error.npz, detj.tsv, overlap.tsv, timing.tsv")
    p.set_defaults(func=_evaluate_pair_cli)

    p = subparsers.add_parser("report", help="aggregate evaluated pairs: tables, figures and summary.md")
    p.add_argument("pairs", nargs="+", type=Path, help="folders written by qs evaluate-pair")
    p.add_argument("--out", required=True, type=Path, help="report folder")
    p.add_argument("--loss", action="append", metavar="NAME=TSV", help="training loss.tsv of a network (repeatable)")
    p.add_argument("--example", action="append", metavar="KEY=PATH",
                   help="example pair for example_pair.png (repeatable): target=, warp=, warped= and/or moving=, "
                        "optional uncertainty=, pair=NAME")
    p.add_argument("--affine-qc", type=Path, nargs="+", default=[], metavar="JSON",
                   help="the subjects' *_preprocess.json (qs preprocess): affine_qc.tsv, outliers flagged")
    p.add_argument("--exclude-labels", type=int, nargs="+", default=[], metavar="ID",
                   help="label ids the evaluation left out (qs evaluate-pair --exclude-labels), stated in summary.md")
    p.add_argument("--label-names", type=Path, help="TSV with columns id and name: the structures of label_overlap.tsv")
    p.add_argument("--provenance-dir", type=Path, help="folder written by qs provenance (results/provenance): "
                   "seed, config digest, versions and device in summary.md")
    p.add_argument("--provenance", action="append", metavar="KEY=VALUE", help="a line of provenance in summary.md (repeatable)")
    p.add_argument("--provenance-json", type=Path, help="JSON object of provenance lines for summary.md")
    p.add_argument("--field", default="momentum", choices=list(FIELDS),
                   help="what the networks learned (train.field): chooses the paper's rows set beside ours")
    p.add_argument("--no-paper-table", action="store_true", help="leave the paper's numbers out of summary.md and the figure")
    p.set_defaults(func=_report_cli)

    p = subparsers.add_parser("ablation", help="the paper's variant table from evaluated pairs: ablation.tsv, ablation.png")
    p.add_argument("pairs", nargs="+", type=Path, help="folders written by qs evaluate-pair with the variants as methods")
    p.add_argument("--variants-json", required=True,
                   help='the variants (config ablation.variants) as a JSON list, e.g. \'[{"field": "momentum", '
                        '"stride": 14, "epochs": 10}]\'; their names are the methods of the evaluations')
    p.add_argument("--loss", action="append", metavar="VARIANT=TSV",
                   help="loss.tsv of a network the variant uses (repeatable; their seconds are its training time)")
    p.add_argument("--patch", type=int, default=15, help="the networks' patch size (train.patch): the largest stride")
    p.add_argument("--dropout", type=float, default=0.2, help="the networks' dropout (train.dropout)")
    p.add_argument("--out", required=True, type=Path, help="folder of ablation.tsv and ablation.png")
    p.set_defaults(func=_ablation_cli)
