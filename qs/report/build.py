"""The report folder: aggregates the per-pair evaluations into the contract tables, the figures and ``summary.md``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from ..io import QsInputError, write_text
from .example import load_example
from .figures import (plot_accuracy_time, plot_deformation_error, plot_example_pair, plot_label_overlap, plot_loss,
                      plot_target_overlap, save_figure)
from .pair import load_pair_results
from .qc import affine_qc_table, qc_warning
from .summary import summary_markdown
from .tables import accuracy_time_table, deformation_error_table, label_overlap_table, pool_errors
from .tsv import TIMING_COLUMNS, read_tsv, write_tsv


def read_qc_records(paths) -> list[dict]:
    """The per-subject QC dicts (``*_preprocess.json`` of ``qs preprocess``); a missing or malformed file is named."""
    records = []
    for path in map(Path, paths or []):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise QsInputError(f"{path}: cannot read the affine QC as JSON ({exc})") from exc
        if not isinstance(record, dict) or "subject" not in record:
            raise QsInputError(f"{path}: not a QC file of qs preprocess (no 'subject')")
        records.append(record)
    return records


def read_label_names(path) -> dict[str, str]:
    """Label id -> structure name from a TSV with columns ``id`` and ``name`` (LPBA40's ``label_lut.tsv``)."""
    path = Path(path)
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise QsInputError(f"{path}: cannot read the label names as TSV ({exc})") from exc
    if not {"id", "name"} <= set(df.columns):
        raise QsInputError(f"{path}: label names need the columns id and name (tab-separated), got {list(df.columns)}")
    return dict(zip(df["id"].str.strip(), df["name"].str.strip()))


def build_report(pair_dirs, out_dir, *, loss_tsvs: dict | None = None, example: dict | None = None,
                 paper_table: bool = True, provenance: dict | None = None, field: str = "momentum",
                 affine_qc=(), exclude_labels=(), label_names=None) -> dict[str, Path]:
    """Aggregate the per-pair evaluations in ``pair_dirs`` into the report folder ``out_dir``.

    ``loss_tsvs``: model name -> ``loss.tsv`` of its training (``epoch,
    train_l1, val_l1, seconds``). ``example``: the pair drawn in
    ``example_pair.png``, keys ``target``, ``warp`` and ``warped`` or
    ``moving`` (or both), optional ``uncertainty`` and ``pair`` (title);
    ``target_t1``/``moving_t1`` are accepted for ``target``/``moving``.
    ``paper_table``: put the paper's numbers into ``summary.md``; ``field``: what the networks learn
    (``train.field``), which chooses the paper's rows set beside ours (:func:`qs.report.paper.paper_rows`).
    ``provenance``: key -> value pairs listed at the end of ``summary.md`` (a DataFrame value is
    shown as a table; :func:`qs.provenance.report_items` makes them from ``results/provenance``).
    ``affine_qc``: the subjects' ``*_preprocess.json`` (``affine_qc.tsv``, flagged subjects in ``summary.md`` and
    one warning line on stderr); ``exclude_labels``: the ids the evaluation left out (stated in ``summary.md``);
    ``label_names``: a TSV of ids and names for the per-label table.
    Returns the paths written.
    """
    pair_dirs = [Path(p) for p in pair_dirs]
    if not pair_dirs:
        raise QsInputError("report: no evaluated pairs given")
    results = [load_pair_results(p) for p in pair_dirs]
    pooled = pool_errors([r["errors"] for r in results])
    detj = pd.concat([r["detj"] for r in results], ignore_index=True)
    overlap = pd.concat([r["overlap"] for r in results], ignore_index=True)
    timing = pd.concat([r["timing"] for r in results], ignore_index=True)
    deformation = deformation_error_table(pooled, detj)
    # val_zero_l1 (the zero field's validation L1) is NaN in loss.tsv files of older runs
    losses = {name: read_tsv(path, ["epoch", "train_l1", "val_l1"], optional=["val_zero_l1"])
              for name, path in (loss_tsvs or {}).items()}
    example = load_example(example) if example else None
    qc = affine_qc_table(read_qc_records(affine_qc))
    names = read_label_names(label_names) if label_names else {}
    accuracy = accuracy_time_table(overlap, timing)
    per_label = label_overlap_table(overlap, names)

    out_dir = Path(out_dir)
    out = {
        "deformation_error": write_tsv(deformation, out_dir / "deformation_error.tsv"),
        "target_overlap": write_tsv(overlap, out_dir / "target_overlap.tsv", float_format="%.6f"),
        "timing": write_tsv(timing[TIMING_COLUMNS], out_dir / "timing.tsv", float_format="%.3f"),
        "detj": write_tsv(detj, out_dir / "detj.tsv"),
        "affine_qc": write_tsv(qc, out_dir / "affine_qc.tsv"),
        "accuracy_time": write_tsv(accuracy, out_dir / "accuracy_time.tsv"),
        "label_overlap": write_tsv(per_label, out_dir / "label_overlap.tsv"),
    }
    out["accuracy_time_png"] = save_figure(plot_accuracy_time(accuracy), out_dir / "accuracy_time.png")
    out["label_overlap_png"] = save_figure(plot_label_overlap(per_label), out_dir / "label_overlap.png")
    out["target_overlap_png"] = save_figure(plot_target_overlap(overlap), out_dir / "target_overlap.png")
    out["deformation_error_png"] = save_figure(plot_deformation_error(pooled, paper=paper_table, field=field), out_dir / "deformation_error.png")
    out["example_pair_png"] = save_figure(plot_example_pair(example), out_dir / "example_pair.png")
    out["loss_png"] = save_figure(plot_loss(losses, field), out_dir / "loss.png")
    text = summary_markdown(deformation, overlap, timing, detj, losses=losses, n_pairs=len(pair_dirs),
                            paper_table=paper_table, provenance=provenance, field=field, affine_qc=qc,
                            exclude_labels=exclude_labels, accuracy=accuracy, per_label=per_label)
    if warning := qc_warning(qc):
        print(f"qs report: warning: {warning}", file=sys.stderr)
    out["summary"] = write_text(text, out_dir / "summary.md")
    return out
