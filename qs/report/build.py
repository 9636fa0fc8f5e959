"""The report folder: aggregates the per-pair evaluations into the contract tables, the figures and ``summary.md``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..io import QsInputError, write_text
from .example import load_example
from .figures import plot_deformation_error, plot_example_pair, plot_loss, plot_target_overlap, save_figure
from .pair import load_pair_results
from .summary import summary_markdown
from .tables import deformation_error_table, pool_errors
from .tsv import TIMING_COLUMNS, read_tsv, write_tsv


def build_report(pair_dirs, out_dir, *, loss_tsvs: dict | None = None, example: dict | None = None,
                 paper_table: bool = True, provenance: dict | None = None, field: str = "momentum") -> dict[str, Path]:
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

    out_dir = Path(out_dir)
    out = {
        "deformation_error": write_tsv(deformation, out_dir / "deformation_error.tsv"),
        "target_overlap": write_tsv(overlap, out_dir / "target_overlap.tsv", float_format="%.6f"),
        "timing": write_tsv(timing[TIMING_COLUMNS], out_dir / "timing.tsv", float_format="%.3f"),
        "detj": write_tsv(detj, out_dir / "detj.tsv"),
    }
    out["target_overlap_png"] = save_figure(plot_target_overlap(overlap), out_dir / "target_overlap.png")
    out["deformation_error_png"] = save_figure(plot_deformation_error(pooled, paper=paper_table, field=field), out_dir / "deformation_error.png")
    out["example_pair_png"] = save_figure(plot_example_pair(example), out_dir / "example_pair.png")
    out["loss_png"] = save_figure(plot_loss(losses, field), out_dir / "loss.png")
    text = summary_markdown(deformation, overlap, timing, detj, losses=losses, n_pairs=len(pair_dirs),
                            paper_table=paper_table, provenance=provenance, field=field)
    out["summary"] = write_text(text, out_dir / "summary.md")
    return out
